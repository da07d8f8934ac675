"""The per-container monitor against the real runtime (root, busybox bundle)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scripts import test_images

from dockyard.engine.logs import read_logs
from dockyard.engine.monitor_start import MonitorSpec, spawn_monitor
from dockyard.runtime import container
from dockyard.runtime.errors import RuntimeFailure
from dockyard.runtime.state import StateRoot, pid_start_time

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    return pid_start_time(pid) is not None


def pss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of a process in kB."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/smaps_rollup") as f:
        pss = next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    return rss, pss


class Engine:
    """Makes bundles and specs under tmp_path; the fixture's teardown removes all."""

    def __init__(self, tmp_path: Path, image: test_images.BusyboxImage) -> None:
        self.tmp_path = tmp_path
        self.image = image
        self.root = StateRoot(str(tmp_path / "runtime"))
        self.specs: list[MonitorSpec] = []
        self.monitors: list[int] = []

    def spec(self, args: list[str], **kw: Any) -> MonitorSpec:
        cid = f"mon-{uuid.uuid4().hex[:10]}"
        bundle = test_images.make_bundle(self.image, self.tmp_path / f"bundle-{cid}", args=args)
        spec = MonitorSpec(cid, str(bundle), self.root.root, str(self.tmp_path / cid), **kw)
        self.specs.append(spec)
        return spec

    def spawn(self, spec: MonitorSpec) -> int:
        pid = spawn_monitor(spec)
        self.monitors.append(pid)
        return pid

    def exit_doc(self, spec: MonitorSpec) -> dict[str, Any]:
        return dict(json.loads(Path(spec.exit_file).read_text()))

    def wait_done(self, pid: int, timeout: float = 20.0) -> None:
        wait_for(lambda: not alive(pid), timeout, f"monitor {pid} to exit")

    def cleanup(self) -> None:
        for spec in self.specs:
            try:
                pid = int(Path(spec.pid_file).read_text())
            except (OSError, ValueError):
                pid = 0
            for p in {pid, *self.monitors} - {0}:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                container.delete(self.root, spec.container_id, force=True)
            except RuntimeFailure:
                pass
        for pid in self.monitors:
            self.wait_done(pid, 5)
        assert self.root.ids() == []


@pytest.fixture
def engine(tmp_path: Path, busybox_image: test_images.BusyboxImage) -> Iterator[Engine]:
    eng = Engine(tmp_path, busybox_image)
    try:
        yield eng
    finally:
        eng.cleanup()


def test_output_streams_and_exit_code(engine: Engine) -> None:
    spec = engine.spec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    pid = engine.spawn(spec)
    engine.wait_done(pid)
    got = [(s, t) for s, _, t in read_logs(spec.log_path)]
    assert sorted(got) == [("stderr", "err\n"), ("stdout", "out\n")]
    for line in Path(spec.log_path).read_text().splitlines():
        assert list(json.loads(line)) == ["log", "stream", "time"]
    doc = engine.exit_doc(spec)
    assert doc["exit_code"] == 3
    assert doc["restart_count"] == 0
    assert doc.get("oom_killed", False) is False
    assert doc["finished_at"].endswith("Z")
    state = json.loads(Path(spec.state_file).read_text())
    assert state["status"] == "exited" and state["exit_code"] == 3
    assert not os.path.exists(spec.pid_file)
    assert engine.root.ids() == []  # the runtime container was deleted


def test_container_survives_its_spawner(engine: Engine) -> None:
    spec = engine.spec(["sh", "-c", "while true; do echo tick; sleep 0.1; done"])
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the spawner, killed below
        try:
            os.close(read_fd)
            os.write(write_fd, f"{spawn_monitor(spec)}\n".encode())
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(write_fd)
    data = b""
    while not data.endswith(b"\n"):  # the spawner keeps the pipe open: read one line
        chunk = os.read(read_fd, 64)
        if not chunk:
            break
        data += chunk
    os.close(read_fd)
    pid = int(data or 0)
    assert pid
    engine.monitors.append(pid)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    assert int(Path(spec.pid_file).read_text()) == pid
    before = len(list(read_logs(spec.log_path)))
    time.sleep(0.6)
    assert alive(pid)
    assert container.state_of(engine.root, spec.container_id)["status"] == "running"
    assert len(list(read_logs(spec.log_path))) > before  # still logging
    # SIGTERM/SIGINT/SIGHUP to the monitor don't end it (a killed CLI's group may get them)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(pid, sig)
    time.sleep(0.2)
    assert alive(pid)
    container.kill(engine.root, spec.container_id, signal.SIGKILL)
    engine.wait_done(pid)
    assert engine.exit_doc(spec)["exit_code"] == 137


def test_container_gets_sigterm_by_default(engine: Engine) -> None:
    """The monitor's own signal handling must not leak into the container."""
    script = "trap 'exit 5' TERM; echo ready; while true; do sleep 0.05; done"
    spec = engine.spec(["sh", "-c", script])
    pid = engine.spawn(spec)
    wait_for(lambda: list(read_logs(spec.log_path)), 10, "the trap to be set")
    container.kill(engine.root, spec.container_id, signal.SIGTERM)
    engine.wait_done(pid)
    assert engine.exit_doc(spec)["exit_code"] == 5


def test_on_failure_restarts_exactly_max_times(engine: Engine) -> None:
    spec = engine.spec(
        ["sh", "-c", "echo run; exit 3"],
        restart_policy={"name": "on-failure", "maximum_retry_count": 2},
    )
    pid = engine.spawn(spec)
    engine.wait_done(pid)
    doc = engine.exit_doc(spec)
    assert (doc["exit_code"], doc["restart_count"]) == (3, 2)
    assert json.loads(Path(spec.state_file).read_text())["restart_count"] == 2
    assert [t for _, _, t in read_logs(spec.log_path)] == ["run\n"] * 3


def test_on_failure_does_not_restart_success(engine: Engine) -> None:
    spec = engine.spec(["true"], restart_policy={"name": "on-failure"})
    engine.wait_done(engine.spawn(spec))
    assert engine.exit_doc(spec) | {"finished_at": ""} == {
        "exit_code": 0,
        "finished_at": "",
        "restart_count": 0,
        **({"oom_killed": False} if "oom_killed" in engine.exit_doc(spec) else {}),
    }


def test_always_restarts_until_stopped(engine: Engine) -> None:
    spec = engine.spec(["sh", "-c", "echo run; sleep 1; exit 0"], restart_policy={"name": "always"})
    pid = engine.spawn(spec)

    def restarted_and_running() -> bool:
        state = json.loads(Path(spec.state_file).read_text())
        return state["restart_count"] >= 1 and state["status"] == "running"

    wait_for(restarted_and_running, 15, "a restart after exit 0")
    assert engine.exit_doc(spec)["exit_code"] == 0
    # what `stop` does: the stop file, then kill through the runtime
    Path(spec.stop_file).touch()
    end = time.monotonic() + 15
    while alive(pid) and time.monotonic() < end:
        try:
            container.kill(engine.root, spec.container_id, signal.SIGKILL)
        except RuntimeFailure:
            pass  # between two runs: the monitor sees the stop file before restarting
        time.sleep(0.2)
    assert not alive(pid)
    doc = engine.exit_doc(spec)
    assert doc["exit_code"] == 137
    assert doc["restart_count"] >= 1
    assert engine.root.ids() == []


def test_missing_executable_is_a_one_line_error(engine: Engine) -> None:
    spec = engine.spec(["/no/such/program"])
    with pytest.raises(RuntimeFailure) as info:
        spawn_monitor(spec)
    message = str(info.value)
    assert "/no/such/program" in message and "\n" not in message
    assert not os.path.exists(spec.pid_file)
    assert engine.root.ids() == []
    assert not os.path.exists(os.path.join(engine.root.root, spec.container_id))
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if spec.container_id.encode() in cmdline:
                assert not alive(int(entry)), f"process {entry} left behind"


def test_attach_socket_streams_output(engine: Engine) -> None:
    import socket

    spec = engine.spec(["sh", "-c", "while true; do echo tick; echo tock >&2; sleep 0.05; done"])
    engine.spawn(spec)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(spec.attach_socket or "")
        s.settimeout(5)
        seen: set[tuple[int, bytes]] = set()
        buf = b""
        while len(seen) < 2:
            buf += s.recv(4096)
            while len(buf) >= 8 and len(buf) >= 8 + int.from_bytes(buf[4:8], "big"):
                size = int.from_bytes(buf[4:8], "big")
                assert buf[1:4] == b"\0\0\0"
                seen.add((buf[0], buf[8 : 8 + size]))
                buf = buf[8 + size :]
        assert seen == {(1, b"tick\n"), (2, b"tock\n")}
        container.kill(engine.root, spec.container_id, signal.SIGKILL)
        s.settimeout(10)
        while s.recv(4096):  # the monitor ends the attach when the container exits
            pass


def test_interactive_stdin_from_fifo(engine: Engine) -> None:
    spec = engine.spec(["sh", "-c", "read line; echo got $line"], interactive=True)
    pid = engine.spawn(spec)
    fd = os.open(spec.stdin_fifo, os.O_WRONLY)
    os.write(fd, b"hello\n")
    os.close(fd)
    engine.wait_done(pid)
    assert [t for _, _, t in read_logs(spec.log_path)] == ["got hello\n"]


def test_log_rotation_options(engine: Engine) -> None:
    spec = engine.spec(
        ["sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done"],
        log_max_size=2000,
        log_max_files=3,
    )
    engine.wait_done(engine.spawn(spec))
    files = sorted(p.name for p in Path(spec.log_path).parent.glob("container-json.log*"))
    assert files == ["container-json.log", "container-json.log.1", "container-json.log.2"]
    got = [int(t.split()[1]) for _, _, t in read_logs(spec.log_path)]
    assert got == list(range(got[0], 300))


def test_monitor_is_lean(engine: Engine) -> None:
    spec = engine.spec(["sleep", "1000"])
    pid = engine.spawn(spec)
    time.sleep(0.3)
    rss, pss = pss_kb(pid)
    print(f"\nmonitor memory with a sleeping container: VmRSS {rss} kB, Pss {pss} kB")
    assert pss < 12 * 1024
    container.kill(engine.root, spec.container_id, signal.SIGKILL)
    engine.wait_done(pid)
