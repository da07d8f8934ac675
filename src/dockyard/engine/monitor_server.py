"""A monitor server: one booted process that forks the monitors of many containers.

`MonitorStarter` pays an interpreter start and the runtime's imports for every
container; a caller that starts containers one after another (the Python API)
keeps a `MonitorServer` instead. The server is exec'd once from a read-only
bind mount of the interpreter (`spawn.exec_read_only`), goes back to the host's
mount namespace and imports the monitor and the runtime. It keeps one monitor
forked ahead (detached with setsid, its output pipes and init helper made,
waiting for a spec), so a `launch` costs no fork on its path: the spare gets
the spec and runs; the next spare is forked while the caller goes on. Init
helpers are plain forks too (their exe is already the read-only file,
CVE-2019-5736).

The server belongs to its caller: it exits when the caller's end of the
request pipe closes (`close()`, or the caller's exit). Monitors it forked are
detached and live on.

Requests: a 4-byte big-endian length and a marshalled `MonitorSpec` dict.
Replies, per request: `monitor PID`, the monitor's report (`started PID` or
`error MESSAGE`), then `done`.
"""

from __future__ import annotations

import os
import sys

from dockyard.engine.monitor_start import close_fds

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.engine.monitor_start import MonitorSpec

_SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    f"import sys;sys.path.insert(0,{_SRC!r});"
    "from dockyard.engine.monitor_server import serve;serve()"
)


class MonitorServer:
    """The caller's side: boots the server at once; `launch` as `MonitorStarter.launch`."""

    def __init__(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        interp = os.path.realpath(sys.executable)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - ends in execve or _exit
            try:
                os.close(req_w)
                os.close(rep_r)
                null = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.chdir("/")
                keep = sorted((req_r, rep_w))
                os.closerange(3, keep[0])
                os.closerange(keep[0] + 1, keep[1])
                os.closerange(keep[1] + 1, 1 << 16)
                from dockyard.runtime.spawn import exec_read_only

                path = os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
                exec_read_only(interp, ["-c", _BOOT], (req_r, rep_w), {"PATH": path})
            finally:
                os._exit(127)
        os.close(req_r)
        os.close(rep_w)
        self.pid = pid
        self.request_fd = req_w
        self.reply_fd = rep_r

    def launch(self, spec: MonitorSpec, timeout: float = 60.0) -> int:
        """Start the container's monitor; its pid once the container runs.

        Raises RuntimeFailure with the runtime's one-line message when the
        container can't be created or started.
        """
        import marshal

        from dockyard.engine.monitor_start import launched, read_report
        from dockyard.runtime.errors import RuntimeFailure

        if self.request_fd < 0:
            raise RuntimeFailure("container monitor server closed")
        os.makedirs(spec.container_dir, exist_ok=True)
        data = marshal.dumps(spec.to_dict())
        try:
            _write_all(self.request_fd, len(data).to_bytes(4, "big") + data)
        except BrokenPipeError:
            self.close()
            raise RuntimeFailure("container monitor server died") from None
        monitor_pid, result, ended = read_report(self.reply_fd, timeout, until="done")
        if not ended:  # the server itself is stuck or gone: don't reuse it
            self.close()
        return launched(monitor_pid, result)

    def close(self) -> None:
        """Let the server go (it exits when its request pipe closes)."""
        close_fds(self, ("request_fd", "reply_fd"))
        pid, self.pid = getattr(self, "pid", 0), 0
        if pid:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    __del__ = close


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    parts = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


# ------------------------------------------------------------------ the server


def serve() -> None:  # pragma: no cover - runs in the server process
    """Entry point of the server process: argv is REQUEST_FD REPLY_FD HOST_MNT."""

    from dockyard.runtime import spawn

    request_fd, reply_fd, host_mnt = map(int, sys.argv[1:4])
    spawn.return_to_host(host_mnt)
    # Everything a monitor and an init need, loaded once for all of them.
    import _signal
    import json  # noqa: F401

    from dockyard.engine import logs, monitor, monitor_loop, terminal  # noqa: F401
    from dockyard.runtime import (  # noqa: F401
        cgroups,
        container,
        devices,
        hooks,
        init,
        mounts,
        rlimits,
        seccomp,
    )
    from dockyard.runtime.cgroups import warm

    try:  # libseccomp loaded and Docker's default profile's syscall names resolved
        from dockyard.engine.seccomp_profile import default_profile

        seccomp.validate(default_profile([]))
    except Exception:
        pass  # no libseccomp: containers that need it fail with the runtime's message

    # Monitors are the server's children: the kernel reaps those that exit while
    # it lives (the rest are reparented when it exits).
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
    spawn.LOCK_KEPT_WARM = True
    import gc

    # What is loaded now is shared with every fork: the collector must not
    # touch (and so copy) those pages in each of them.
    gc.collect()
    gc.freeze()
    warmer: warm.AttachLockWarmer | None = None
    spare = _fork_spare((request_fd, reply_fd))
    while True:
        head = _read_exact(request_fd, 4)
        if head is None:
            os._exit(0)  # the spare sees its spec pipe close and exits too
        body = _read_exact(request_fd, int.from_bytes(head, "big"))
        if body is None:
            os._exit(0)
        if warmer is not None:
            warmer.stop()
        # The monitor's cgroup join (RCU grace period on v1) finds the lock warm;
        # the next start comes within the warmer's limit when starts are back to back.
        warmer = warm.AttachLockWarmer(limit=1.0)
        pid, spec_w, report_r = spare
        try:
            _write_all(spec_w, body)
        except BrokenPipeError:
            pass  # the spare died: the report's EOF says so
        os.close(spec_w)
        _relay(report_r, reply_fd, f"monitor {pid}\n".encode())
        os.close(report_r)
        spare = _fork_spare((request_fd, reply_fd))


def _fork_spare(server_fds: tuple[int, ...]) -> tuple[int, int, int]:
    """The next start's monitor, forked ahead: detached, its output pipes and init
    helper made, waiting for its spec. (pid, spec pipe, report pipe)."""
    import _signal

    spec_r, spec_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            for fd in (*server_fds, spec_w, report_r):
                os.close(fd)
            os.setsid()
            from dockyard.engine.monitor import _Prepared, run_when_told

            run_when_told(_Prepared(), spec_r, report_w)
        finally:
            os._exit(1)
    os.close(spec_r)
    os.close(report_w)
    return pid, spec_w, report_r


def _relay(report_fd: int, reply_fd: int, buf: bytes) -> None:
    """The monitor's report lines to the caller, then `done` (at its result or EOF)."""
    while True:
        chunk = os.read(report_fd, 4096)
        buf += chunk
        lines = buf.decode(errors="replace").splitlines()
        has_pid = any(line.startswith("monitor ") for line in lines)
        has_result = any(line.startswith(("started ", "error ")) for line in lines)
        if not chunk or (has_pid and has_result):
            break
    if buf and not buf.endswith(b"\n"):
        buf += b"\n"
    try:
        _write_all(reply_fd, buf + b"done\n")
    except OSError:
        os._exit(0)  # the caller is gone
