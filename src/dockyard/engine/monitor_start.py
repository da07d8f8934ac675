"""Starting a container's monitor: its spec and the detached launch.

The launching side runs in the `dockyard` CLI (or the Python API); the monitor
itself is `dockyard.engine.monitor`, booted here as a fresh `python -S -I`.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

_SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = f"import sys;sys.path.insert(0,{_SRC!r});from dockyard.engine.monitor import main;main()"
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")


class MonitorSpec:
    """Everything the monitor needs; plain values only (marshal/JSON friendly).

    Paths not given default to names in `container_dir`: container-json.log,
    exit.json, monitor.pid, monitor.json (state), stop, attach.sock, stdin.
    """

    def __init__(
        self,
        container_id: str,
        bundle: str,
        runtime_root: str,
        container_dir: str,
        log_path: str | None = None,
        log_max_size: int | None = None,
        log_max_files: int = 1,
        exit_file: str | None = None,
        pid_file: str | None = None,
        state_file: str | None = None,
        restart_policy: dict[str, Any] | None = None,
        stop_file: str | None = None,
        attach_socket: str | None = "",
        interactive: bool = False,
        stdin_fifo: str | None = None,
        tty: bool = False,
        replay: bool = False,
        auto_remove: bool = False,
        state_root: str | None = None,
        networks: list[dict[str, Any]] | None = None,
    ) -> None:
        def at(value: str | None, name: str) -> str:
            return os.path.abspath(value or os.path.join(container_dir, name))

        self.container_id = container_id
        # links.attach keyword arguments, one per network: made between the
        # runtime's create and start; released (engine.networking) at the end.
        self.networks = list(networks or [])
        self.bundle = os.path.abspath(bundle)
        self.runtime_root = os.path.abspath(runtime_root)
        self.container_dir = os.path.abspath(container_dir)
        self.log_path = at(log_path, "container-json.log")
        self.log_max_size = log_max_size
        self.log_max_files = log_max_files
        self.exit_file = at(exit_file, "exit.json")
        self.pid_file = at(pid_file, "monitor.pid")
        self.state_file = at(state_file, "monitor.json")
        # Also takes the Engine API's {"Name": …, "MaximumRetryCount": …}.
        policy = restart_policy or {}
        name = policy.get("name", policy.get("Name")) or "no"
        retries = policy.get("maximum_retry_count", policy.get("MaximumRetryCount"))
        if name not in RESTART_POLICIES:
            raise ValueError(f"unknown restart policy {name!r}")
        self.restart_policy: dict[str, Any] = {
            "name": name,
            "maximum_retry_count": int(retries or 0),
        }
        self.stop_file = at(stop_file, "stop")
        # "" (the default): attach.sock in container_dir; None: no attach socket.
        self.attach_socket = None if attach_socket is None else at(attach_socket, "attach.sock")
        self.interactive = interactive
        self.stdin_fifo = at(stdin_fifo, "stdin")
        self.tty = tty  # process.terminal: a pty (terminal.py)
        self.replay = replay  # output before the first attach goes to it
        # AutoRemove: once it exited for good, the container is removed from state_root.
        self.auto_remove = auto_remove
        self.state_root = None if state_root is None else os.path.abspath(state_root)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> MonitorSpec:
        return cls(**doc)


def now() -> str:
    from dockyard.engine.logs import format_time

    return format_time(time.time_ns())


def write_json(path: str, doc: dict[str, Any], durable: bool = True) -> None:
    import json

    from dockyard.runtime.state import write_atomic

    write_atomic(path, json.dumps(doc).encode(), durable=durable)


def alive(pid: int) -> bool:
    from dockyard.runtime.state import pid_start_time

    return pid_start_time(pid) is not None


# ------------------------------------------------------------------ spawning


def spawn_monitor(
    spec: MonitorSpec, timeout: float = 60.0, starter: MonitorStarter | None = None
) -> int:
    """Start the monitor detached; its pid once the container runs.

    `starter`: a monitor booted earlier (`MonitorStarter()`), whose interpreter
    start and init helper then overlap with the caller's own work; without
    one, one is started here. Raises RuntimeFailure with the runtime's
    one-line message when the container can't be created or started; the
    monitor is gone by then and has left no runtime state.
    """
    return (starter or MonitorStarter()).launch(spec, timeout)


class MonitorStarter:
    """A monitor process started ahead of its container, waiting for its spec.

    Detached at once (double fork, setsid, a fresh `python -S -I`, stdio on
    /dev/null); while it waits it starts the runtime's init helper and loads
    what `create` needs. `launch(spec)` hands it the spec (marshalled, over a
    pipe) and waits for its report; `close()` (or dropping the object, or
    the caller's exit) closes the pipe and the idle monitor exits.
    """

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        spec_r, spec_w = os.pipe()
        interp = os.path.realpath(sys.executable)
        child = os.fork()
        if child == 0:  # pragma: no cover - ends in _exit or execve
            try:
                os.close(read_fd)
                os.close(spec_w)
                os.setsid()
                grandchild = os.fork()
                if grandchild == 0:
                    _exec_monitor(interp, write_fd, spec_r)
                os.write(write_fd, f"monitor {grandchild}\n".encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        os.close(spec_r)
        os.waitpid(child, 0)
        self.report_fd = read_fd
        self.spec_fd = spec_w

    def launch(self, spec: MonitorSpec, timeout: float = 60.0) -> int:
        import marshal

        from dockyard.runtime.errors import RuntimeFailure

        if self.spec_fd < 0:
            raise RuntimeFailure("container monitor already used")
        os.makedirs(spec.container_dir, exist_ok=True)
        read_fd = self.report_fd
        try:
            try:
                os.write(self.spec_fd, marshal.dumps(spec.to_dict()))
            except BrokenPipeError:
                pass  # the monitor died: its report (or EOF) says so
            finally:
                os.close(self.spec_fd)
                self.spec_fd = -1
            monitor_pid, result, _ = read_report(read_fd, timeout)
        finally:
            os.close(read_fd)
            self.report_fd = -1
        return launched(monitor_pid, result)

    def close(self) -> None:
        """Let an unused monitor go (it exits when its spec pipe closes)."""
        close_fds(self, ("spec_fd", "report_fd"))

    __del__ = close


def launched(monitor_pid: int, result: str) -> int:
    """The monitor's pid when its report says the container started; else its error."""
    from dockyard.runtime.errors import RuntimeFailure

    if result.startswith("started ") and monitor_pid:
        return monitor_pid
    raise RuntimeFailure(result[6:] if result.startswith("error ") else "container monitor died")


def close_fds(holder: object, names: tuple[str, ...]) -> None:
    """Close the fds in `holder`'s attributes `names` (once: each is set to -1)."""
    for name in names:
        fd = getattr(holder, name, -1)
        if fd >= 0:
            setattr(holder, name, -1)
            try:
                os.close(fd)
            except OSError:
                pass


def read_report(fd: int, timeout: float, until: str = "") -> tuple[int, str, bool]:
    """A launching monitor's report: (monitor pid, `started …`/`error …` line, ended).

    Reads until both lines came, or the line `until` (when given), or EOF.
    `ended` is False when the report stopped short of that (EOF or timeout).
    Raises RuntimeFailure on timeout, after killing a stuck monitor; after a
    failure, waits (briefly) for the monitor, which cleans up, to be gone.
    """
    import select

    from dockyard.runtime.errors import RuntimeFailure

    monitor_pid = 0
    result = ""
    buf = b""
    ended = False
    deadline = time.monotonic() + timeout
    while not ended:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            if monitor_pid and alive(monitor_pid):
                os.kill(monitor_pid, 9)  # stuck; its container (if any) dies with it
            raise RuntimeFailure(f"container monitor did not report within {timeout:g}s")
        chunk = os.read(fd, 4096)
        buf += chunk
        for line in buf.decode(errors="replace").splitlines():
            if line.startswith("monitor "):
                monitor_pid = int(line[8:])
            elif line.startswith(("started ", "error ")):
                result = line
            elif until and line == until:
                ended = True
        if not until and result and monitor_pid:
            ended = True
        if not chunk:
            break
    if not result.startswith("started "):
        end = time.monotonic() + 5
        while monitor_pid and alive(monitor_pid) and time.monotonic() < end:
            time.sleep(0.005)
    return monitor_pid, result, ended


def _exec_monitor(interp: str, report_fd: int, spec_fd: int) -> None:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.chdir("/")
    keep = sorted((report_fd, spec_fd))
    for fd in keep:
        os.set_inheritable(fd, True)
    os.closerange(3, keep[0])
    os.closerange(keep[0] + 1, keep[1])
    os.closerange(keep[1] + 1, 1 << 16)
    env = {"PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"}
    from dockyard.runtime.spawn import exec_read_only

    # From a read-only bind mount of the interpreter (spawn.exec_read_only): the
    # init helpers the monitor forks are then safe without a re-exec of their own.
    exec_read_only(interp, ["-c", _BOOT, "monitor"], (report_fd, spec_fd), env)
