"""config.json for real, part two: process, names, propagation, cgroups and --log."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.helpers import (
    CGROUP_ROOT,
    Runtime,
    cgroup_dirs,
    needs_root,
    rt_fixture,  # noqa: F401 - the `rt` fixture
)
from tests.runtime.test_exec import ConsoleSocket, read_until

pytestmark = needs_root

SLEEP = ["sleep", "30"]


def run_out(rt: Runtime, args: list[str], **overrides: Any) -> str:
    res = rt.run(rt.bundle(args, **overrides))
    assert res.returncode == 0, f"stdout: {res.stdout}\nstderr: {res.stderr}"
    return res.stdout


def run_sh(rt: Runtime, script: str, **overrides: Any) -> str:
    return run_out(rt, ["sh", "-c", script], **overrides)


def host_cgroups(pid: int) -> dict[str, str]:
    """controller (or "name=systemd", "" for v2) -> path, from /proc/PID/cgroup on the host."""
    found: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            found[name] = path
    return found


def v1_file(controller: str, cgroup_path: str, name: str) -> str:
    return Path(CGROUP_ROOT, controller, cgroup_path.lstrip("/"), name).read_text().strip()


needs_v1 = pytest.mark.skipif(
    not os.path.isdir(f"{CGROUP_ROOT}/memory") or not os.path.isdir(f"{CGROUP_ROOT}/cpu"),
    reason="needs cgroup v1 memory and cpu controllers",
)


# ---------------------------------------------------------------- names


def test_hostname_and_domainname(rt: Runtime) -> None:
    host = Path("/proc/sys/kernel/domainname").read_text()
    out = run_sh(
        rt,
        "hostname; cat /proc/sys/kernel/hostname /proc/sys/kernel/domainname",
        hostname="cfg-box",
        domainname="example.test",
    )
    assert out.split() == ["cfg-box", "cfg-box", "example.test"]
    assert Path("/proc/sys/kernel/domainname").read_text() == host


# ---------------------------------------------------------------- process


def test_oom_score_adj(rt: Runtime) -> None:
    out = run_out(rt, ["cat", "/proc/self/oom_score_adj"], process={"oomScoreAdj": 500})
    assert out.strip() == "500"


def test_oom_score_adj_of_running_init(rt: Runtime) -> None:
    # A positive value: lowering it needs CAP_SYS_RESOURCE, which a test host may lack.
    cid = rt.run_detached(rt.bundle(SLEEP, process={"oomScoreAdj": 250}))
    pid = rt.state(cid)["pid"]
    assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "250"


def test_umask(rt: Runtime) -> None:
    user = {"uid": 0, "gid": 0, "umask": 0o077}
    out = run_sh(
        rt,
        "umask; echo x > /dev/shm/f; mkdir /dev/shm/d; stat -c %a /dev/shm/f /dev/shm/d",
        process={"user": user},
    )
    assert out.split() == ["0077", "600", "700"]


def test_rlimit_nofile(rt: Runtime) -> None:
    rlimits = [{"type": "RLIMIT_NOFILE", "soft": 1000, "hard": 2000}]
    out = run_sh(rt, "ulimit -n; ulimit -Hn", process={"rlimits": rlimits})
    assert out.split() == ["1000", "2000"]


def test_rlimit_several(rt: Runtime) -> None:
    rlimits = [
        {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 512},
        {"type": "RLIMIT_NPROC", "soft": 300, "hard": 400},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]
    out = run_sh(rt, "cat /proc/self/limits", process={"rlimits": rlimits})
    rows = {line[:26].strip(): line[26:].split()[:2] for line in out.splitlines()[1:]}
    assert rows["Max open files"] == ["512", "512"], out
    assert rows["Max processes"] == ["300", "400"], out
    assert rows["Max core file size"] == ["0", "0"], out


def test_user_and_additional_gids(rt: Runtime) -> None:
    user = {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}
    out = run_sh(rt, "id -u; id -g; id -G; grep Groups /proc/self/status", process={"user": user})
    lines = out.splitlines()
    assert lines[0] == "1000" and lines[1] == "1000", out
    assert {"10", "20", "1000"} <= set(lines[2].split()), out
    assert set(lines[3].split()[1:]) == {"10", "20"}, out


def test_env_passed_exactly(rt: Runtime) -> None:
    env = ["PATH=/bin:/usr/bin", "FOO=bar baz", "EMPTY=", "EQ=a=b", "HOME=/nowhere"]
    out = run_out(rt, ["env"], process={"env": env})
    assert sorted(out.splitlines()) == sorted(env)


def test_env_gets_home(rt: Runtime) -> None:
    out = run_out(rt, ["env"], process={"env": ["PATH=/bin:/usr/bin", "A=1"]})
    assert sorted(out.splitlines()) == ["A=1", "HOME=/root", "PATH=/bin:/usr/bin"]


def test_cwd_created_if_missing(rt: Runtime) -> None:
    bundle = rt.bundle(["pwd"], process={"cwd": "/work/here"})
    assert not (bundle / "rootfs" / "work").exists()
    res = rt.run(bundle)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "/work/here\n"


def test_console_size(rt: Runtime) -> None:
    console = ConsoleSocket(rt.tmp_path / "console.sock")
    try:
        bundle = rt.bundle(
            ["sh", "-c", "stty size; echo end"],
            process={"terminal": True, "consoleSize": {"height": 40, "width": 100}},
        )
        cid = rt.create(bundle, None, "--console-socket", str(console.path))
        master, _name = console.receive_master()
    finally:
        console.close()
    try:
        rt("start", cid).check()
        out = read_until(master, b"end\r\n")
    finally:
        os.close(master)
    assert out.decode().split("\r\n")[:2] == ["40 100", "end"], out


# ---------------------------------------------------------------- root file system


@pytest.mark.parametrize("propagation", ["private", "rslave", "rprivate", "slave"])
def test_rootfs_propagation(rt: Runtime, propagation: str) -> None:
    out = run_sh(
        rt,
        "grep -c . /proc/self/mountinfo; echo ok",
        linux={"rootfsPropagation": propagation},
    )
    assert out.split()[-1] == "ok"


def test_rootfs_propagation_private_root_not_shared(rt: Runtime) -> None:
    out = run_sh(rt, "cat /proc/self/mountinfo", linux={"rootfsPropagation": "private"})
    root = [line for line in out.splitlines() if line.split()[4] == "/"]
    assert len(root) == 1, out
    assert "shared:" not in root[0] and "master:" not in root[0], root


def test_no_pivot(rt: Runtime) -> None:
    bundle = rt.bundle(["sh", "-c", "cat /marker; stat -c %i /; ls /proc/1/root/marker"])
    (bundle / "rootfs" / "marker").write_text("in the rootfs\n")
    inode = os.stat(bundle / "rootfs").st_ino
    cid = rt.new_id()
    created = rt("create", "--no-pivot", "--bundle", str(bundle), cid).check()
    rt.track_pid(rt.state(cid)["pid"])
    rt("start", cid).check()
    rt.wait_status(cid, "stopped")
    lines = created.stdout.splitlines()
    assert lines == ["in the rootfs", str(inode), "/proc/1/root/marker"], created.stderr
    assert not Path("/marker").exists()


def test_no_pivot_run(rt: Runtime) -> None:
    bundle = rt.bundle(["sh", "-c", "ls /; echo done"])
    res = rt.run(bundle, "--no-pivot")
    assert res.returncode == 0, res.stderr
    names = res.stdout.split()
    assert names[-1] == "done" and "bin" in names and "proc" in names, res.stdout
    assert "work" not in names  # the host's /work is not the container's /


# ---------------------------------------------------------------- cgroupsPath


@pytest.fixture
def test_parent() -> Iterator[str]:
    """/dockyard-test: tidied after the test if empty (other tests share it)."""
    yield "/dockyard-test"
    for d in cgroup_dirs("/dockyard-test"):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def test_cgroups_path_absolute(rt: Runtime, test_parent: str) -> None:
    path = f"{test_parent}/cfg-{uuid.uuid4().hex[:10]}"
    cid = rt.run_detached(rt.bundle(SLEEP, linux={"cgroupsPath": path}))
    pid = rt.state(cid)["pid"]
    groups = host_cgroups(pid)
    placed = [c for c, p in groups.items() if p == path]
    assert placed, groups
    for controller in ("memory", "pids", "cpu", "devices"):
        if os.path.isdir(f"{CGROUP_ROOT}/{controller}"):
            assert groups.get(controller) == path, groups
    assert cgroup_dirs(path)
    rt("delete", "--force", cid, timeout=20).check()
    assert cgroup_dirs(path) == []
    assert not cgroup_dirs(f"/dockyard/{cid}")


@pytest.fixture
def system_slice() -> Iterator[None]:
    """Remove the /system.slice directories this test made (the runtime leaves parents)."""
    before = set(cgroup_dirs("/system.slice"))
    yield
    for d in set(cgroup_dirs("/system.slice")) - before:
        with contextlib.suppress(OSError):
            os.rmdir(d)


@pytest.mark.usefixtures("system_slice")
def test_cgroups_path_systemd(rt: Runtime) -> None:
    unique = uuid.uuid4().hex[:10]
    expected = f"/system.slice/dyk-{unique}.scope"
    bundle = rt.bundle(SLEEP, linux={"cgroupsPath": f"system.slice:dyk:{unique}"})
    cid = rt.new_id()
    rt("--systemd-cgroup", "run", "-d", "--bundle", str(bundle), cid).check()
    pid = rt.state(cid)["pid"]
    rt.track_pid(pid)
    groups = host_cgroups(pid)
    assert expected in groups.values(), groups
    if os.path.isdir(f"{CGROUP_ROOT}/memory"):
        assert groups.get("memory") == expected, groups
    assert cgroup_dirs(expected)
    rt("--systemd-cgroup", "delete", "--force", cid, timeout=20).check()
    assert cgroup_dirs(expected) == []


# ---------------------------------------------------------------- resources


@needs_v1
def test_resources_applied(rt: Runtime) -> None:
    resources = {
        "memory": {"reservation": 48 << 20},
        "cpu": {"shares": 512},
        "pids": {"limit": 77},
    }
    cid = rt.run_detached(rt.bundle(SLEEP, linux={"resources": resources}))
    saved = rt.saved_state(cid)
    assert saved is not None
    path = saved.get("cgroup_path") or f"/dockyard/{cid}"
    assert host_cgroups(rt.state(cid)["pid"]).get("memory") == path
    assert v1_file("memory", path, "memory.soft_limit_in_bytes") == str(48 << 20)
    assert v1_file("cpu", path, "cpu.shares") == "512"
    assert v1_file("pids", path, "pids.max") == "77"


def test_pids_limit_enforced(rt: Runtime) -> None:
    script = "for i in 1 2 3 4 5 6; do sleep 0.5 & done; wait; echo done"
    res = rt.run(rt.bundle(["sh", "-c", script], linux={"resources": {"pids": {"limit": 3}}}))
    assert res.returncode != 0 and "done" not in res.stdout, res.stdout
    assert "can't fork" in res.stderr, res.stderr
    # The same script fits under a higher limit.
    assert run_sh(rt, script, linux={"resources": {"pids": {"limit": 10}}}) == "done\n"


# ---------------------------------------------------------------- --log


def test_log_json_on_failure(rt: Runtime) -> None:
    log = rt.tmp_path / "runtime.log"
    res = rt("--log", str(log), "--log-format", "json", "state", "no-such-dyk")
    assert res.returncode != 0
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["level"] == "error"
    assert "no-such-dyk" in entry["msg"], entry
    assert entry["msg"] in res.stderr
    assert "time" in entry


def test_log_json_failed_create(rt: Runtime) -> None:
    log = rt.tmp_path / "runtime.log"
    bundle = rt.bundle(["/no/such/binary"])
    cid = rt.new_id()
    res = rt("--log", str(log), "--log-format", "json", "run", "--bundle", str(bundle), cid)
    assert res.returncode != 0
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error"
    assert "/no/such/binary" in entry["msg"], entry


def test_log_text_on_failure(rt: Runtime) -> None:
    log = rt.tmp_path / "runtime.log"
    res = rt("--log", str(log), "--log-format", "text", "kill", "no-such-dyk", "KILL")
    assert res.returncode != 0
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    assert "level=error" in lines[0], lines
    assert 'msg="' in lines[0] and "no-such-dyk" in lines[0], lines
    with pytest.raises(ValueError):
        json.loads(lines[0])


def test_log_appends(rt: Runtime) -> None:
    log = rt.tmp_path / "runtime.log"
    log.write_text('{"level": "info", "msg": "before"}\n')
    rt("--log", str(log), "--log-format", "json", "state", "a-dyk")
    rt("--log", str(log), "--log-format", "json", "state", "b-dyk")
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    assert "a-dyk" in json.loads(lines[1])["msg"] and "b-dyk" in json.loads(lines[2])["msg"]
