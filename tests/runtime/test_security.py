"""Security for real: capabilities, seccomp, read-only and masked paths, fd leaks,
and the runc CVE classes (CVE-2019-5736: /proc/self/exe; CVE-2024-21626: leaked cwd/fds)."""

from __future__ import annotations

import errno
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from dockyard.runtime.capabilities import CAPABILITIES
from tests.runtime.helpers import (
    Runtime,
    needs_root,
    rt_fixture,  # noqa: F401 - the `rt` fixture
)

pytestmark = needs_root

SLEEP = ["sleep", "30"]
DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def run_sh(rt: Runtime, script: str, **overrides: Any) -> tuple[int, str, str]:
    res = rt.run(rt.bundle(["sh", "-c", script], **overrides))
    return res.returncode, res.stdout, res.stderr


def cap_mask(names: list[str]) -> int:
    return sum(1 << CAPABILITIES[n] for n in names)


def status_field(text: str, name: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith(name + ":"))


# ---------------------------------------------------------------- capabilities


def test_default_caps_in_status(rt: Runtime) -> None:
    code, out, err = run_sh(rt, "cat /proc/self/status")
    assert code == 0, err
    # (CapAmb stays empty: ambient needs inheritable, which runc's default spec lacks.)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status_field(out, field), 16) == cap_mask(DEFAULT_CAPS), field
    assert status_field(out, "NoNewPrivs") == "1"


def test_mount_denied_without_cap_sys_admin(rt: Runtime) -> None:
    code, out, err = run_sh(rt, "mount -t tmpfs none /tmp && echo mounted; echo rc=$?")
    assert code == 0, err
    assert "mounted" not in out
    assert "rc=1" in out or "rc=255" in out, out


def test_net_admin_dropped(rt: Runtime) -> None:
    _code, out, _ = run_sh(rt, "ip link add d0 type veth peer name d1 2>&1; echo rc=$?")
    assert "rc=0" not in out, out
    assert "not permitted" in out.lower(), out


def test_added_capability_works(rt: Runtime) -> None:
    caps = [*DEFAULT_CAPS, "CAP_NET_ADMIN"]
    cap_cfg = {k: caps for k in ("bounding", "effective", "permitted", "ambient")}
    code, out, err = run_sh(
        rt,
        "ip link add d0 type veth peer name d1 && echo added; grep CapEff /proc/self/status",
        process={"capabilities": cap_cfg},
    )
    assert code == 0, err
    assert "added" in out
    assert int(out.split()[-1], 16) == cap_mask(caps)


def test_non_root_user_has_no_effective_caps(rt: Runtime) -> None:
    code, out, err = run_sh(
        rt,
        "id -u; grep CapEff /proc/self/status",
        process={
            "user": {"uid": 65534, "gid": 65534},
            "capabilities": {"ambient": []},
        },
    )
    assert code == 0, err
    lines = out.split()
    assert lines[0] == "65534"
    assert int(lines[-1], 16) == 0


# ---------------------------------------------------------------- seccomp

SECCOMP = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
}


def test_seccomp_rule_returns_errno(rt: Runtime) -> None:
    code, out, err = run_sh(
        rt,
        "mkdir /tmp/x 2>&1; echo rc=$?; touch /tmp/file && echo touched",
        root={"readonly": False},
        linux={"seccomp": SECCOMP},
    )
    assert code == 0, err
    assert "Operation not permitted" in out
    assert "rc=1" in out
    assert "touched" in out


def test_without_seccomp_mkdir_works(rt: Runtime) -> None:
    code, out, err = run_sh(rt, "mkdir /tmp/x && echo made", root={"readonly": False})
    assert code == 0, err
    assert out.strip() == "made"


def test_seccomp_applies_to_exec(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(SLEEP, root={"readonly": False}, linux={"seccomp": SECCOMP}))
    res = rt.sh(cid, "mkdir /tmp/y 2>&1; echo rc=$?")
    assert "Operation not permitted" in res.stdout, res.stderr


# ---------------------------------------------------------------- read-only and masked


def test_readonly_root(rt: Runtime) -> None:
    _code, out, _ = run_sh(rt, "touch /x 2>&1; echo rc=$?")
    assert "Read-only file system" in out
    assert "rc=1" in out


def test_writable_root_when_asked(rt: Runtime) -> None:
    code, out, err = run_sh(rt, "touch /x && echo ok", root={"readonly": False})
    assert code == 0, err
    assert out.strip() == "ok"


def test_readonly_paths(rt: Runtime) -> None:
    # kernel.hostname is per uts namespace: harmless if the write were to succeed.
    code, out, err = run_sh(rt, "echo evil 2>&1 > /proc/sys/kernel/hostname; echo rc=$?; hostname")
    assert code == 0, err
    assert "rc=1" in out, out
    assert "evil" not in out
    assert "Read-only file system" in err + out
    code, out, _ = run_sh(rt, "grep ' /proc/sys ' /proc/self/mountinfo")
    assert code == 0
    assert "ro" in out.split()[5].split(","), out


@pytest.mark.parametrize("path", ["/proc/kcore", "/proc/keys", "/proc/timer_list"])
def test_masked_files_read_empty(rt: Runtime, path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist on this kernel")
    code, out, err = run_sh(rt, f"wc -c < {path}; grep -c ' {path} ' /proc/self/mountinfo")
    assert code == 0, err
    assert out.split() == ["0", "1"]


def test_masked_dir_is_empty(rt: Runtime) -> None:
    assert os.listdir("/sys/firmware")
    _code, out, _err = run_sh(rt, "ls -A /sys/firmware | wc -l; touch /sys/firmware/x; echo rc=$?")
    assert out.split()[0] == "0"
    assert "rc=0" not in out


# ---------------------------------------------------------------- fd leaks

# A host shell that opens fds 3 and 4 (not close-on-exec) on $0 and execs the rest.
OPEN_3_4 = 'exec 3<"$0" 4<"$0"; exec "$@"'


def test_no_fd_leak_into_container(rt: Runtime) -> None:
    leak = rt.tmp_path / "leak.txt"
    leak.write_text("secret")
    extra = [os.open(leak, os.O_RDONLY) for _ in range(3)]
    try:
        for fd in extra:
            os.set_inheritable(fd, True)
        bundle = rt.bundle(["ls", "/proc/self/fd"])
        res = rt("run", "--bundle", str(bundle), rt.new_id(), pass_fds=extra)
    finally:
        for fd in extra:
            os.close(fd)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.split()) == ["0", "1", "2", "3"]


def test_preserve_fds(rt: Runtime) -> None:
    leak = rt.tmp_path / "kept.txt"
    leak.write_text("kept")
    bundle = rt.bundle(["sh", "-c", "ls /proc/self/fd; cat <&3 2>/dev/null || echo none"])
    prefix = ["sh", "-c", OPEN_3_4, str(leak)]
    res = rt("run", "--bundle", str(bundle), rt.new_id(), prefix=prefix)
    assert res.returncode == 0, res.stderr
    # Without --preserve-fds: neither 3 nor 4 (ls's own directory fd is 3).
    assert sorted(res.stdout.split()[:-1]) == ["0", "1", "2", "3"]
    assert res.stdout.split()[-1] == "none"
    res = rt("run", "--preserve-fds", "1", "--bundle", str(bundle), rt.new_id(), prefix=prefix)
    assert res.returncode == 0, res.stderr
    words = res.stdout.split()
    assert sorted(words[:-1]) == ["0", "1", "2", "3", "4"]
    assert words[-1] == "kept"


def test_no_fd_points_to_host(rt: Runtime) -> None:
    # Beyond stdio (the caller's, by design), no fd may lead to the host.
    script = (
        "for f in /proc/self/fd/*; do [ ${f##*/} -gt 2 ] && readlink $f; done; "
        "readlink /proc/1/cwd; readlink /proc/1/root"
    )
    bundle = rt.bundle(["sh", "-c", f"{script}; exec sleep 30"])
    cid = rt.run_detached(bundle)
    pid = rt.state(cid)["pid"]
    bad = (str(bundle), str(rt.root), "/sys/fs/cgroup", "/work", "/run/")
    links = [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
    assert not [link for link in links if link.startswith(bad)], links
    assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
    res = rt.sh(cid, script)
    assert res.returncode == 0, res.stderr
    inside = res.stdout.split()
    assert inside[-2:] == ["/", "/"]
    assert not [link for link in inside if link.startswith(bad)], inside


# ---------------------------------------------------------------- CVE-2024-21626


def test_cwd_resolves_inside(rt: Runtime) -> None:
    code, out, err = run_sh(rt, "pwd; readlink /proc/self/cwd", process={"cwd": "/tmp"})
    assert code == 0, err
    assert out.split() == ["/tmp", "/tmp"]


def test_cwd_created_inside_rootfs(rt: Runtime) -> None:
    bundle = rt.bundle(["sh", "-c", "readlink /proc/self/cwd"], process={"cwd": "/work/deep"})
    res = rt.run(bundle)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "/work/deep"
    assert (bundle / "rootfs" / "work" / "deep").is_dir()


@pytest.mark.parametrize("fd", [3, 4, 5, 6, 7, 8])
def test_cwd_proc_self_fd_never_escapes(rt: Runtime, fd: int) -> None:
    # The CVE-2024-21626 shape: cwd through a runtime fd leaked into the container.
    bundle = rt.bundle(
        ["sh", "-c", "readlink /proc/self/cwd; ls .."], process={"cwd": f"/proc/self/fd/{fd}"}
    )
    res = rt.run(bundle)
    assert "Traceback" not in res.stderr
    if res.returncode != 0:
        return  # refused: fine
    cwd = res.stdout.split()[0]
    assert not cwd.startswith(("/sys", str(rt.tmp_path), "/work")), res.stdout
    assert "(unreachable)" not in cwd


def test_exec_cwd_resolves_inside(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(SLEEP))
    res = rt.sh(cid, "readlink /proc/self/cwd", "--cwd", "/etc")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "/etc"


# ---------------------------------------------------------------- CVE-2019-5736


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_init_exe_not_writable_from_host(rt: Runtime) -> None:
    cid = rt.create(rt.bundle(SLEEP))
    pid = rt.state(cid)["pid"]
    with pytest.raises(OSError) as info:
        # O_WRONLY without O_TRUNC: even if the open succeeded nothing would change.
        os.close(os.open(f"/proc/{pid}/exe", os.O_WRONLY))
    assert info.value.errno in (errno.EROFS, errno.ETXTBSY)
    mounts = Path(f"/proc/{pid}/mountinfo").read_text()
    exe = os.readlink(f"/proc/{pid}/exe")
    line = next(m for m in mounts.splitlines() if m.split()[4] == exe)
    assert "ro" in line.split()[5].split(",")


def test_container_pid1_exe_not_writable_inside(rt: Runtime) -> None:
    interp = os.path.realpath(sys.executable)
    before = sha256(interp)
    cid = rt.run_detached(rt.bundle(SLEEP))
    res = rt.sh(cid, "echo x > /proc/1/exe; echo rc=$?")
    assert "rc=0" not in res.stdout, res.stdout
    assert sha256(interp) == before


def _proc_self_exe_script(bundle: Path) -> None:
    script = bundle / "rootfs" / "evil"
    script.write_text("#!/proc/self/exe\n")
    script.chmod(0o755)


def test_proc_self_exe_shebang_run(rt: Runtime) -> None:
    interp = os.path.realpath(sys.executable)
    before = sha256(interp)
    bundle = rt.bundle(["/evil"])
    _proc_self_exe_script(bundle)
    res = rt.run(bundle)
    assert res.returncode != 0
    assert sha256(interp) == before


def test_proc_self_exe_shebang_exec(rt: Runtime) -> None:
    interp = os.path.realpath(sys.executable)
    before = sha256(interp)
    bundle = rt.bundle(SLEEP)
    _proc_self_exe_script(bundle)
    cid = rt.run_detached(bundle)
    res = rt("exec", cid, "/evil")
    assert res.returncode != 0
    assert sha256(interp) == before
    assert rt.status(cid) == "running"
