"""`Container.exec_run` and `Container.stats` of the Python API (client.py).

exec_run starts the process through the engine's exec (`engine.exec.start`,
what `dockyard exec` calls), in this process. The runtime's init helper is
forked with the process's stdio already on our pipes (one pipe for both
streams, two with `demux`, /dev/null for a stream not asked for) or, with
`tty`, the process gets a pty whose master the runtime sends to a console
socket we listen on. A foreground exec makes this process a child subreaper
just long enough for the process (the helper's child) to become ours once the
helper exits; the previous setting is put back, so monitors started later
are not adopted. Output is read until the process exits (a pidfd says when)
and the pipes are drained.
"""

from __future__ import annotations

import os

from dockyard.engine.containers import EngineError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import socket as _socket
    from collections.abc import Callable, Iterator
    from typing import Any

    from dockyard.engine.containers import Container, Engine
    from dockyard.engine.exec import ExecOptions
    from dockyard.runtime.spawn import Helper

PR_GET_CHILD_SUBREAPER = 37
STDOUT, STDERR, DISCARD = 1, 2, 0


class ExecResult(tuple[int | None, "Any"]):
    """docker-py's `ExecResult(exit_code, output)`: a 2-tuple with named fields."""

    __slots__ = ()
    _fields = ("exit_code", "output")

    def __new__(cls, exit_code: int | None, output: Any) -> ExecResult:
        return super().__new__(cls, (exit_code, output))

    @property
    def exit_code(self) -> int | None:
        return self[0]

    @property
    def output(self) -> Any:
        """bytes; (stdout, stderr) with demux; an ExecStream with stream."""
        return self[1]

    def __repr__(self) -> str:
        return f"ExecResult(exit_code={self[0]!r}, output={self[1]!r})"


class ExecStream:
    """`exec_run(stream=True)`'s output as it comes: bytes chunks, or (stdout, stderr)
    pairs (one of them None) with demux. `exit_code` is set once it has ended;
    `close()` stops reading early (the process runs on and is reaped when it exits)."""

    def __init__(
        self,
        chunks: Iterator[tuple[int, bytes]],
        finish: Callable[[], int],
        abandon: Callable[[], None],
        demux: bool,
    ) -> None:
        self.exit_code: int | None = None
        self._chunks = chunks
        self._finish = finish
        self._abandon = abandon
        self._demux = demux
        self._done = False

    def __iter__(self) -> ExecStream:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            while True:
                stream, data = next(self._chunks)
                if stream != DISCARD:
                    break
        except StopIteration:
            self._done = True
            self.exit_code = self._finish()
            raise
        except BaseException:
            self.close()
            raise
        if self._demux:
            return (data, None) if stream == STDOUT else (None, data)
        return data

    def close(self) -> None:
        if not self._done:
            self._done = True
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            self._abandon()

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit threads can't start: nothing to do then
            pass


class _Process:
    """A started foreground exec: its pid (our child) and our ends of its output."""

    def __init__(self, pid: int, fds: dict[int, int]) -> None:
        self.pid = pid
        self.fds = fds  # our read end → STDOUT, STDERR or DISCARD

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """(stream, data) until the process has exited and its output is drained."""
        import errno
        import select

        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # no pidfd: read to EOF instead
            pidfd = -1
        reading = dict(self.fds)
        exited = pidfd < 0
        try:
            while reading:
                watched = [*reading, pidfd] if not exited else list(reading)
                ready = select.select(watched, [], [], None if not exited or pidfd < 0 else 0)[0]
                if not ready:
                    break  # exited, and nothing more is there to read
                for fd in ready:
                    if fd == pidfd:
                        exited = True
                        continue
                    try:
                        data = os.read(fd, 65536)
                    except OSError as err:  # a pty's master once the process is gone
                        if err.errno != errno.EIO:
                            raise
                        data = b""
                    if data:
                        yield reading[fd], data
                    else:
                        del reading[fd]
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds:
            os.close(fd)

    def finish(self) -> int:
        from dockyard.engine import exec as execs

        self._close()
        return execs.wait(self.pid)

    def abandon(self) -> None:
        """Stop reading; the process runs on and a thread reaps it."""
        self._close()
        try:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        import threading

        from dockyard.engine import exec as execs

        threading.Thread(target=execs.wait, args=(self.pid,), daemon=True).start()


def exec_run(
    engine: Engine,
    container: str,
    cmd: str | list[str],
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    privileged: bool = False,
    user: str | int | None = "",
    detach: bool = False,
    stream: bool = False,
    socket: bool = False,
    environment: dict[str, str] | list[str] | None = None,
    workdir: str | None = None,
    demux: bool = False,
) -> ExecResult:
    import shlex

    from dockyard.engine import exec as execs

    if socket:
        raise EngineError(
            "exec_run(socket=True) is not supported yet: use stream=True to read the output"
        )
    env = (
        [f"{k}={v}" for k, v in environment.items()]
        if isinstance(environment, dict)
        else list(environment or [])
    )
    opts = execs.ExecOptions(
        shlex.split(cmd) if isinstance(cmd, str) else [str(arg) for arg in cmd],
        env=env,
        user=None if user is None or user == "" else str(user),
        workdir=workdir,
        privileged=privileged,
        tty=tty and not detach,  # a detached exec's terminal would have no reader
    )
    null = os.open(os.devnull, os.O_RDWR)
    stdio = {0: null, 1: null, 2: null}
    ours: dict[int, int] = {}  # read end → stream
    theirs: list[int] = []  # write ends, closed once the helper has them
    try:
        if not detach and not tty:
            wanted = [n for n, on in ((STDOUT, stdout), (STDERR, stderr)) if on]
            # One pipe for both keeps their order; demux needs one each.
            groups = [[n] for n in wanted] if demux else [wanted] if wanted else []
            for group in groups:
                read_end, write_end = os.pipe()
                ours[read_end] = group[0] if demux else STDOUT
                theirs.append(write_end)
                for n in group:
                    stdio[n] = write_end
        helper = _helper(stdio)
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in (null, *theirs):
            os.close(fd)
    if detach:
        execs.start(engine, container, opts, False, helper)
        return ExecResult(None, b"")
    try:
        pid, master = _start(engine, container, opts, helper)
    except execs.ExecFailed as err:  # Docker reports it in the output, with its exit code
        for fd in ours:
            os.close(fd)
        message, code = f"{err}\r\n".encode(), err.exit_code
        if stream:
            failed = ExecStream(iter([(STDOUT, message)]), lambda: code, _nothing, demux)
            return ExecResult(None, failed)
        return ExecResult(code, (message, None) if demux else message)
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    if master >= 0:
        ours[master] = STDOUT if stdout or stderr else DISCARD
    process = _Process(pid, ours)
    if stream:
        return ExecResult(
            None, ExecStream(process.chunks(), process.finish, process.abandon, demux)
        )
    out: list[bytes] = []
    err_out: list[bytes] = []
    try:
        for n, data in process.chunks():
            if n != DISCARD:
                (out if n == STDOUT else err_out).append(data)
    except BaseException:
        process.abandon()
        raise
    code = process.finish()
    if demux:
        return ExecResult(code, (b"".join(out) or None, b"".join(err_out) or None))
    return ExecResult(code, b"".join(out))


def _nothing() -> None:
    pass


def _start(engine: Engine, container: str, opts: ExecOptions, helper: Helper) -> tuple[int, int]:
    """Start a foreground exec: (its pid, now our child; the pty master with tty, or -1)."""
    from dockyard.engine import exec as execs

    listener = directory = None
    before = _children()
    previous = _subreaper()
    try:
        if opts.tty:
            listener, directory = _console_listener(helper)
        path = os.path.join(directory, "console.sock") if directory else None
        try:
            pid = execs.start(engine, container, opts, True, helper, console_socket=path)
        except BaseException:
            # A process that failed to start is ours now (we were its subreaper): reap it.
            for orphan in _children() - before:
                if _in_child_pid_namespace(orphan):
                    _Process(orphan, {}).abandon()
            raise
        try:
            master = _receive_master(listener) if listener is not None else -1
        except BaseException:
            _Process(pid, {}).abandon()
            raise
        return pid, master
    finally:
        if not previous:
            from dockyard.runtime import syscalls

            syscalls.current().prctl(syscalls.PR_SET_CHILD_SUBREAPER, 0)
        if listener is not None:
            listener.close()
        if directory is not None:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


def _children() -> set[int]:
    """Our child processes (each thread's: an adopted orphan may be any thread's)."""
    found: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found.update(int(pid) for pid in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def _in_child_pid_namespace(pid: int) -> bool:
    """Whether `pid` lives in a pid namespace below ours (a container's), zombie or not."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return len(line.split()) > 2
    except OSError:
        pass
    return False


def _subreaper() -> bool:
    import ctypes

    from dockyard.runtime import syscalls

    flag = ctypes.c_int(0)
    syscalls.current().prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag))
    return bool(flag.value)


def _helper(stdio: dict[int, int]) -> Helper:
    """The runtime's init helper, forked with `stdio` (fd → ours) as its 0, 1 and 2,
    which the process inherits (as `dockyard exec` does it). Our own 0-2 point
    there only around the fork; they are back in place when this returns."""
    from dockyard.runtime.spawn import Helper

    saved: dict[int, int] = {}
    for fd in stdio:
        try:
            saved[fd] = os.dup(fd)
        except OSError:  # closed here: close it again afterwards
            saved[fd] = -1
    try:
        for fd, source in stdio.items():
            os.dup2(source, fd)
        return Helper()
    finally:
        for fd, copy in saved.items():
            if copy >= 0:
                os.dup2(copy, fd)
                os.close(copy)
            else:
                os.close(fd)


def _console_listener(helper: Helper) -> tuple[_socket.socket, str]:
    """A unix socket in a fresh directory for the runtime to send the pty master to."""
    import shutil
    import socket
    import tempfile

    directory = tempfile.mkdtemp(prefix="dockyard-exec-")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(os.path.join(directory, "console.sock"))
        listener.listen(1)
        listener.settimeout(30)
    except BaseException:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
        helper.abort()
        raise
    return listener, directory


def _receive_master(listener: _socket.socket) -> int:
    import socket

    conn, _ = listener.accept()
    with conn:
        conn.settimeout(30)
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    if not fds:
        raise EngineError("the runtime sent no terminal for the exec")
    os.set_inheritable(fds[0], False)
    return fds[0]


# -------------------------------------------------------------------- stats


def _timestamp(seconds: float) -> str:
    import time

    whole = int(seconds)
    nanos = int((seconds - whole) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanos:09d}Z"


def _cpu_stats(sample: dict[str, dict[str, int]] | None, wall_ns: int, cpus: int) -> dict[str, Any]:
    if not sample:
        return {"cpu_usage": {"total_usage": 0}, "throttling_data": {}}
    return {
        "cpu_usage": {"total_usage": int((sample.get("cpu") or {}).get("usage_ns", 0))},
        # Docker's CPU %: (cpu delta / system delta) * online_cpus * 100; with the
        # wall time times the CPU count as "system", that is the engine's figure.
        "system_cpu_usage": wall_ns * cpus,
        "online_cpus": cpus,
        "throttling_data": {},
    }


def stats_document(
    container: Container,
    before: dict[str, dict[str, int]] | None,
    after: dict[str, dict[str, int]] | None,
    times: tuple[float, float, int, int],
) -> dict[str, Any]:
    """Docker's stats object (the Engine API's) from two cgroup samples; `times`:
    (wall time before, after, monotonic ns before, after)."""
    cpus = os.cpu_count() or 1
    if after is None:
        zero = "0001-01-01T00:00:00Z"
        return {
            "read": zero,
            "preread": zero,
            "pids_stats": {},
            "blkio_stats": {"io_service_bytes_recursive": None},
            "num_procs": 0,
            "storage_stats": {},
            "cpu_stats": _cpu_stats(None, 0, cpus),
            "precpu_stats": _cpu_stats(None, 0, cpus),
            "memory_stats": {},
            "name": "/" + container.name,
            "id": container.id,
        }
    from dockyard.engine.stats import _host_memory

    memory = after.get("memory") or {}
    limit = int(memory.get("limit", 0)) or _host_memory()
    io = after.get("blkio") or {}
    pids = after.get("pids") or {}
    return {
        "read": _timestamp(times[1]),
        "preread": _timestamp(times[0]) if before else "0001-01-01T00:00:00Z",
        "pids_stats": {"current": int(pids.get("current", 0)), "limit": int(pids.get("limit", 0))},
        "blkio_stats": {
            "io_service_bytes_recursive": [
                {"major": 0, "minor": 0, "op": op, "value": int(io.get(op, 0))}
                for op in ("read", "write")
            ]
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _cpu_stats(after, times[3], cpus),
        "precpu_stats": _cpu_stats(before, times[2], cpus),
        "memory_stats": {
            "usage": int(memory.get("usage", 0)),
            "max_usage": int(memory.get("max_usage", 0)),
            "stats": {"inactive_file": int(memory.get("inactive_file", 0))},
            "limit": limit,
        },
        "name": "/" + container.name,
        "id": container.id,
    }


def stats(
    engine: Engine, name: str, stream: bool, decode: bool | None, one_shot: bool | None
) -> dict[str, Any] | Iterator[Any]:
    """docker-py's `Container.stats`: one object, or (stream) one a second, as dicts with
    `decode`, else as JSON bytes, until the container stops."""
    from dockyard.engine import stats as engine_stats

    container = engine.get(name)

    def sample() -> tuple[dict[str, dict[str, int]] | None, float, int]:
        import time

        return engine_stats.sample(engine, container), time.time(), time.monotonic_ns()

    if not stream:
        if one_shot:
            after, wall, mono = sample()
            return stats_document(container, None, after, (wall, wall, mono, mono))
        import time

        before, wall0, mono0 = sample()
        if before is not None:
            time.sleep(0.5)
        after, wall1, mono1 = sample()
        return stats_document(container, before, after, (wall0, wall1, mono0, mono1))
    return _stream_stats(container, sample, bool(decode))


def _stream_stats(
    container: Container,
    sample: Callable[[], tuple[dict[str, dict[str, int]] | None, float, int]],
    decode: bool,
) -> Iterator[Any]:
    import json
    import time

    previous, wall0, mono0 = None, 0.0, 0
    while True:
        after, wall1, mono1 = sample()
        doc = stats_document(container, previous, after, (wall0, wall1, mono0, mono1))
        yield doc if decode else json.dumps(doc).encode() + b"\n"
        if after is None:
            return
        previous, wall0, mono0 = after, wall1, mono1
        time.sleep(1.0)
