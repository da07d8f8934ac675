"""The per-container monitor: the one process a running container needs.

`spawn_monitor(spec)` starts it fully detached (double fork, setsid, a fresh
`python -S -I`, stdio on /dev/null) and returns its pid once the container
runs, or raises the runtime's one-line error. The monitor then:

- is the container's parent (a child subreaper: the init, forked by the
  runtime's helper, is reparented to it) and ignores SIGINT/SIGHUP/SIGTERM,
  so it outlives every other dockyard process;
- holds the container's stdio: stdout/stderr are pipes it reads into the
  json-file log (`logs.JsonFileWriter`) and broadcasts to clients of the
  attach socket; stdin is /dev/null or, when interactive, a fifo `stdin` whose
  writer it keeps open until a client closes stdin; with a tty, a pty master;
- on exit writes the exit file atomically
  (`{"exit_code", "finished_at", "oom_killed", "restart_count"}`), deletes the
  runtime container and applies the restart policy with Docker's back-off
  (100 ms doubling, at most 1 min, reset after 10 s of running). A `stop_file`
  present at exit means `stop` asked for it: no restart;
- keeps `state_file` (`{"monitor_pid", "pid", "status", "restart_count", …}`)
  current, and removes its pid file when it is done for good.

The attach socket's protocol (Docker's multiplexed stream out, or raw bytes
for a tty; framed stdin and resizes in) is in `engine/terminal.py`.

Lean by design: no typing, subprocess, socket (`_socket` only when attach is
on), json (the runtime loads it anyway, lazily).
"""

from __future__ import annotations

import os
import sys
import time

from dockyard.engine.monitor_start import MonitorSpec, alive, now, write_json

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.logs import JsonFileWriter
    from dockyard.runtime.state import ContainerState, StateRoot

BACKOFF_START = 0.1
BACKOFF_MAX = 60.0
RESET_AFTER = 10.0
REPLAY_WAIT = 5.0  # how long output kept for `start(attach=True)` waits for its client


# ------------------------------------------------------------------ the monitor


def main() -> None:
    """Entry point of the monitor process: argv is NAME REPORT_FD SPEC_FD.

    Before the spec arrives: the container's output pipes and the runtime's
    init helper (booting its interpreter in parallel), and the runtime's
    modules loaded. No spec (the pipe closed empty): nothing to run, exit.
    """
    from dockyard.runtime import spawn

    report_fd = int(sys.argv[2])
    spec_fd = int(sys.argv[3])
    os.set_inheritable(report_fd, False)
    os.set_inheritable(spec_fd, False)
    if len(sys.argv) > 4:  # started by spawn.exec_read_only: init helpers are plain forks
        spawn.return_to_host(int(sys.argv[4]))
    early = _Prepared()
    import json  # noqa: F401 - loaded now, while nothing waits for it

    from dockyard.engine import logs  # noqa: F401
    from dockyard.runtime import cgroups, container  # noqa: F401

    run_when_told(early, spec_fd, report_fd)


def run_when_told(early: _Prepared, spec_fd: int, report_fd: int) -> None:
    """Read the spec (until EOF) and be its monitor; no spec: abort `early`, exit."""
    import marshal

    chunks = []
    while chunk := os.read(spec_fd, 65536):
        chunks.append(chunk)
    os.close(spec_fd)
    if not chunks:
        early.abort()
        os._exit(0)
    spec = MonitorSpec.from_dict(marshal.loads(b"".join(chunks)))
    if spec.interactive or spec.tty:  # the helper's stdio fits plain pipes only
        early.abort()
        run_monitor(spec, report_fd)
    run_monitor(spec, report_fd, early)


def run_monitor(spec: MonitorSpec, report_fd: int, prepared: _Prepared | None = None) -> None:
    """Be the container's monitor until it is gone for good; never returns."""
    monitor = Monitor(spec, report_fd)
    monitor.prepared = prepared
    code = monitor.run()
    if monitor.prepared is not None:  # failed before the first launch
        monitor.prepared.abort()
    os._exit(code)


class _Prepared:
    """Output pipes and an init helper started with them as its stdout/stderr."""

    def __init__(self) -> None:
        from dockyard.runtime import spawn

        self.fds = (*os.pipe2(os.O_CLOEXEC), *os.pipe2(os.O_CLOEXEC))  # out r/w, err r/w
        os.dup2(self.fds[1], 1)
        os.dup2(self.fds[3], 2)
        try:
            self.helper: spawn.Helper | None = spawn.Helper()
        finally:
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.close(null)

    def abort(self) -> None:
        if self.helper is not None:
            self.helper.abort()
            self.helper = None
        for fd in self.fds:
            os.close(fd)


class Monitor:
    prepared: _Prepared | None = None  # from main(): for the first launch
    lean_at = 0.0  # when to re-execute lean (monitor_loop.go_lean); 0: never

    def __init__(self, spec: MonitorSpec, report_fd: int) -> None:
        from dockyard.runtime.state import StateRoot

        self.spec = spec
        self.report_fd = report_fd
        self.root: StateRoot = StateRoot(spec.runtime_root)
        self.restart_count = 0
        self.null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        self.stdin_fd = self.null
        self.listen: Any = None
        self.clients: dict[int, bytes] = {}  # fd → its unfinished input frame
        self.master = -1
        self.backlog: bytes | None = b"" if spec.replay else None
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

        write_atomic(spec.pid_file, str(os.getpid()).encode(), durable=False)
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
                self.stdin_fd = os.open(spec.stdin_fifo, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
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
            self.release_rootfs()
            self._remove(spec.pid_file)
        return 0

    def _supervise(self, streams: dict[int, str]) -> None:
        """Run (and restart) the container until it is done; then, with AutoRemove, start
        its remover (engine/autoremove.py), which acts once this monitor has exited."""
        try:
            self._supervise_runs(streams)
        finally:
            # Addresses, ports and rules back before anyone waits on us; an AutoRemove
            # container's removal (run --rm, the remover) releases them a moment later.
            if self.spec.networks and self.spec.state_root and not self.spec.auto_remove:
                try:
                    from dockyard.engine.networking import release_in_monitor

                    release_in_monitor(self.spec.state_root, self.spec.container_id)
                except Exception:
                    pass  # `rm` and `system check --repair` release what is left
            if self.spec.auto_remove and self.spec.state_root:
                from dockyard.engine.autoremove import spawn

                spawn(self.spec.state_root, self.spec.container_id)

    def _supervise_runs(self, streams: dict[int, str]) -> None:
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
            doc: dict[str, Any] = {"exit_code": code, "finished_at": now()}
            if oom is not None:
                doc["oom_killed"] = oom
            doc["restart_count"] = self.restart_count
            write_json(spec.exit_file, doc)
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
        from dockyard.engine import terminal
        from dockyard.runtime import container

        prepared, self.prepared = self.prepared, None
        if prepared is not None:  # pipes and helper made before the spec came
            out_r, out_w, err_r, err_w = prepared.fds
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            terminal.container_stdin(self)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.close(out_w)
            os.close(err_w)
            try:
                opts = container.Options()
                if self.spec.tty:  # the pty master stands in for the stdout pipe
                    out_r = terminal.create(self, opts, out_r)
                else:
                    helper = prepared.helper if prepared is not None else None
                    container.create(
                        self.root, self.spec.container_id, self.spec.bundle, opts, helper
                    )
                if self.spec.networks:
                    self._attach_networks()
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
        self.started_at = now()
        self._save_state("running")
        from dockyard.engine import monitor_loop

        self.lean_at = monitor_loop.deadline()
        if os.path.exists(os.path.join(self.spec.container_dir, "healthcheck.json")):
            from dockyard.engine.health import spawn

            spawn(self.spec.container_dir, self.spec.runtime_root, self.spec.container_id, self.pid)
        return {out_r: "stdout", err_r: "stderr"}

    def _attach_networks(self) -> None:
        """veth pairs into the created container's network namespace, before it starts."""
        from dockyard.network import links

        pid = self.root.load(self.spec.container_id).pid
        for attachment in self.spec.networks:
            links.attach(pid, **attachment)

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

        from dockyard.engine import terminal

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
                if code is not None and not streams:
                    break  # reaped after both pipes ended: nothing left to wait for
            if code is None and self.lean_at and time.monotonic() >= self.lean_at:
                from dockyard.engine import monitor_loop

                monitor_loop.go_lean(self, streams)  # returns only if it can't
            # After the init is gone its pid namespace is dead: what is left in the
            # pipes is there now. Don't wait for a stray outside holder of a pipe.
            if code is not None:
                timeout: int | None = 1000
            elif self.lean_at:
                timeout = max(0, int((self.lean_at - time.monotonic()) * 1000) + 1)
            else:
                timeout = None
            events = poller.poll(timeout)
            if not events and code is not None:
                break
            for fd, _ in events:
                if fd in streams:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:  # EIO: a pty whose slave side is closed everywhere
                        data, self.master = b"", -1
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
                        data = os.read(fd, 65536)
                    except OSError:
                        data = b""
                    alive = bool(data) and terminal.feed(self, fd, data)
                    if not alive:
                        poller.unregister(fd)
                        self._drop(fd)
        for fd, stream in streams.items():
            writer.finish(stream)
            os.close(fd)
        if self.backlog is not None and self.listen is not None:
            # A replay's client has not come yet (the container was quicker): the output
            # waits for it a moment, as Docker's attach (made before the start) gets it all.
            import select

            if select.select([self.listen.fileno()], [], [], REPLAY_WAIT)[0]:
                self._accept()
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
                return 255 if code is None and not alive(self.pid) else code
            if pid == 0:
                return code
            if pid == self.pid:
                code = os.waitstatus_to_exitcode(status)
                if code < 0:
                    code = 128 - code

    # -------------------------------------------------------------- attach

    def _listen(self, path: str) -> None:
        from dockyard.engine.terminal import listen_unix

        self.listen = listen_unix(path, 16)

    def _accept(self) -> int | None:
        try:
            fd, _ = self.listen._accept()
        except OSError:
            return None
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self.clients[fd] = b""
        if self.backlog:
            os.write(fd, self.backlog)
        self.backlog = None
        return int(fd)

    def _broadcast(self, stream: int, data: bytes) -> None:
        head = b"" if self.spec.tty else bytes((stream, 0, 0, 0)) + len(data).to_bytes(4, "big")
        frame = head + data
        if not self.clients:
            if self.backlog is not None and len(self.backlog) < 1 << 16:
                self.backlog += frame
            return
        for fd in list(self.clients):
            try:
                if os.write(fd, frame) == len(frame):
                    continue
            except OSError:
                pass
            self._drop(fd)  # slow or gone: a partial frame would break the stream

    def _drop(self, fd: int) -> None:
        self.clients.pop(fd, None)
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
            write_json(self.spec.state_file, doc, durable=False)
        except OSError:
            pass

    def release_rootfs(self) -> None:
        """Unmount the container's rootfs once it is gone for good, as Docker does.

        Under the engine's start lock, and only while the pid file still names
        this monitor: a `start` that already took over keeps its mount.
        """
        rootfs = os.path.join(self.spec.bundle, "rootfs")
        if not os.path.ismount(rootfs):
            return
        import fcntl

        lock = os.open(
            os.path.join(self.spec.container_dir, "start.lock"),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.spec.pid_file) as f:
                    ours = f.read().strip() == str(os.getpid())
            except OSError:
                ours = False
            if ours and os.path.ismount(rootfs):
                from dockyard.storage.snapshots import unmount

                unmount(rootfs)
        except OSError:
            pass  # still mounted: `rm`, `start` and `system check --repair` handle it
        finally:
            os.close(lock)

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
