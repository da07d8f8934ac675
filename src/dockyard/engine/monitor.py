"""The per-container monitor: the one process a running container needs.

`spawn_monitor(spec)` starts it fully detached (double fork, setsid, a fresh
`python -S -I`, stdio on /dev/null) and returns its pid once the container
runs, or raises the runtime's one-line error. The monitor then:

- is the container's parent (a child subreaper: the init, forked by the
  runtime's helper, is reparented to it) and ignores SIGINT/SIGHUP/SIGTERM,
  so it outlives every other dockyard process;
- holds the container's stdio: stdout/stderr are pipes it reads into the
  json-file log (`logs.JsonFileWriter`) and broadcasts to clients of the
  attach socket; stdin is /dev/null or, when interactive, a fifo `stdin` that
  it keeps open (O_RDWR, so the container never sees EOF);
- on exit writes the exit file atomically
  (`{"exit_code", "finished_at", "oom_killed", "restart_count"}`), deletes the
  runtime container and applies the restart policy with Docker's back-off
  (100 ms doubling, at most 1 min, reset after 10 s of running). A `stop_file`
  present at exit means `stop` asked for it: no restart;
- keeps `state_file` (`{"monitor_pid", "pid", "status", "restart_count", …}`)
  current, and removes its pid file when it is done for good.

Attach clients get Docker's multiplexed stream (what the Engine API sends for
a non-tty attach): per chunk an 8-byte header `[stream, 0, 0, 0, size (u32 BE)]`
(stream 1 = stdout, 2 = stderr) and the raw bytes. A slow client is dropped.

Lean by design: no typing, subprocess, socket (`_socket` only when attach is
on), json (the runtime loads it anyway, lazily).
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.logs import JsonFileWriter
    from dockyard.runtime.state import ContainerState, StateRoot

_SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = f"import sys;sys.path.insert(0,{_SRC!r});from dockyard.engine.monitor import main;main()"
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
BACKOFF_START = 0.1
BACKOFF_MAX = 60.0
RESET_AFTER = 10.0


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
    ) -> None:
        def at(value: str | None, name: str) -> str:
            return os.path.abspath(value or os.path.join(container_dir, name))

        self.container_id = container_id
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

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> MonitorSpec:
        return cls(**doc)


def _now() -> str:
    from dockyard.engine.logs import format_time

    return format_time(time.time_ns())


def _write_json(path: str, doc: dict[str, Any]) -> None:
    import json

    from dockyard.runtime.state import write_atomic

    write_atomic(path, json.dumps(doc).encode())


def _alive(pid: int) -> bool:
    from dockyard.runtime.state import pid_start_time

    return pid_start_time(pid) is not None


# ------------------------------------------------------------------ spawning


def spawn_monitor(spec: MonitorSpec, timeout: float = 60.0) -> int:
    """Start the monitor detached; its pid once the container runs.

    Raises RuntimeFailure with the runtime's one-line message when the
    container can't be created or started; the monitor is gone by then and
    has left no runtime state.
    """
    import marshal
    import select

    from dockyard.runtime.errors import RuntimeFailure

    os.makedirs(spec.container_dir, exist_ok=True)
    data = marshal.dumps(spec.to_dict()).hex()
    interp = os.path.realpath(sys.executable)
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - ends in _exit or execve
        try:
            os.close(read_fd)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                _exec_monitor(interp, spec.container_id, data, write_fd)
            os.write(write_fd, f"monitor {grandchild}\n".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(child, 0)
    monitor_pid = 0
    result = ""
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                if monitor_pid and _alive(monitor_pid):
                    os.kill(monitor_pid, 9)  # stuck; its container (if any) dies with it
                raise RuntimeFailure(f"container monitor did not report within {timeout:g}s")
            chunk = os.read(read_fd, 4096)
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith("monitor "):
                    monitor_pid = int(line[8:])
                elif line.startswith(("started ", "error ")):
                    result = line
            if not chunk or (result and monitor_pid):
                break
    finally:
        os.close(read_fd)
    if result.startswith("started ") and monitor_pid:
        return monitor_pid
    # Failed: the monitor has cleaned up and is exiting; make sure it is gone.
    end = time.monotonic() + 5
    while monitor_pid and _alive(monitor_pid) and time.monotonic() < end:
        time.sleep(0.005)
    message = result[6:] if result.startswith("error ") else "container monitor died"
    raise RuntimeFailure(message)


def _exec_monitor(interp: str, container_id: str, data: str, report_fd: int) -> None:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.chdir("/")
    os.set_inheritable(report_fd, True)
    os.closerange(3, report_fd)
    os.closerange(report_fd + 1, 1 << 16)
    env = {"PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"}
    argv = [interp, "-S", "-I", "-c", _BOOT, container_id, str(report_fd), data]
    os.execve(interp, argv, env)


# ------------------------------------------------------------------ the monitor


def main() -> None:
    """Entry point of the monitor process: argv is ID REPORT_FD SPEC_HEX."""
    import marshal

    report_fd = int(sys.argv[2])
    os.set_inheritable(report_fd, False)
    spec = MonitorSpec.from_dict(marshal.loads(bytes.fromhex(sys.argv[3])))
    code = Monitor(spec, report_fd).run()
    os._exit(code)


class Monitor:
    def __init__(self, spec: MonitorSpec, report_fd: int) -> None:
        from dockyard.runtime.state import StateRoot

        self.spec = spec
        self.report_fd = report_fd
        self.root: StateRoot = StateRoot(spec.runtime_root)
        self.restart_count = 0
        self.null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        self.stdin_fd = self.null
        self.listen: Any = None
        self.clients: set[int] = set()
        self.writer: JsonFileWriter | None = None
        self.pid = 0
        self.started_at = ""

    # -------------------------------------------------------------- life cycle

    def run(self) -> int:
        import _signal

        # Caught, not SIG_IGN: an ignored signal would stay ignored in the container.
        for name in ("SIGINT", "SIGHUP", "SIGTERM"):
            _signal.signal(getattr(_signal, name), _ignore)
        from dockyard.runtime import syscalls

        syscalls.current().prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        spec = self.spec
        from dockyard.runtime.state import write_atomic

        write_atomic(spec.pid_file, str(os.getpid()).encode())
        self._remove(spec.stop_file)  # a stop of an earlier run must not stop this one
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(wake_w)
        _signal.signal(_signal.SIGCHLD, _ignore)
        try:
            from dockyard.engine.logs import JsonFileWriter

            self.writer = JsonFileWriter(spec.log_path, spec.log_max_size, spec.log_max_files)
            if spec.interactive:
                if not os.path.exists(spec.stdin_fifo):
                    os.mkfifo(spec.stdin_fifo, 0o600)
                self.stdin_fd = os.open(spec.stdin_fifo, os.O_RDWR | os.O_CLOEXEC)
            if spec.attach_socket:
                self._listen(spec.attach_socket)
            streams = self._launch()
        except Exception as err:
            self._report(f"error {_one_line(err)}")
            self._close_listener()
            self._remove(spec.pid_file)
            return 1
        self._report(f"started {self.pid}")
        import gc

        gc.collect()
        try:
            self._supervise(streams)
        except Exception as err:  # keep the record straight, then leave no orphan behind
            self._save_state("exited", error=_one_line(err))
            try:
                self._delete()
            except Exception:
                pass
        finally:
            self._close_listener()
            if self.writer is not None:
                self.writer.close()
            self._remove(spec.pid_file)
        return 0

    def _supervise(self, streams: dict[int, str]) -> None:
        spec = self.spec
        delay = 0.0
        while True:
            began = time.monotonic()
            code = self._pump(streams)
            ran_for = time.monotonic() - began
            state = self._state()
            oom = _oom_killed(state.cgroup_path) if state is not None else None
            restart = self._should_restart(code)
            self._save_state("restarting" if restart else "exited", exit_code=code)
            doc: dict[str, Any] = {"exit_code": code, "finished_at": _now()}
            if oom is not None:
                doc["oom_killed"] = oom
            doc["restart_count"] = self.restart_count
            _write_json(spec.exit_file, doc)
            self._delete()
            if not restart:
                return
            delay = BACKOFF_START if ran_for >= RESET_AFTER or not delay else delay * 2
            delay = min(delay, BACKOFF_MAX)
            if not self._sleep_unless_stopped(delay):
                self._save_state("exited", exit_code=code)
                return
            self.restart_count += 1
            try:
                streams = self._launch()
            except Exception as err:
                self._save_state("exited", exit_code=code, error=_one_line(err))
                return

    def _should_restart(self, code: int) -> bool:
        policy = self.spec.restart_policy
        name = policy["name"]
        if name == "no" or os.path.exists(self.spec.stop_file):
            return False
        if name == "on-failure":
            limit = policy["maximum_retry_count"]
            return code != 0 and (limit <= 0 or self.restart_count < limit)
        return True  # always, unless-stopped

    def _sleep_unless_stopped(self, delay: float) -> bool:
        end = time.monotonic() + delay
        while True:
            if os.path.exists(self.spec.stop_file):
                return False
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.05))

    def _launch(self) -> dict[int, str]:
        """create + start with fds 0/1/2 on the container's stdio; the read ends."""
        from dockyard.runtime import container

        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            os.dup2(self.stdin_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.close(out_w)
            os.close(err_w)
            try:
                opts = container.Options()
                container.create(self.root, self.spec.container_id, self.spec.bundle, opts)
                state = container.start(self.root, self.spec.container_id)
            except BaseException:
                try:
                    container.delete(self.root, self.spec.container_id, force=True)
                except Exception:
                    pass
                raise
            finally:
                for fd in (0, 1, 2):
                    os.dup2(self.null, fd)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        self.pid = state.pid
        self.started_at = _now()
        self._save_state("running")
        return {out_r: "stdout", err_r: "stderr"}

    def _delete(self) -> None:
        from dockyard.runtime import container

        container.delete(self.root, self.spec.container_id, force=True)

    def _state(self) -> ContainerState | None:
        from dockyard.runtime.errors import RuntimeFailure

        try:
            return self.root.load(self.spec.container_id)
        except RuntimeFailure:
            return None

    # -------------------------------------------------------------- the loop

    def _pump(self, streams: dict[int, str]) -> int:
        """Copy output until the init is reaped and both pipes are at EOF; its exit code."""
        import select

        poller = select.poll()
        for fd in (*streams, self.wake_r):
            poller.register(fd, select.POLLIN)
        if self.listen is not None:
            poller.register(self.listen.fileno(), select.POLLIN)
        for fd in self.clients:
            poller.register(fd, select.POLLIN)
        code: int | None = None
        writer = self.writer
        assert writer is not None
        while streams or code is None:
            if code is None:
                code = self._reap()
            # After the init is gone its pid namespace is dead: what is left in the
            # pipes is there now. Don't wait for a stray outside holder of a pipe.
            timeout = None if code is None else 1000
            events = poller.poll(timeout)
            if not events and code is not None:
                break
            for fd, _ in events:
                if fd in streams:
                    data = os.read(fd, 65536)
                    if data:
                        writer.write(streams[fd], data)
                        self._broadcast(1 if streams[fd] == "stdout" else 2, data)
                    else:
                        writer.finish(streams.pop(fd))
                        poller.unregister(fd)
                        os.close(fd)
                elif fd == self.wake_r:
                    try:
                        while os.read(fd, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif self.listen is not None and fd == self.listen.fileno():
                    client = self._accept()
                    if client is not None:
                        poller.register(client, select.POLLIN)
                elif fd in self.clients:
                    try:
                        alive = bool(os.read(fd, 4096))
                    except OSError:
                        alive = False
                    if not alive:
                        poller.unregister(fd)
                        self._drop(fd)
        for fd, stream in streams.items():
            writer.finish(stream)
            os.close(fd)
        for fd in list(self.clients):  # attach ends with the container
            self._drop(fd)
        return code

    def _reap(self) -> int | None:
        """Reap every exited child; the init's exit code once it is among them."""
        code: int | None = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 255 if code is None and not _alive(self.pid) else code
            if pid == 0:
                return code
            if pid == self.pid:
                code = os.waitstatus_to_exitcode(status)
                if code < 0:
                    code = 128 - code

    # -------------------------------------------------------------- attach

    def _listen(self, path: str) -> None:
        import _socket

        self._remove(path)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        directory, name = os.path.split(path)
        cwd = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.chdir(directory)  # sun_path is 108 bytes: bind by a relative name
            sock.bind(name)
        finally:
            os.fchdir(cwd)
            os.close(cwd)
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self.listen = sock

    def _accept(self) -> int | None:
        try:
            fd, _ = self.listen._accept()
        except OSError:
            return None
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self.clients.add(fd)
        return int(fd)

    def _broadcast(self, stream: int, data: bytes) -> None:
        if not self.clients:
            return
        frame = bytes((stream, 0, 0, 0)) + len(data).to_bytes(4, "big") + data
        for fd in list(self.clients):
            try:
                if os.write(fd, frame) == len(frame):
                    continue
            except OSError:
                pass
            self._drop(fd)  # slow or gone: a partial frame would break the stream

    def _drop(self, fd: int) -> None:
        self.clients.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass

    def _close_listener(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        if self.listen is not None:
            self.listen.close()
            self.listen = None
            if self.spec.attach_socket:
                self._remove(self.spec.attach_socket)

    # -------------------------------------------------------------- records

    def _report(self, line: str) -> None:
        if self.report_fd < 0:
            return
        try:
            os.write(self.report_fd, line.encode() + b"\n")
        except OSError:
            pass
        os.close(self.report_fd)
        self.report_fd = -1

    def _save_state(self, status: str, **extra: Any) -> None:
        doc: dict[str, Any] = {
            "monitor_pid": os.getpid(),
            "pid": self.pid if status == "running" else 0,
            "status": status,
            "restart_count": self.restart_count,
            "started_at": self.started_at,
        }
        doc.update(extra)
        try:
            _write_json(self.spec.state_file, doc)
        except OSError:
            pass

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _ignore(signum: int, frame: object) -> None:
    pass


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return " ".join(text.split())


def _oom_killed(cgroup_path: str) -> bool | None:
    """Did the kernel OOM-kill in the container's memory cgroup? None: can't tell."""
    rel = cgroup_path.strip("/")
    candidates = (
        f"/sys/fs/cgroup/memory/{rel}/memory.oom_control",  # v1 (oom_kill since 4.13)
        f"/sys/fs/cgroup/{rel}/memory.events",  # v2
        f"/sys/fs/cgroup/unified/{rel}/memory.events",
    )
    for path in candidates:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value) > 0
        except (OSError, ValueError):
            continue
    return None
