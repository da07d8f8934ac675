"""Namespaces for real: pid, uts, net, mount, ipc, joining a namespace by path, userns."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.helpers import (
    Runtime,
    needs_root,
    rt_fixture,  # noqa: F401 - the `rt` fixture
)

pytestmark = needs_root

SLEEP = ["sleep", "30"]


def ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def run_sh(rt: Runtime, script: str, **overrides: Any) -> str:
    res = rt.run(rt.bundle(["sh", "-c", script], **overrides))
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_pid_namespace_pid_1(rt: Runtime) -> None:
    out = run_sh(rt, "echo $$; sleep 5 & sleep 0.2; ps -o pid,comm; kill $!")
    lines = out.splitlines()
    assert lines[0] == "1"
    rows = [line.split() for line in lines[2:]]
    # sh (1), the background sleep and ps itself: nothing of the host.
    assert sorted(r[1] for r in rows) == ["ps", "sh", "sleep"], out
    assert sorted(int(r[0]) for r in rows)[0] == 1
    assert all(int(r[0]) < 10 for r in rows), out


def test_own_hostname(rt: Runtime) -> None:
    host = os.uname().nodename
    out = run_sh(rt, "hostname; cat /proc/sys/kernel/hostname", hostname="box-1")
    assert out.split() == ["box-1", "box-1"]
    assert os.uname().nodename == host


def test_uts_namespace_differs(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(SLEEP))
    pid = rt.state(cid)["pid"]
    for kind in ("uts", "ipc", "net", "mnt", "pid", "cgroup"):
        assert ns_inode(pid, kind) != ns_inode("self", kind), kind


def test_only_loopback(rt: Runtime) -> None:
    out = run_sh(rt, "cat /proc/net/dev")
    names = [line.split(":")[0].strip() for line in out.splitlines()[2:]]
    assert names == ["lo"]


def test_loopback_is_up(rt: Runtime) -> None:
    out = run_sh(rt, "ip link show lo")
    assert "UP" in out.split(">")[0], out


def test_own_mount_table(rt: Runtime) -> None:
    out = run_sh(rt, "cat /proc/self/mountinfo")
    host = Path("/proc/self/mountinfo").read_text()
    assert out != host
    points = [line.split()[4] for line in out.splitlines()]
    assert "/" in points and "/proc" in points and "/dev" in points
    # Nothing of the host's paths: no bundle, no tmp_path, no host cgroup tree.
    assert str(rt.tmp_path) not in "\n".join(points)
    assert not any(p.startswith("/work") for p in points), points


def test_mounts_invisible_on_host(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(SLEEP))
    assert rt.state(cid)["status"] == "running"
    host = Path("/proc/self/mountinfo").read_text()
    assert str(rt.tmp_path) not in host


def test_ipc_namespace_empty(rt: Runtime) -> None:
    created = subprocess.run(
        ["ipcmk", "-M", "4096"], capture_output=True, text=True, timeout=5, check=False
    )
    shm_id = created.stdout.split()[-1] if created.returncode == 0 else ""
    try:
        out = run_sh(rt, "cat /proc/sysvipc/shm")
        # Only the header line of /proc/sysvipc/shm: the host's segment is not there.
        assert len(out.splitlines()) == 1, out
        if shm_id:
            host = Path("/proc/sysvipc/shm").read_text().splitlines()
            assert len(host) > 1
    finally:
        if shm_id:
            subprocess.run(["ipcrm", "-m", shm_id], timeout=5, check=False)


def test_ns_inodes_differ_from_host(rt: Runtime) -> None:
    out = run_sh(rt, "for n in ipc uts net mnt pid; do readlink /proc/self/ns/$n; done")
    inside = out.split()
    for kind, link in zip(("ipc", "uts", "net", "mnt", "pid"), inside, strict=True):
        assert link != os.readlink(f"/proc/self/ns/{kind}"), kind


def test_no_network_namespace_shares_host(rt: Runtime) -> None:
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    out = run_sh(rt, "readlink /proc/self/ns/net", linux={"namespaces": namespaces})
    assert out.strip() == os.readlink("/proc/self/ns/net")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"dyt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "dyt0", "type", "veth", "peer", "name", "dyt1"],
            check=True,
            timeout=10,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def test_join_network_namespace_by_path(rt: Runtime, netns: str) -> None:
    path = f"/run/netns/{netns}"
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    namespaces.append({"type": "network", "path": path})
    out = run_sh(
        rt,
        "cat /proc/net/dev; readlink /proc/self/ns/net",
        linux={"namespaces": namespaces},
    )
    assert "dyt0:" in out
    assert out.split()[-1] == f"net:[{os.stat(path).st_ino}]"


def test_join_missing_namespace_path_fails(rt: Runtime) -> None:
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    namespaces.append({"type": "network", "path": "/run/netns/does-not-exist-dyt"})
    res = rt.run(rt.bundle(SLEEP, linux={"namespaces": namespaces}))
    assert res.returncode != 0
    assert "does-not-exist-dyt" in res.stderr
    assert "Traceback" not in res.stderr


def test_exec_sees_same_hostname(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(SLEEP, hostname="h2"))
    res = rt.sh(cid, "hostname")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "h2"


# ---------------------------------------------------------------- user namespace

HOST_ID = 100000
USERNS: dict[str, Any] = {
    "root": {"readonly": False},
    "linux": {
        "namespaces": [
            {"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup", "user")
        ],
        "uidMappings": [{"containerID": 0, "hostID": HOST_ID, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": HOST_ID, "size": 65536}],
    },
}


def userns_bundle(rt: Runtime, args: list[str]) -> Path:
    bundle = rt.bundle(args, **USERNS)
    # The mapped root must be able to reach the bundle: pytest's base temp dir is 0700.
    for parent in [bundle, *bundle.parents]:
        if parent == Path("/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode & 0o7777 | 0o011)
    rootfs = bundle / "rootfs"
    for path in [rootfs, *rootfs.rglob("*")]:
        os.lchown(path, HOST_ID, HOST_ID)
    return bundle


def test_user_namespace_mapping(rt: Runtime) -> None:
    script = "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; touch /tmp/made-inside"
    bundle = userns_bundle(rt, ["sh", "-c", script])
    res = rt.run(bundle)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["0", str(HOST_ID), "65536"]
    assert lines[1].split() == ["0", str(HOST_ID), "65536"]
    assert lines[2:4] == ["0", "0"]
    st = os.stat(bundle / "rootfs" / "tmp" / "made-inside")
    assert (st.st_uid, st.st_gid) == (HOST_ID, HOST_ID)


def test_user_namespace_root_is_unprivileged_on_host(rt: Runtime) -> None:
    bundle = userns_bundle(rt, SLEEP)
    cid = rt.run_detached(bundle)
    pid = rt.state(cid)["pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [str(HOST_ID)] * 4
    assert ns_inode(pid, "user") != ns_inode("self", "user")
