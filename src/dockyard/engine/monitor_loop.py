"""Handing a running container's monitor over to a lean copy of itself.

Creating and starting a container loads the runtime (ctypes, json and its `re`,
cgroups, seccomp …) into the monitor; those pages stay dirty for as long as the
monitor lives. Once the container has run for `HANDOVER_AFTER` seconds,
`go_lean` re-executes the monitor (same pid, same fds: its pipes, the attach
socket and clients, the log file; PR_SET_CHILD_SUBREAPER survives execve) as a
fresh `python -S -I` that imports only the monitor itself (os, select, the log
writer). `resume` picks the loop up where it was. The runtime is imported again
only when the container exits (exit record, delete, restart).

Short-lived containers never pay for the re-exec: they are gone before it.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.monitor import Monitor

HANDOVER_AFTER = 5.0  # short-lived containers (and bursts of starts) never pay the re-exec
# Modules whose presence says the process carries the runtime's weight.
_HEAVY = ("json", "ctypes", "dockyard.runtime.container")
_SIGNALS = ("SIGINT", "SIGHUP", "SIGTERM", "SIGCHLD")
_SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    f"import sys;sys.path.insert(0,{_SRC!r});"
    "from dockyard.engine.monitor_loop import resume;resume()"
)


def deadline() -> float:
    """When a monitor whose container has just started should go lean."""
    return time.monotonic() + HANDOVER_AFTER


def go_lean(monitor: Monitor, streams: dict[int, str]) -> None:
    """Re-execute `monitor` as a lean process; returns only if that can't be done
    (then the monitor carries on as it is)."""
    import _signal
    import marshal

    monitor.lean_at = 0.0
    if not any(name in sys.modules for name in _HEAVY):
        return  # already lean
    writer = monitor.writer
    if writer is None:
        return
    plain = (int, float, str, bytes, bool, type(None), dict, list, tuple)
    state: dict[str, Any] = {
        name: value
        for name, value in vars(monitor).items()
        if isinstance(value, plain) and name not in ("wake_r", "report_fd", "lean_at")
    }
    state["spec"] = monitor.spec.to_dict()
    state["streams"] = streams
    state["listen"] = monitor.listen.fileno() if monitor.listen is not None else -1
    state["writer"] = dict(vars(writer))
    try:
        data = marshal.dumps(state)
    except ValueError:  # something marshal can't carry: stay as we are
        return
    keep = [int(fd) for fd in os.listdir("/proc/self/fd")]
    memfd = os.memfd_create("monitor-state", 0)  # close-on-exec until made inheritable
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(memfd, view) :]
        os.lseek(memfd, 0, os.SEEK_SET)
        blocked = {getattr(_signal, name) for name in _SIGNALS}
        # Caught signals fall back to their defaults across execve; blocked ones
        # stay pending until the new image has its handlers.
        _signal.pthread_sigmask(_signal.SIG_BLOCK, blocked)
        wake_r = getattr(monitor, "wake_r", -1)
        for fd in keep:
            if fd > 2 and fd != wake_r:
                try:
                    os.set_inheritable(fd, True)
                except OSError:
                    pass  # the listdir fd itself, gone by now
        os.set_inheritable(memfd, True)
        interp = os.path.realpath(sys.executable)
        env = {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"}
        os.execve(interp, [interp, "-S", "-I", "-c", _BOOT, str(memfd)], env)
    except OSError:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {getattr(_signal, n) for n in _SIGNALS})
        os.close(memfd)


def resume() -> None:
    """Entry point of the lean monitor: argv is STATE_FD (a memfd, marshalled)."""
    import _signal
    import marshal

    from dockyard.engine.logs import JsonFileWriter
    from dockyard.engine.monitor import Monitor, _ignore, _one_line
    from dockyard.engine.monitor_start import MonitorSpec

    memfd = int(sys.argv[1])
    chunks = []
    while chunk := os.read(memfd, 1 << 20):
        chunks.append(chunk)
    os.close(memfd)
    state = marshal.loads(b"".join(chunks))
    spec = MonitorSpec.from_dict(state.pop("spec"))
    streams: dict[int, str] = state.pop("streams")
    listen_fd: int = state.pop("listen")
    writer_state = state.pop("writer")
    for name in ("SIGINT", "SIGHUP", "SIGTERM"):
        _signal.signal(getattr(_signal, name), _ignore)
    monitor = Monitor(spec, -1)
    os.close(monitor.null)
    for name, value in state.items():
        setattr(monitor, name, value)
    writer = JsonFileWriter.__new__(JsonFileWriter)
    vars(writer).update(writer_state)
    monitor.writer = writer
    if listen_fd >= 0:
        import _socket

        monitor.listen = _socket.socket(fileno=listen_fd)
    for fd in [int(fd) for fd in os.listdir("/proc/self/fd")]:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)  # back to close-on-exec, as they were
            except OSError:
                pass  # the listdir fd itself, gone by now
    monitor.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _signal.set_wakeup_fd(wake_w)
    _signal.signal(_signal.SIGCHLD, _ignore)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {getattr(_signal, n) for n in _SIGNALS})
    try:
        monitor._supervise(streams)
    except Exception as err:  # as Monitor.run: keep the record straight, leave no orphan
        monitor._save_state("exited", error=_one_line(err))
        try:
            monitor._delete()
        except Exception:
            pass
    finally:
        monitor._close_listener()
        writer.close()
        monitor.release_rootfs()
        monitor._remove(spec.pid_file)
    os._exit(0)
