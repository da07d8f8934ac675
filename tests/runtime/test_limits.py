"""cgroup limits enforced by the kernel: memory (OOM kill), pids, cpu quota."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.runtime.helpers import (
    CGROUP_ROOT,
    Runtime,
    needs_root,
    rt_fixture,  # noqa: F401 - the `rt` fixture
    wait_for,
)

pytestmark = [
    needs_root,
    pytest.mark.skipif(
        not os.path.isdir(f"{CGROUP_ROOT}/memory") or not os.path.isdir(f"{CGROUP_ROOT}/pids"),
        reason="needs cgroup v1 controllers",
    ),
]

MB = 1 << 20


def cgroup_file(rt: Runtime, cid: str, controller: str, name: str) -> Path:
    saved = rt.saved_state(cid)
    assert saved is not None
    return Path(CGROUP_ROOT, controller, saved["cgroup_path"].lstrip("/"), name)


def test_memory_limit_written(rt: Runtime) -> None:
    memory = {"limit": 32 * MB, "swap": 32 * MB}
    cid = rt.run_detached(rt.bundle(["sleep", "30"], linux={"resources": {"memory": memory}}))
    assert int(cgroup_file(rt, cid, "memory", "memory.limit_in_bytes").read_text()) == 32 * MB
    memsw = cgroup_file(rt, cid, "memory", "memory.memsw.limit_in_bytes")
    if memsw.exists():
        assert int(memsw.read_text()) == 32 * MB


def test_memory_hog_is_oom_killed(rt: Runtime) -> None:
    # A shell string that doubles until it can't: far more than 32 MiB.
    script = "x=0123456789abcdef; while :; do x=$x$x; done"
    memory = {"limit": 32 * MB, "swap": 32 * MB}
    bundle = rt.bundle(["sh", "-c", script], linux={"resources": {"memory": memory}})
    started = time.monotonic()
    res = rt.run(bundle, timeout=20)
    assert res.returncode == 137, (res.returncode, res.stderr)
    assert time.monotonic() - started < 10


def test_memory_hog_in_child_is_oom_killed(rt: Runtime) -> None:
    # The hog is a child of PID 1: PID 1 sees it die of SIGKILL (status 137).
    script = "sh -c 'x=0123456789abcdef; while :; do x=$x$x; done'; echo status=$?"
    memory = {"limit": 32 * MB, "swap": 32 * MB}
    res = rt.run(rt.bundle(["sh", "-c", script], linux={"resources": {"memory": memory}}))
    assert res.returncode == 0, res.stderr
    assert "status=137" in res.stdout


def test_memory_under_limit_is_fine(rt: Runtime) -> None:
    script = "dd if=/dev/zero of=/dev/null bs=1M count=100 2>/dev/null && echo done"
    memory = {"limit": 32 * MB, "swap": 32 * MB}
    res = rt.run(rt.bundle(["sh", "-c", script], linux={"resources": {"memory": memory}}))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "done"


def test_pids_limit_bounds_fork_bomb(rt: Runtime) -> None:
    # A child shell tries to start 30 sleepers with pids.limit 10 (ash gives up at the
    # first failed fork); PID 1 then execs, which needs no new pid.
    script = "sh -c 'for i in $(seq 30); do sleep 5 & done' 2>/dev/null; exec sleep 5"
    bundle = rt.bundle(["sh", "-c", script], linux={"resources": {"pids": {"limit": 10}}})
    cid = rt.run_detached(bundle)
    assert cgroup_file(rt, cid, "pids", "pids.max").read_text().strip() == "10"
    events = cgroup_file(rt, cid, "pids", "pids.events")
    assert wait_for(lambda: int(events.read_text().split()[1]) > 0, timeout=5), events.read_text()
    current = int(cgroup_file(rt, cid, "pids", "pids.current").read_text())
    assert 5 <= current <= 10, current
    procs = cgroup_file(rt, cid, "pids", "cgroup.procs").read_text().split()
    assert len(procs) <= 10


def test_pids_limit_fork_failures_seen_inside(rt: Runtime) -> None:
    script = (
        "ok=0; fail=0; for i in $(seq 20); do "
        "if (sleep 3 &) 2>/dev/null; then ok=$((ok+1)); else fail=$((fail+1)); fi; done; "
        "echo ok=$ok fail=$fail"
    )
    bundle = rt.bundle(["sh", "-c", script], linux={"resources": {"pids": {"limit": 10}}})
    res = rt.run(bundle, timeout=15)
    out = dict(kv.split("=") for kv in res.stdout.split())
    assert int(out["fail"]) > 0, res.stdout
    assert int(out["ok"]) < 10, res.stdout


def test_cpu_quota_holds_busy_loop(rt: Runtime) -> None:
    cpu = {"quota": 20000, "period": 100000}
    cid = rt.run_detached(
        rt.bundle(["sh", "-c", "while :; do :; done"], linux={"resources": {"cpu": cpu}})
    )
    assert cgroup_file(rt, cid, "cpu", "cpu.cfs_quota_us").read_text().strip() == "20000"
    assert cgroup_file(rt, cid, "cpu", "cpu.cfs_period_us").read_text().strip() == "100000"
    usage = cgroup_file(rt, cid, "cpuacct", "cpuacct.usage")
    time.sleep(0.3)  # past the start-up
    before, t0 = int(usage.read_text()), time.monotonic()
    time.sleep(1.5)
    after, t1 = int(usage.read_text()), time.monotonic()
    share = (after - before) / 1e9 / (t1 - t0)
    assert 0.05 < share < 0.40, share


def test_cpu_shares_written(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(["sleep", "30"], linux={"resources": {"cpu": {"shares": 512}}}))
    assert cgroup_file(rt, cid, "cpu", "cpu.shares").read_text().strip() == "512"


def test_container_in_its_cgroup(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(["sleep", "30"]))
    pid = rt.state(cid)["pid"]
    saved = rt.saved_state(cid)
    assert saved is not None
    assert saved["cgroup_path"] == f"/dockyard/{cid}"
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    memory = next(line for line in lines if line.split(":")[1] == "memory")
    assert memory.endswith(f"/dockyard/{cid}")
    assert str(pid) in cgroup_file(rt, cid, "memory", "cgroup.procs").read_text().split()


def test_custom_cgroups_path(rt: Runtime) -> None:
    path = f"/dockyard/custom-{os.getpid()}-{time.monotonic_ns()}"
    cid = rt.run_detached(rt.bundle(["sleep", "30"], linux={"cgroupsPath": path}))
    pid = rt.state(cid)["pid"]
    assert f"{path}\n" in Path(f"/proc/{pid}/cgroup").read_text()
    assert Path(CGROUP_ROOT, "pids", path.lstrip("/")).is_dir()
