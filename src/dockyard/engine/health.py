"""Health checks: one small process per running container that has a HEALTHCHECK.

The monitor starts it (`spawn`) each time it launches the container, when the
container's directory holds `healthcheck.json` (Docker's Healthcheck object:
Test, Interval, Timeout, Retries, StartPeriod; durations in ns). It runs the
probe every Interval through the runtime's exec (the container's own process
settings, as `docker exec` does), and keeps `health.json` current in Docker's
State.Health shape: {"Status": starting|healthy|unhealthy, "FailingStreak",
"Log": the last 5 probes [{"Start", "End", "ExitCode", "Output"}]}.
It ends when the container's init is gone.

Lean at import (the monitor imports it): os, sys, time only.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

SPEC_FILE = "healthcheck.json"
STATE_FILE = "health.json"
DEFAULT_INTERVAL = 30_000_000_000
DEFAULT_TIMEOUT = 30_000_000_000
DEFAULT_RETRIES = 3
MAX_LOG = 5
MAX_OUTPUT = 4096

_SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = f"import sys;sys.path.insert(0,{_SRC!r});from dockyard.engine.health import main;main()"


def _write(path: str, doc: dict[str, Any]) -> None:
    import json

    from dockyard.runtime.state import write_atomic

    write_atomic(path, json.dumps(doc).encode())


def read_state(container_dir: str) -> dict[str, Any] | None:
    """The container's State.Health, or None when it has no health check."""
    import json

    if not os.path.exists(os.path.join(container_dir, SPEC_FILE)):
        return None
    try:
        with open(os.path.join(container_dir, STATE_FILE), "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict):
        doc = {"Status": "starting", "FailingStreak": 0, "Log": []}
    return doc


def spawn(container_dir: str, runtime_root: str, container_id: str, init_pid: int) -> int:
    """Start the checker as a child of the caller (the monitor); its pid, 0 on failure."""
    try:
        _write(
            os.path.join(container_dir, STATE_FILE),
            {"Status": "starting", "FailingStreak": 0, "Log": []},
        )
        interp = os.path.realpath(sys.executable)
        argv = [interp, "-S", "-I", "-c", _BOOT, container_id, container_dir, runtime_root]
        argv.append(str(init_pid))
        pid = os.fork()
    except Exception:
        return 0
    if pid == 0:  # pragma: no cover - ends in execve or _exit
        try:
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 1 << 16)
            os.execve(interp, argv, {"PATH": os.environ.get("PATH") or "/usr/bin:/bin"})
        finally:
            os._exit(127)
    return pid


def main() -> None:
    """Entry point of the checker: argv is ID CONTAINER_DIR RUNTIME_ROOT INIT_PID."""
    import _signal

    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
    container_id, container_dir, runtime_root, init_pid = sys.argv[1:5]
    try:
        Checker(container_id, container_dir, runtime_root, int(init_pid)).run()
    finally:
        os._exit(0)


class Checker:
    def __init__(
        self, container_id: str, container_dir: str, runtime_root: str, init_pid: int
    ) -> None:
        import json

        from dockyard.runtime.state import pid_start_time

        self.container_id = container_id
        self.dir = container_dir
        self.runtime_root = runtime_root
        self.init_pid = init_pid
        self.init_start = pid_start_time(init_pid)
        with open(os.path.join(container_dir, SPEC_FILE), "rb") as f:
            spec = json.load(f)
        self.test: list[str] = list(spec.get("Test") or [])
        self.interval = (spec.get("Interval") or DEFAULT_INTERVAL) / 1e9
        self.timeout = (spec.get("Timeout") or DEFAULT_TIMEOUT) / 1e9
        retries = spec.get("Retries")
        self.retries = DEFAULT_RETRIES if not retries else int(retries)
        self.start_period = (spec.get("StartPeriod") or 0) / 1e9
        self.state: dict[str, Any] = {"Status": "starting", "FailingStreak": 0, "Log": []}

    def alive(self) -> bool:
        from dockyard.runtime.state import pid_start_time

        return self.init_start is not None and pid_start_time(self.init_pid) == self.init_start

    def run(self) -> None:
        from dockyard.runtime import syscalls

        syscalls.current().prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        began = time.monotonic()
        if self.test[:1] == ["CMD-SHELL"]:
            argv = ["/bin/sh", "-c", " ".join(self.test[1:])]
        elif self.test[:1] == ["CMD"]:
            argv = self.test[1:]
        else:
            argv = list(self.test)
        if not argv:
            return
        while self._sleep(self.interval):
            entry = self.probe(argv)
            if not self.alive():
                return
            self.record(entry, in_start_period=time.monotonic() - began < self.start_period)
            try:
                _write(os.path.join(self.dir, STATE_FILE), self.state)
            except OSError:
                return  # the container is being removed

    def _sleep(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while True:
            if not self.alive():
                return False
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.05))

    def record(self, entry: dict[str, Any], in_start_period: bool) -> None:
        """Docker's rules: success → healthy; failures count after the start period,
        Retries in a row → unhealthy."""
        state = self.state
        state["Log"] = [*state["Log"], entry][-MAX_LOG:]
        if entry["ExitCode"] == 0:
            state["Status"] = "healthy"
            state["FailingStreak"] = 0
        elif not (in_start_period and state["Status"] == "starting"):
            state["FailingStreak"] += 1
            if state["FailingStreak"] >= self.retries:
                state["Status"] = "unhealthy"

    def probe(self, argv: list[str]) -> dict[str, Any]:
        """One run of the test: {Start, End, ExitCode, Output}."""
        import json

        from dockyard.engine.logs import format_time
        from dockyard.runtime import container as runtime
        from dockyard.runtime.errors import RuntimeFailure
        from dockyard.runtime.state import StateRoot

        start = format_time(time.time_ns())
        with open(os.path.join(self.dir, "config.json"), "rb") as f:
            process = dict(json.load(f).get("process") or {})
        process["args"] = argv
        process["terminal"] = False
        process.pop("consoleSize", None)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        saved = [os.dup(fd) for fd in (0, 1, 2)]
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        failure = ""
        try:
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            pid = runtime.exec_process(
                StateRoot(self.runtime_root), self.container_id, process, runtime.Options()
            )
        except RuntimeFailure as err:
            pid = 0
            failure = str(err)
        finally:
            for fd, old in zip((0, 1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)
            os.close(out_w)
            os.close(null)
        if not pid:
            os.close(out_r)
            code = 127 if "not found" in failure or "no such file" in failure else 126
            end = format_time(time.time_ns())
            return {"Start": start, "End": end, "ExitCode": code, "Output": failure}
        code, output = self._collect(pid, out_r)
        end = format_time(time.time_ns())
        return {"Start": start, "End": end, "ExitCode": code, "Output": output}

    def _collect(self, pid: int, out_r: int) -> tuple[int, str]:
        """Output and exit code of the probe; -1 and Docker's message on timeout."""
        import select

        deadline = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        size = 0
        code: int | None = None
        eof = False
        try:
            while code is None or not eof:
                code = self._reap(pid) if code is None else code
                left = deadline - time.monotonic()
                if left <= 0:
                    if code is None:
                        try:
                            os.kill(pid, 9)
                        except ProcessLookupError:
                            pass
                        self._reap_blocking(pid)
                        return -1, f"Health check exceeded timeout ({self.timeout:g}s)"
                    break
                if eof:
                    time.sleep(min(left, 0.01))
                    continue
                if select.select([out_r], [], [], min(left, 0.05))[0]:
                    data = os.read(out_r, 65536)
                    if not data:
                        eof = True
                    elif size < MAX_OUTPUT:
                        chunks.append(data)
                        size += len(data)
                elif code is not None:
                    break  # exited; a stray holder of the pipe must not hold us
        finally:
            os.close(out_r)
        text = b"".join(chunks)[:MAX_OUTPUT].decode(errors="replace")
        return (code if code is not None else -1), text

    @staticmethod
    def _reap(pid: int) -> int | None:
        found: int | None = None
        while True:
            try:
                child, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return found if found is not None else -1
            if child == 0:
                return found
            if child == pid:
                found = os.waitstatus_to_exitcode(status)
                if found < 0:
                    found = 128 - found

    @staticmethod
    def _reap_blocking(pid: int) -> None:
        end = time.monotonic() + 5
        while time.monotonic() < end and Checker._reap(pid) is None:
            time.sleep(0.01)


def status_suffix(health: dict[str, Any] | None) -> str:
    """What `ps` adds to "Up 5 seconds": " (healthy)", " (health: starting)"…"""
    if not health:
        return ""
    status = health.get("Status") or "starting"
    return " (health: starting)" if status == "starting" else f" ({status})"
