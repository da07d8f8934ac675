"""cgroup v1 for real: this host's v1 controllers under /sys/fs/cgroup (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from dockyard.runtime.cgroups import detect_mode, open_manager
from dockyard.runtime.cgroups.v1 import V1Manager, device_rule_string
from dockyard.runtime.errors import RuntimeFailure

ROOT = "/sys/fs/cgroup"
TOP = "/dockyard-test"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.isdir(f"{ROOT}/memory") or not os.path.isdir(f"{ROOT}/pids"),
    reason="needs root and cgroup v1 controllers",
)

MB = 1024 * 1024


def _read(manager: V1Manager, controller: str, name: str) -> str:
    with open(os.path.join(manager.mounts[controller], manager.path.lstrip("/"), name)) as f:
        return f.read().strip()


class Procs:
    """Processes a test starts; all killed and reaped at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def sleeper(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "60"])
        self.started.append(proc)
        return proc

    def python(self, code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.kill_all()


@pytest.fixture
def manager(procs: Procs) -> Iterator[V1Manager]:
    path = f"{TOP}/{uuid.uuid4().hex[:12]}"
    mgr = open_manager(path, ROOT)
    assert isinstance(mgr, V1Manager)
    yield mgr
    # Thaw first: a frozen task can't die, and a cgroup with tasks can't go.
    if mgr.exists() and mgr.mounts.get("freezer") and mgr.is_frozen():
        mgr.thaw()
    procs.kill_all()
    mgr.destroy()
    assert not mgr.exists()
    for mount in set(mgr.mounts.values()):
        # OSError: another test's cgroup is still there, or it never existed.
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(mount, TOP.lstrip("/")))


def test_host_is_detected_as_hybrid_and_gets_v1() -> None:
    assert detect_mode(ROOT) in ("hybrid", "v1")
    assert isinstance(open_manager("/x", ROOT), V1Manager)


def test_create_makes_every_hierarchy_and_fills_cpuset(manager: V1Manager) -> None:
    assert not manager.exists()
    manager.create()
    assert manager.exists()
    for mount in manager.mounts.values():
        assert os.path.isdir(os.path.join(mount, manager.path.lstrip("/")))
    with open(f"{ROOT}/cpuset/cpuset.cpus") as f:
        assert _read(manager, "cpuset", "cpuset.cpus") == f.read().strip()
    with open(f"{ROOT}/cpuset/cpuset.mems") as f:
        assert _read(manager, "cpuset", "cpuset.mems") == f.read().strip()
    manager.create()  # idempotent


def test_apply_writes_limits(manager: V1Manager) -> None:
    manager.create()
    manager.apply(
        {
            "memory": {
                "limit": 64 * MB,
                "reservation": 32 * MB,
                "swap": 128 * MB,
                "swappiness": 10,
                "kernel": 1 * MB,
            },
            "cpu": {"shares": 512, "quota": 50000, "period": 200000, "cpus": "0", "mems": "0"},
            "pids": {"limit": 20},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"},
                {"allow": True, "type": "c", "major": 136, "access": "rw"},
            ],
            "blockIO": {"weight": 500},
        }
    )
    assert _read(manager, "memory", "memory.limit_in_bytes") == str(64 * MB)
    assert _read(manager, "memory", "memory.soft_limit_in_bytes") == str(32 * MB)
    if "memory.memsw.limit_in_bytes" in os.listdir(manager.mounts["memory"]):
        assert _read(manager, "memory", "memory.memsw.limit_in_bytes") == str(128 * MB)
    assert _read(manager, "memory", "memory.swappiness") == "10"
    assert _read(manager, "cpu", "cpu.shares") == "512"
    assert _read(manager, "cpu", "cpu.cfs_quota_us") == "50000"
    assert _read(manager, "cpu", "cpu.cfs_period_us") == "200000"
    assert _read(manager, "cpuset", "cpuset.cpus") == "0"
    assert _read(manager, "cpuset", "cpuset.mems") == "0"
    assert _read(manager, "pids", "pids.max") == "20"
    assert _read(manager, "devices", "devices.list").splitlines() == [
        "c 1:3 rwm",
        "c 1:5 r",
        "c 136:* rw",
    ]


def test_apply_unlimited_and_quota_reset(manager: V1Manager) -> None:
    manager.create()
    manager.apply({"cpu": {"quota": 10000, "period": 100000}, "pids": {"limit": 5}})
    manager.apply({"cpu": {"quota": -1}, "pids": {"limit": 0}, "memory": {"limit": -1}})
    assert _read(manager, "cpu", "cpu.cfs_quota_us") == "-1"
    assert _read(manager, "pids", "pids.max") == "max"
    assert int(_read(manager, "memory", "memory.limit_in_bytes")) > 1 << 62
    manager.apply({"pids": {"limit": -1}})
    assert _read(manager, "pids", "pids.max") == "max"


def test_memory_and_swap_raise_and_lower_in_the_right_order(manager: V1Manager) -> None:
    manager.create()
    if "memory.memsw.limit_in_bytes" not in os.listdir(manager.mounts["memory"]):
        pytest.skip("no swap accounting")
    manager.apply({"memory": {"limit": 64 * MB, "swap": 128 * MB}})
    # Raising both: memsw must go first, else limit > memsw -> EINVAL.
    manager.apply({"memory": {"limit": 256 * MB, "swap": 512 * MB}})
    assert _read(manager, "memory", "memory.limit_in_bytes") == str(256 * MB)
    assert _read(manager, "memory", "memory.memsw.limit_in_bytes") == str(512 * MB)
    # Lowering both: limit must go first.
    manager.apply({"memory": {"limit": 32 * MB, "swap": 64 * MB}})
    assert _read(manager, "memory", "memory.limit_in_bytes") == str(32 * MB)
    assert _read(manager, "memory", "memory.memsw.limit_in_bytes") == str(64 * MB)
    manager.apply({"memory": {"limit": -1}})
    assert int(_read(manager, "memory", "memory.memsw.limit_in_bytes")) > 1 << 62


def test_write_error_names_file_and_value(manager: V1Manager) -> None:
    manager.create()
    with pytest.raises(RuntimeFailure) as info:
        manager.apply({"cpu": {"cpus": "9999"}})
    message = str(info.value)
    assert "cpuset.cpus" in message and "'9999'" in message and "\n" not in message


def test_unified_is_refused_on_v1(manager: V1Manager) -> None:
    manager.create()
    with pytest.raises(RuntimeFailure, match="unified"):
        manager.apply({"unified": {"memory.high": "1000"}})


def test_process_membership_freeze_thaw_and_stats(manager: V1Manager, procs: Procs) -> None:
    manager.create()
    manager.apply({"memory": {"limit": 64 * MB}, "pids": {"limit": 10}})
    first = procs.sleeper()
    manager.add_process(first.pid)
    # A nested cgroup's tasks count as the container's too.
    nested = os.path.join(manager.mounts["pids"], manager.path.lstrip("/"), "inner")
    os.mkdir(nested)
    second = procs.sleeper()
    with open(os.path.join(nested, "cgroup.procs"), "w") as f:
        f.write(str(second.pid))
    assert manager.pids() == sorted([first.pid, second.pid])
    with open(f"/proc/{first.pid}/cgroup") as f:
        assert f"memory:{manager.path}\n" in f.read()

    manager.freeze()
    assert manager.is_frozen()
    assert _read(manager, "freezer", "freezer.state") == "FROZEN"
    with open(f"/proc/{first.pid}/status") as f:
        state = next(line for line in f if line.startswith("State:"))
    assert state.split()[1] in ("D", "T", "t")
    manager.thaw()
    assert not manager.is_frozen()
    with open(f"/proc/{first.pid}/status") as f:
        state = next(line for line in f if line.startswith("State:"))
    assert state.split()[1] in ("S", "R")

    stats = manager.stats()
    assert stats["pids"] == {"current": 2, "limit": 10}
    assert stats["memory"]["limit"] == 64 * MB
    # Moved tasks keep their old charges (move_charge_at_immigrate=0): usage may be 0.
    assert stats["memory"]["usage"] >= 0
    assert stats["memory"]["max_usage"] >= stats["memory"]["usage"]
    assert isinstance(stats["cpu"]["usage_ns"], int)

    # Busy cgroups can't be removed; destroy gives up after its bounded retry.
    started = time.monotonic()
    with pytest.raises(RuntimeFailure, match="cannot remove"):
        manager.destroy()
    assert time.monotonic() - started < 5
    procs.kill_all()
    manager.destroy()
    assert not manager.exists()
    assert manager.pids() == []


FORKER = """
import os, sys
sys.stdin.readline()
ok, kids = 0, []
r, w = os.pipe()
for _ in range(10):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    ok += 1
    kids.append(pid)
os.close(w)
for pid in kids:
    os.waitpid(pid, 0)
print(ok, flush=True)
"""


def test_pids_max_is_enforced(manager: V1Manager, procs: Procs) -> None:
    manager.create()
    manager.apply({"pids": {"limit": 4}})
    proc = procs.python(FORKER)
    manager.add_process(proc.pid)
    out, _ = proc.communicate(b"go\n", timeout=30)
    # The forker itself is one of the four.
    assert int(out) == 3


def test_device_rule_strings() -> None:
    assert device_rule_string({"allow": False}) == "a *:* rwm"
    assert device_rule_string({"type": "a", "access": "rwm"}) == "a *:* rwm"
    assert device_rule_string({"type": "c", "major": 1, "minor": -1, "access": "r"}) == "c 1:* r"
    assert device_rule_string({"type": "b", "major": 8, "minor": 0}) == "b 8:0 rwm"
    with pytest.raises(RuntimeFailure):
        device_rule_string({"type": "x"})
    with pytest.raises(RuntimeFailure):
        device_rule_string({"type": "c", "access": "rwx"})
