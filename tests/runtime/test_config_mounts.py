"""config.json for real, part one: mounts, symlinked mount points, sysctl and devices."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.oci.runtime_spec import default_spec
from tests.runtime.helpers import (
    Runtime,
    needs_root,
    rt_fixture,  # noqa: F401 - the `rt` fixture
)

pytestmark = needs_root

SLEEP = ["sleep", "30"]


def with_mounts(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    """The default mounts plus `extra` (a `mounts` override replaces the whole list)."""
    mounts: list[dict[str, Any]] = default_spec()["mounts"]
    return [*mounts, *extra]


def run_sh(rt: Runtime, script: str, bundle: Path | None = None, **overrides: Any) -> str:
    """Run `sh -c script` in the foreground; its stdout (a failure shows both streams)."""
    if bundle is None:
        bundle = rt.bundle(["sh", "-c", script], **overrides)
    res = rt.run(bundle)
    assert res.returncode == 0, f"stdout: {res.stdout}\nstderr: {res.stderr}"
    return res.stdout


def mountinfo_points(out: str) -> dict[str, str]:
    """Mount point -> fstype from a `cat /proc/self/mountinfo` inside the container."""
    points: dict[str, str] = {}
    for line in out.splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        if len(fields) > 4 and post:
            points[fields[4]] = post.split()[0]
    return points


# ---------------------------------------------------------------- symlinked mount points


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory on the host, outside any test's tmp_path, that must stay empty."""
    path = Path(tempfile.mkdtemp(prefix="dyk-evil-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_mount_point_symlinks_stay_in_rootfs(rt: Runtime, host_dir: Path) -> None:
    rel_host = str(host_dir).lstrip("/")  # e.g. tmp/dyk-evil-abc123
    mounts = with_mounts(
        {"destination": "/evil/sub", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
        {"destination": "/evil2/sub", "type": "tmpfs", "source": "tmpfs", "options": ["size=2m"]},
    )
    script = (
        f"cat /proc/self/mountinfo; echo ---; ls -a /{rel_host}/sub; "
        f"echo in > /{rel_host}/sub/file && cat /{rel_host}/sub/file"
    )
    bundle = rt.bundle(["sh", "-c", script], mounts=mounts)
    rootfs = bundle / "rootfs"
    (rootfs / "evil").symlink_to(str(host_dir))  # absolute: /tmp/dyk-evil-…
    # Relative, climbing far more levels than the rootfs is deep: followed on the host it
    # would reach /tmp/dyk-evil-… too.
    (rootfs / "evil2").symlink_to("../" * 16 + rel_host)
    assert (rootfs / "evil2").resolve() == host_dir  # the trap is real

    out = run_sh(rt, "", bundle=bundle)
    info, _, rest = out.partition("---\n")
    points = mountinfo_points(info)
    # Both symlinks resolve (inside the rootfs) to the same directory: two stacked tmpfs.
    assert points.get(f"/{rel_host}/sub") == "tmpfs", info
    sizes = [line for line in info.splitlines() if f" /{rel_host}/sub " in line]
    assert len(sizes) == 2, sizes
    assert rest.splitlines()[-1] == "in", out
    # The mount points were made in the rootfs, and nothing on the host.
    assert (rootfs / rel_host / "sub").is_dir()
    assert list(host_dir.iterdir()) == []
    assert oct(host_dir.stat().st_mode & 0o777) == oct(0o700)


def test_symlinked_bind_target_stays_in_rootfs(rt: Runtime, host_dir: Path) -> None:
    src = rt.tmp_path / "bind-src"
    src.mkdir()
    (src / "hello").write_text("hi\n")
    rel_host = str(host_dir).lstrip("/")
    mounts = with_mounts(
        {"destination": "/evil/b", "type": "bind", "source": str(src), "options": ["rbind"]}
    )
    bundle = rt.bundle(["cat", f"/{rel_host}/b/hello"], mounts=mounts)
    (bundle / "rootfs" / "evil").symlink_to(str(host_dir))
    assert run_sh(rt, "", bundle=bundle) == "hi\n"
    assert list(host_dir.iterdir()) == []


# ---------------------------------------------------------------- bind and tmpfs mounts


def test_bind_directory_read_only(rt: Runtime) -> None:
    src = rt.tmp_path / "ro-src"
    src.mkdir()
    (src / "data").write_text("payload\n")
    mounts = with_mounts(
        {"destination": "/mnt/ro", "type": "bind", "source": str(src), "options": ["rbind", "ro"]}
    )
    script = "cat /mnt/ro/data; touch /mnt/ro/new 2>&1; echo rc=$?; grep ' /mnt/ro ' /proc/mounts"
    out = run_sh(rt, script, mounts=mounts)
    lines = out.splitlines()
    assert lines[0] == "payload", out
    assert "Read-only file system" in out, out
    assert "rc=1" in out, out
    assert lines[-1].split()[3].split(",")[0] == "ro", out
    assert sorted(os.listdir(src)) == ["data"]


def test_bind_directory_writable(rt: Runtime) -> None:
    src = rt.tmp_path / "rw-src"
    src.mkdir()
    mounts = with_mounts(
        {"destination": "/mnt/rw", "type": "bind", "source": str(src), "options": ["rbind", "rw"]}
    )
    run_sh(rt, "echo written > /mnt/rw/out", mounts=mounts)
    assert (src / "out").read_text() == "written\n"


def test_bind_file(rt: Runtime) -> None:
    src = rt.tmp_path / "host-file.txt"
    src.write_text("from the host\n")
    mounts = with_mounts(
        {"destination": "/etc/injected", "type": "bind", "source": str(src), "options": ["bind"]}
    )
    out = run_sh(rt, "cat /etc/injected; test -f /etc/injected && echo file", mounts=mounts)
    assert out == "from the host\nfile\n"


def test_bind_relative_source_from_bundle(rt: Runtime) -> None:
    mounts = with_mounts(
        {"destination": "/mnt/rel", "type": "bind", "source": "shared", "options": ["rbind"]}
    )
    bundle = rt.bundle(["cat", "/mnt/rel/note"], mounts=mounts)
    (bundle / "shared").mkdir()
    (bundle / "shared" / "note").write_text("relative to the bundle\n")
    # Run from elsewhere: the source is resolved against the bundle, not the cwd.
    res = rt("run", "--bundle", str(bundle), rt.new_id(), cwd="/")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "relative to the bundle\n"


def test_bind_missing_source_fails(rt: Runtime) -> None:
    mounts = with_mounts(
        {"destination": "/mnt/x", "type": "bind", "source": "/nonexistent-dyk", "options": ["bind"]}
    )
    res = rt.run(rt.bundle(["true"], mounts=mounts))
    assert res.returncode != 0
    assert "/nonexistent-dyk" in res.stderr, res.stderr


def test_tmpfs_size_and_mode(rt: Runtime) -> None:
    mounts = with_mounts(
        {
            "destination": "/scratch",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "size=1m", "mode=1777"],
        }
    )
    out = run_sh(rt, "stat -c %a /scratch; df -k /scratch | tail -n 1", mounts=mounts)
    lines = out.splitlines()
    assert lines[0] == "1777", out
    assert lines[1].split()[1] == "1024", out


def test_mqueue_in_default_config(rt: Runtime) -> None:
    out = run_sh(rt, "cat /proc/mounts")
    rows = [line.split() for line in out.splitlines()]
    assert any(r[1] == "/dev/mqueue" and r[2] == "mqueue" for r in rows), out


# ---------------------------------------------------------------- sysctl


def test_sysctl_net_in_container_netns(rt: Runtime) -> None:
    host = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    want = "0" if host == "1" else "1"
    out = run_sh(
        rt,
        "cat /proc/sys/net/ipv4/ip_forward",
        linux={"sysctl": {"net.ipv4.ip_forward": want}},
    )
    assert out.strip() == want
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == host


def test_sysctl_ipc(rt: Runtime) -> None:
    host = Path("/proc/sys/kernel/msgmax").read_text().strip()
    want = "4096" if host != "4096" else "16384"
    out = run_sh(rt, "cat /proc/sys/kernel/msgmax", linux={"sysctl": {"kernel.msgmax": want}})
    assert out.strip() == want
    assert Path("/proc/sys/kernel/msgmax").read_text().strip() == host


def test_sysctl_unknown_key_fails(rt: Runtime) -> None:
    res = rt.run(rt.bundle(["true"], linux={"sysctl": {"net.ipv4.no_such_knob_dyk": "1"}}))
    assert res.returncode != 0
    assert "no_such_knob_dyk" in res.stderr, res.stderr


# ---------------------------------------------------------------- devices

DENY_ALL = {"allow": False, "access": "rwm"}
MKNOD_CAPS = ["CAP_MKNOD", "CAP_KILL", "CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"]


def test_extra_device(rt: Runtime) -> None:
    device = {
        "path": "/dev/mynull",
        "type": "c",
        "major": 1,
        "minor": 3,
        "fileMode": 0o640,
        "uid": 0,
        "gid": 0,
    }
    linux = {
        "devices": [device],
        "resources": {
            "devices": [
                DENY_ALL,
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            ]
        },
    }
    script = "stat -c '%a %u %g %t %T %F' /dev/mynull; echo x > /dev/mynull && echo wrote"
    out = run_sh(rt, script, linux=linux)
    lines = out.splitlines()
    assert lines[0] == "640 0 0 1 3 character special file", out
    assert lines[1] == "wrote", out


def test_extra_device_in_subdirectory(rt: Runtime) -> None:
    device = {"path": "/dev/sub/zero", "type": "c", "major": 1, "minor": 5, "fileMode": 0o600}
    out = run_sh(
        rt, "head -c 3 /dev/sub/zero | wc -c; stat -c %a /dev/sub/zero", linux={"devices": [device]}
    )
    assert out.split() == ["3", "600"]


def test_default_devices_work(rt: Runtime) -> None:
    script = (
        "head -c 4 /dev/zero | wc -c; head -c 8 /dev/urandom | wc -c; "
        "echo x > /dev/null && echo null-ok; echo x 2>&1 > /dev/full; echo full=$?"
    )
    out = run_sh(rt, script)
    lines = out.splitlines()
    assert lines[:3] == ["4", "8", "null-ok"], out
    assert "No space left on device" in out and lines[-1] == "full=1", out


def test_device_cgroup_denies_others(rt: Runtime) -> None:
    caps = {k: MKNOD_CAPS for k in ("bounding", "effective", "permitted")}
    # mknod of a disk (b 8:0) is refused by the device cgroup ('m'); an allowed one
    # (c 1:3) is not, but without 'rwm' for the disk even opening it would fail.
    script = (
        "mknod /dev/sdx b 8 0 2>&1; echo rc=$?; "
        "mknod /dev/null2 c 1 3 && echo x > /dev/null2 && echo null2-ok"
    )
    out = run_sh(rt, script, process={"capabilities": caps})
    assert "Operation not permitted" in out, out
    assert "rc=1" in out, out
    assert out.splitlines()[-1] == "null2-ok", out


def test_device_cgroup_denies_open(rt: Runtime) -> None:
    # The cgroup allows making a loop-device node ('m') but not opening it ('rw').
    caps = {k: MKNOD_CAPS for k in ("bounding", "effective", "permitted")}
    rules = [DENY_ALL, {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "m"}]
    out = run_sh(
        rt,
        "mknod /dev/loopx b 7 0 && echo node; head -c 1 /dev/loopx 2>&1; echo rc=$?",
        process={"capabilities": caps},
        linux={"resources": {"devices": rules}},
    )
    lines = out.splitlines()
    assert lines[0] == "node", out
    assert "Operation not permitted" in out, out
    assert lines[-1] == "rc=1", out
