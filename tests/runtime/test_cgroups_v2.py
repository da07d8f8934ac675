"""cgroup v2 against a fake cgroupfs tree, path parsing, mode detection and the BPF device filter.

The last test attaches a real device filter on this host's (otherwise empty) unified
hierarchy when it is available.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.runtime.cgroups import base, detect_mode, open_manager, parse_cgroups_path
from dockyard.runtime.cgroups import devices_bpf as bpf
from dockyard.runtime.cgroups import v2 as v2mod
from dockyard.runtime.cgroups.v2 import V2Manager, cpu_weight_from_shares, swap_max
from dockyard.runtime.errors import RuntimeFailure

MB = 1024 * 1024

# --- cgroupsPath ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "systemd", "want"),
    [
        (None, False, "/dockyard/abc"),
        ("", False, "/dockyard/abc"),
        ("/a/b", False, "/a/b"),
        ("a/b", False, "/a/b"),
        ("/a/../../b/", False, "/b"),
        ("machine.slice:libpod:abc", False, "/machine.slice/libpod-abc.scope"),
        ("machine.slice:libpod:abc", True, "/machine.slice/libpod-abc.scope"),
        ("a-b-c.slice:p:n", False, "/a.slice/a-b.slice/a-b-c.slice/p-n.scope"),
        ("-.slice:p:n", False, "/p-n.scope"),
        (":p:n", False, "/system.slice/p-n.scope"),
        ("user.slice:p:sub.slice", False, "/user.slice/sub.slice"),
        (None, True, "/system.slice/dockyard-abc.scope"),
    ],
)
def test_parse_cgroups_path(given: str | None, systemd: bool, want: str) -> None:
    assert parse_cgroups_path(given, "abc", systemd=systemd) == want


@pytest.mark.parametrize("bad", ["a--b.slice:p:n", "noslice:p:n", "a/b.slice:p:n", ".slice:p:n"])
def test_parse_cgroups_path_rejects_bad_slices(bad: str) -> None:
    with pytest.raises(RuntimeFailure):
        parse_cgroups_path(bad, "abc")


def test_parse_cgroups_path_systemd_needs_three_parts() -> None:
    with pytest.raises(RuntimeFailure):
        parse_cgroups_path("/a/b", "abc", systemd=True)


# --- mode detection ------------------------------------------------------------------

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = "31 23 0:28 / /sys/fs/cgroup rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"


def test_detect_mode_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(HYBRID)
    assert detect_mode("/sys/fs/cgroup", str(info)) == "hybrid"
    assert detect_mode("/sys/fs/cgroup/unified", str(info)) == "v2"
    assert detect_mode("/sys/fs/cgroup/", str(info)) == "hybrid"
    info.write_text("\n".join(HYBRID.splitlines()[:-1]) + "\n")
    assert detect_mode("/sys/fs/cgroup", str(info)) == "v1"
    info.write_text(UNIFIED)
    assert detect_mode("/sys/fs/cgroup", str(info)) == "v2"


def test_v1_discovery_handles_comounted_controllers(tmp_path: Path) -> None:
    from dockyard.runtime.cgroups.v1 import discover

    info = tmp_path / "mountinfo"
    info.write_text(HYBRID)
    assert discover("/sys/fs/cgroup", str(info)) == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "memory": "/sys/fs/cgroup/memory",
        "name=systemd": "/sys/fs/cgroup/systemd",
    }


# --- the fake tree -------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "cgroup"
    top.mkdir()
    (top / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (top / "cgroup.subtree_control").write_text("")
    (top / "cgroup.procs").write_text("1\n")
    return top


def files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir()) if p.is_file()}


def test_open_manager_picks_v2_for_a_unified_tree(root: Path) -> None:
    assert detect_mode(str(root)) == "v2"
    mgr = open_manager("/dockyard/c1", str(root))
    assert isinstance(mgr, V2Manager)
    assert mgr.path == "/dockyard/c1"
    assert mgr.dir == str(root / "dockyard" / "c1")


def test_create_enables_controllers_top_down(root: Path) -> None:
    mgr = V2Manager("/dockyard/c1", str(root))
    assert not mgr.exists()
    mgr.create()
    assert mgr.exists()
    want = "+cpu +cpuset +io +memory +pids +hugetlb"
    assert (root / "cgroup.subtree_control").read_text() == want
    assert (root / "dockyard" / "cgroup.subtree_control").read_text() == want
    assert files(root / "dockyard" / "c1") == {}
    # Already enabled: nothing is written again.
    (root / "cgroup.subtree_control").write_text("cpu memory")
    (root / "dockyard" / "cgroup.controllers").write_text("cpu memory")
    (root / "dockyard" / "cgroup.subtree_control").write_text("memory")
    mgr.create()
    assert (root / "cgroup.subtree_control").read_text() == "+cpuset +io +pids +hugetlb"
    assert (root / "dockyard" / "cgroup.subtree_control").read_text() == "+cpu"


def test_apply_writes_runc_conversions(root: Path) -> None:
    mgr = V2Manager("/dockyard/c1", str(root))
    mgr.create()
    recorded: list[tuple[str, list[dict[str, object]]]] = []
    mgr.device_loader = lambda d, rules: recorded.append((d, rules))
    devices: list[dict[str, object]] = [{"allow": False, "access": "rwm"}]
    mgr.apply(
        {
            "memory": {
                "limit": 64 * MB,
                "reservation": 32 * MB,
                "swap": 128 * MB,
                "kernel": 1,
                "swappiness": 5,
                "disableOOMKiller": True,
            },
            "cpu": {
                "shares": 1024,
                "quota": 50000,
                "period": 100000,
                "realtimeRuntime": 5,
                "cpus": "0-1",
                "mems": "0",
                "idle": 1,
            },
            "pids": {"limit": 100},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
            "blockIO": {"weight": 500},
            "devices": devices,
            "unified": {"memory.high": "50000000", "io.max": "8:0 rbps=1024"},
        }
    )
    assert files(root / "dockyard" / "c1") == {
        "memory.max": str(64 * MB),
        "memory.low": str(32 * MB),
        "memory.swap.max": str(64 * MB),
        "cpu.weight": "39",
        "cpu.max": "50000 100000",
        "cpu.idle": "1",
        "cpuset.cpus": "0-1",
        "cpuset.mems": "0",
        "pids.max": "100",
        "memory.high": "50000000",
        "io.max": "8:0 rbps=1024",
    }
    assert recorded == [(mgr.dir, devices)]


def test_apply_unlimited_values(root: Path) -> None:
    mgr = V2Manager("/c2", str(root))
    mgr.create()
    mgr.apply({"memory": {"limit": -1}, "cpu": {"quota": -1}, "pids": {"limit": 0}})
    assert files(root / "c2") == {
        "memory.max": "max",
        "memory.swap.max": "max",
        "cpu.max": "max 100000",
        "pids.max": "max",
    }
    mgr.apply({"memory": {"limit": 10 * MB, "swap": -1}, "cpu": {"period": 250000}})
    assert (root / "c2" / "memory.swap.max").read_text() == "max"
    assert (root / "c2" / "memory.max").read_text() == str(10 * MB)
    assert (root / "c2" / "cpu.max").read_text() == "max 250000"
    mgr.apply({"pids": {"limit": -1}, "blockIO": {"weight": 100}})
    assert (root / "c2" / "pids.max").read_text() == "max"
    assert not (root / "c2" / "io.weight").exists()  # best effort: absent stays absent
    (root / "c2" / "io.weight").write_text("default 100")
    mgr.apply({"blockIO": {"weight": 1000}})
    assert (root / "c2" / "io.weight").read_text() == "default 10000"


def test_conversions() -> None:
    assert cpu_weight_from_shares(0) == 0
    assert cpu_weight_from_shares(2) == 1
    assert cpu_weight_from_shares(1024) == 39
    assert cpu_weight_from_shares(262144) == 10000
    assert swap_max(0, 0) == 0
    assert swap_max(0, -1) == -1
    assert swap_max(-1, 100) == -1
    assert swap_max(300, 100) == 200
    assert swap_max(100, 100) == 0
    with pytest.raises(RuntimeFailure):
        swap_max(50, 100)
    with pytest.raises(RuntimeFailure):
        swap_max(50, 0)


def test_write_error_names_file_and_value(root: Path) -> None:
    mgr = V2Manager("/c3", str(root))
    mgr.create()
    (root / "c3" / "memory.max").mkdir()  # a write there fails like a refused value would
    with pytest.raises(RuntimeFailure) as info:
        mgr.apply({"memory": {"limit": 1234}})
    message = str(info.value)
    assert "memory.max" in message and "'1234'" in message and "\n" not in message
    with pytest.raises(RuntimeFailure, match="unified key"):
        mgr.apply({"unified": {"../escape": "1"}})


def test_add_process_pids_and_stats(root: Path) -> None:
    mgr = V2Manager("/dockyard/c4", str(root))
    mgr.create()
    mgr.add_process(4242)
    assert (root / "dockyard" / "c4" / "cgroup.procs").read_text() == "4242"
    (root / "dockyard" / "c4" / "sub").mkdir()
    (root / "dockyard" / "c4" / "sub" / "cgroup.procs").write_text("77\n4243\n")
    assert mgr.pids() == [77, 4242, 4243]
    leaf = root / "dockyard" / "c4"
    (leaf / "memory.current").write_text("1000\n")
    (leaf / "memory.max").write_text("max\n")
    (leaf / "memory.peak").write_text("2000\n")
    (leaf / "pids.current").write_text("3\n")
    (leaf / "pids.max").write_text("50\n")
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (leaf / "memory.stat").write_text("anon 500\ninactive_file 100\n")
    (leaf / "io.stat").write_text("8:0 rbytes=10 wbytes=20 rios=1\n8:16 rbytes=5 wbytes=0\n")
    assert mgr.stats() == {
        "memory": {"usage": 1000, "limit": 0, "max_usage": 2000, "inactive_file": 100},
        "pids": {"current": 3, "limit": 50},
        "cpu": {"usage_ns": 1500000},
        "blkio": {"read": 15, "write": 20},
    }


def test_freeze_and_thaw(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = V2Manager("/c5", str(root))
    mgr.create()
    leaf = root / "c5"
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    mgr.freeze()
    assert (leaf / "cgroup.freeze").read_text() == "1"
    assert mgr.is_frozen()
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    mgr.thaw()
    assert (leaf / "cgroup.freeze").read_text() == "0"
    assert not mgr.is_frozen()
    # The kernel never reports frozen: give up (bounded) and thaw again.
    monkeypatch.setattr(v2mod, "_FREEZE_TIMEOUT", 0.05)
    with pytest.raises(RuntimeFailure, match="did not freeze"):
        mgr.freeze()
    assert (leaf / "cgroup.freeze").read_text() == "0"


def test_destroy_removes_deepest_first(root: Path) -> None:
    mgr = V2Manager("/dockyard/c6", str(root))
    mgr.create()
    mgr.apply({"pids": {"limit": 5}})
    (root / "dockyard" / "c6" / "a" / "b").mkdir(parents=True)
    mgr.destroy()
    assert not mgr.exists()
    assert (root / "dockyard").is_dir()
    mgr.destroy()  # ENOENT is fine


def test_busy_rmdir_is_retried_then_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []

    def busy(path: str) -> None:
        calls.append(path)
        raise OSError(16, "Device or resource busy")

    (tmp_path / "cg").mkdir()
    monkeypatch.setattr(base.os, "rmdir", busy)
    with pytest.raises(RuntimeFailure, match="still in use"):
        base.remove_tree(str(tmp_path / "cg"), timeout=0.05)
    assert len(calls) > 1


# --- the BPF device filter -----------------------------------------------------------

ALL = bpf.BPF_DEVCG_ACC_READ | bpf.BPF_DEVCG_ACC_WRITE | bpf.BPF_DEVCG_ACC_MKNOD


def run(insns: list[bpf.Insn], kind: str, major: int, minor: int, access: str) -> int:
    """A small interpreter for the opcodes the generator uses: the semantics under test."""
    dev = bpf.BPF_DEVCG_DEV_CHAR if kind == "c" else bpf.BPF_DEVCG_DEV_BLOCK
    acc = sum({"r": 2, "w": 4, "m": 1}[c] for c in access)
    ctx = [(acc << 16) | dev, major, minor]
    reg = [0] * 11
    pc = 0
    for _ in range(1000):
        code, dst, src, off, imm = insns[pc]
        pc += 1
        if code == bpf.LDX_MEM_W:
            assert src == bpf.R1 and off % 4 == 0
            reg[dst] = ctx[off // 4]
        elif code == bpf.ALU32_AND_K:
            reg[dst] = (reg[dst] & imm) & 0xFFFFFFFF
        elif code == bpf.ALU32_RSH_K:
            reg[dst] = (reg[dst] & 0xFFFFFFFF) >> imm
        elif code == bpf.ALU32_MOV_K:
            reg[dst] = imm & 0xFFFFFFFF
        elif code == bpf.ALU32_MOV_X:
            reg[dst] = reg[src] & 0xFFFFFFFF
        elif code == bpf.JMP_JNE_K:
            pc += off if reg[dst] != imm else 0
        elif code == bpf.JMP_JNE_X:
            pc += off if reg[dst] != reg[src] else 0
        elif code == bpf.JMP_JEQ_K:
            pc += off if reg[dst] == imm else 0
        elif code == bpf.JMP_EXIT:
            return reg[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program did not exit")


def test_program_prologue_and_encoding() -> None:
    insns = bpf.build_program([])
    code = bpf.encode(insns)
    assert len(code) == 8 * len(insns)
    # ldxw r2,[r1+0]; and32 r2,0xffff; ldxw r3,[r1+0]; rsh32 r3,16; ldxw r4,[r1+4]; ldxw r5,[r1+8]
    assert code[:48] == bytes.fromhex(
        "6112000000000000"
        "54020000ffff0000"
        "6113000000000000"
        "7403000010000000"
        "6114040000000000"
        "6115080000000000"
    )
    # No rules: allow all (mov32 r0, 1; exit).
    assert code[48:] == bytes.fromhex("b4000000010000009500000000000000")


DOCKER_DEFAULTS: list[dict[str, object]] = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # /dev/null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # /dev/zero
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # pts
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rw"},  # console
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": False, "type": "c", "major": 1, "minor": 5, "access": "w"},
]


@pytest.mark.parametrize(
    ("kind", "major", "minor", "access", "allowed"),
    [
        ("c", 1, 3, "rw", 1),
        ("c", 1, 3, "rwm", 1),
        ("c", 1, 5, "r", 1),
        ("c", 1, 5, "rw", 0),  # the later deny of "w" wins
        ("c", 1, 5, "w", 0),
        ("c", 136, 7, "rw", 1),
        ("c", 5, 1, "rw", 1),
        ("c", 5, 1, "m", 1),  # mknod for any char device is allowed
        ("c", 5, 1, "rwm", 0),  # as in v1, one rule must grant every requested bit
        ("c", 5, 1, "r", 1),
        ("b", 8, 0, "r", 0),
        ("b", 8, 0, "m", 1),
        ("c", 10, 200, "rw", 0),
        ("c", 1, 7, "r", 0),
    ],
)
def test_program_semantics(kind: str, major: int, minor: int, access: str, allowed: int) -> None:
    assert run(bpf.build_program(DOCKER_DEFAULTS), kind, major, minor, access) == allowed


def test_program_default_allow_and_resets() -> None:
    deny_null = [{"allow": False, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]
    prog = bpf.build_program(deny_null)
    assert run(prog, "c", 1, 3, "r") == 0
    assert run(prog, "c", 1, 5, "r") == 1
    assert run(prog, "b", 1, 3, "r") == 1
    # A later "a" allow wipes everything before it.
    prog = bpf.build_program([*deny_null, {"allow": True}])
    assert run(prog, "c", 1, 3, "r") == 1
    assert len(prog) == 8


def test_program_rejects_bad_rules() -> None:
    bad_rules: list[dict[str, object]] = [
        {"type": "x"},
        {"type": "c", "access": "z"},
        {"type": "c", "major": "1"},
    ]
    for bad in bad_rules:
        with pytest.raises(RuntimeFailure):
            bpf.build_program([bad])


UNIFIED_ROOT = "/sys/fs/cgroup/unified"

OPENER = """
import sys
sys.stdin.readline()
for name in ("/dev/null", "/dev/zero"):
    try:
        open(name, "rb").close()
        print(name, "ok")
    except PermissionError:
        print(name, "EPERM")
"""


@pytest.fixture
def real_v2() -> Iterator[V2Manager]:
    if os.geteuid() != 0 or detect_mode(UNIFIED_ROOT) != "v2":
        pytest.skip("needs root and a cgroup2 mount at /sys/fs/cgroup/unified")
    parent = f"/dockyard-test-{uuid.uuid4().hex[:12]}"
    mgr = open_manager(f"{parent}/c", UNIFIED_ROOT)
    assert isinstance(mgr, V2Manager)
    control = os.path.join(UNIFIED_ROOT, "cgroup.subtree_control")
    with open(control) as f:
        before = set(f.read().split())
    yield mgr
    mgr.destroy()
    base.remove_tree(UNIFIED_ROOT + parent)
    # create() enabled controllers on the host's unified root: put it back as found.
    with open(control) as f:
        added = set(f.read().split()) - before
    for controller in added:
        with contextlib.suppress(OSError), open(control, "w") as f:
            f.write("-" + controller)


def test_real_device_filter_denies_open(real_v2: V2Manager) -> None:
    real_v2.create()
    real_v2.apply({"devices": [{"allow": False, "type": "c", "major": 1, "minor": 3}]})
    proc = subprocess.Popen(
        [sys.executable, "-c", OPENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        real_v2.add_process(proc.pid)
        assert real_v2.pids() == [proc.pid]
        out, _ = proc.communicate(b"go\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert out.decode().split("\n")[:2] == ["/dev/null EPERM", "/dev/zero ok"]
    # Re-applying replaces the program instead of stacking a second one.
    real_v2.apply({"devices": [{"allow": False, "type": "c", "major": 1, "minor": 5}]})
    fd = os.open(real_v2.dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(bpf.attached_programs(fd)) == 1
    finally:
        os.close(fd)


def test_real_v2_freeze(real_v2: V2Manager) -> None:
    real_v2.create()
    proc = subprocess.Popen(["sleep", "60"])
    try:
        real_v2.add_process(proc.pid)
        real_v2.freeze()
        assert real_v2.is_frozen()
        real_v2.thaw()
        assert not real_v2.is_frozen()
    finally:
        proc.kill()
        proc.wait()
