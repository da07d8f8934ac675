"""The default seccomp profile: least privilege, lifted per capability, replaceable."""

from __future__ import annotations

import json
from pathlib import Path

from dockyard.engine.seccomp_profile import default_profile, from_docker_profile
from dockyard.runtime import seccomp
from tests.cli.dockyard_helper import Dockyard


def denied(profile: dict[str, object]) -> set[str]:
    rules = profile["syscalls"]
    assert isinstance(rules, list)
    return {n for r in rules if r.get("errnoRet") == 1 and not r.get("args") for n in r["names"]}


def test_profile_follows_capabilities() -> None:
    base = default_profile(["CAP_CHOWN"])
    seccomp.validate(base)  # libseccomp accepts it
    assert {"mount", "unshare", "setns", "ptrace", "reboot", "keyctl", "init_module"} <= denied(
        base
    )
    admin = default_profile(["CAP_SYS_ADMIN"])
    assert not {"mount", "unshare", "setns"} & denied(admin)
    assert "keyctl" in denied(admin)  # no capability makes a keyring call legitimate here
    assert "ptrace" not in denied(default_profile(["CAP_SYS_PTRACE"]))
    clones = [r for r in base["syscalls"] if r["names"] == ["clone"]]
    assert len(clones) == 8  # one rule per namespace flag
    assert not [r for r in admin["syscalls"] if r["names"] in (["clone"], ["clone3"])]


def test_docker_format_profiles_are_converted() -> None:
    doc = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["mount"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"caps": ["CAP_SYS_ADMIN"]},
            },
            {"names": ["chmod"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_FOWNER"]}},
        ],
    }
    plain = from_docker_profile(doc, ["CAP_CHOWN"])
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert [r["names"] for r in plain["syscalls"]] == [["read", "write"], ["chmod"]]
    admin = from_docker_profile(doc, ["CAP_SYS_ADMIN", "CAP_FOWNER"])
    assert [r["names"] for r in admin["syscalls"]] == [["read", "write"], ["mount"]]
    seccomp.validate(admin)


def test_containers_run_confined_by_default(dy: Dockyard, tmp_path: Path) -> None:
    status = dy("run", "--rm", "busybox", "grep", "Seccomp:", "/proc/self/status").stdout
    assert status.split() == ["Seccomp:", "2"]
    # The kernel lets anyone make a user namespace; the profile does not.
    out = dy("run", "--rm", "busybox", "unshare", "-U", "true", check=False)
    assert out.returncode != 0 and "Operation not permitted" in out.stderr
    dy("run", "--rm", "--security-opt", "seccomp=unconfined", "busybox", "unshare", "-U", "true")
    # With the capability, the profile allows what the capability is for.
    dy("run", "--rm", "--cap-add", "SYS_ADMIN", "busybox", "unshare", "-n", "true")
    unconfined = dy(
        "run", "--rm", "--privileged", "busybox", "grep", "Seccomp:", "/proc/self/status"
    ).stdout
    assert unconfined.split() == ["Seccomp:", "0"]


def test_a_profile_file_replaces_the_default(dy: Dockyard, tmp_path: Path) -> None:
    profile = tmp_path / "deny-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
                ],
            }
        )
    )
    out = dy(
        "run",
        "--rm",
        "--security-opt",
        f"seccomp={profile}",
        "busybox",
        "mkdir",
        "/tmp/x",
        check=False,
    )
    assert out.returncode != 0 and "Operation not permitted" in out.stderr
    out = dy(
        "run", "--rm", "--security-opt", "seccomp=/no/such.json", "busybox", "true", check=False
    )
    assert out.returncode == 125 and "opening seccomp profile (/no/such.json) failed" in out.stderr
