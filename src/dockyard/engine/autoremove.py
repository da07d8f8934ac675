"""AutoRemove (`run --rm`): the container goes once it has exited for good.

The container's monitor, when it is done (no restart to come), starts the
remover (`spawn`): a fresh `python -S -I` that loads the engine, waits for the
monitor to exit (the end of a pipe only the monitor holds), then removes the
container as `rm -v` does - unless it was started again meanwhile (`restart`).

What still needs an exited container - the foreground `run --rm` (its exit
code, then it removes the container itself), `start -a`, `attach`, `wait` -
holds a shared flock on the container's directory (`hold`); every removal
takes it exclusively (`lock_for_removal`), so it waits for them and then finds
out whether someone else removed the container meanwhile.

The monitor imports this module: keep its top-level imports to `os` and `sys`.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.engine.containers import Container, Engine

_SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    f"import sys;sys.path.insert(0,{_SRC!r});"
    "from dockyard.engine.autoremove import remover;remover()"
)
_MONITOR_FD = 3  # the remover's end of the pipe: EOF once the monitor is gone
_held: dict[str, int] = {}  # container dir → an fd holding a shared flock on it


def spawn(state_root: str, container_id: str) -> None:
    """From the monitor: start the remover, which acts once this process has exited."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)  # the write end dies with the monitor
    interp = os.path.realpath(sys.executable)
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return
    if pid == 0:  # pragma: no cover - ends in execve or _exit
        try:
            os.close(write_fd)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.dup2(read_fd, _MONITOR_FD)
            os.set_inheritable(_MONITOR_FD, True)
            os.closerange(_MONITOR_FD + 1, 1 << 16)
            os.chdir("/")
            env = {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"}
            argv = [interp, "-S", "-I", "-c", _BOOT, state_root, container_id]
            os.execve(interp, argv, env)
        finally:
            os._exit(127)
    os.close(read_fd)
    # write_fd stays open (close-on-exec): the monitor's exit is what closes it.


def remover() -> None:
    """The remover's entry point: argv is STATE_ROOT CONTAINER_ID."""
    root, container_id = sys.argv[1], sys.argv[2]
    try:
        from dockyard.engine.containers import Engine  # loaded while the monitor finishes

        while True:
            try:
                if not os.read(_MONITOR_FD, 64):
                    break
            except InterruptedError:
                continue
        os.close(_MONITOR_FD)
        engine = Engine(root)
        remove_exited(engine, engine.get(container_id))
    except Exception:
        pass  # removed by someone else already, or nothing this process can do
    os._exit(0)


def remove_exited(engine: Engine, container: Container) -> bool:
    """`rm -v` the container unless it was started again meanwhile (`restart`): then
    its next exit decides. Whether it was removed."""
    import fcntl

    fd = lock_for_removal(engine, container)
    try:
        try:  # no start while we look and remove
            start_lock = os.open(
                os.path.join(container.dir, "start.lock"),
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
        except FileNotFoundError:
            start_lock = -1
        try:
            if start_lock >= 0:
                fcntl.flock(start_lock, fcntl.LOCK_EX)
            if container.status() in ("running", "restarting", "paused"):
                return False
            engine._remove_stopped(container, volumes=True)
            return True
        finally:
            if start_lock >= 0:
                os.close(start_lock)
    finally:
        if fd >= 0:
            os.close(fd)


def _lock(container_dir: str, exclusive: bool) -> int:
    import fcntl

    fd = os.open(container_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def hold(container: Container) -> bool:
    """Keep the container from being removed by anyone else until `release` (or this
    process exits); False if this process holds it already (or it is gone)."""
    if container.dir in _held:
        return False
    try:
        _held[container.dir] = _lock(container.dir, exclusive=False)
    except FileNotFoundError:
        return False
    return True


def release(container: Container) -> None:
    fd = _held.pop(container.dir, None)
    if fd is not None:
        os.close(fd)


def lock_for_removal(engine: Engine, container: Container) -> int:
    """An exclusive flock on the container's directory (-1 when it has none), once
    every holder let go; raises ContainerNotFound if it was removed meanwhile."""
    release(container)
    try:
        fd = _lock(container.dir, exclusive=True)
    except FileNotFoundError:
        fd = -1
    try:
        engine.get(container.id)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


def wait_removed(engine: Engine, container: Container, timeout: float = 15.0) -> bool:
    """Until the container's record and directory are gone (its remover is done)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        row = engine.conn.execute(
            "SELECT 1 FROM containers WHERE id = ?", (container.id,)
        ).fetchone()
        if row is None and not os.path.exists(container.dir):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
