"""Capabilities: names and masks, the real effect in a forked child, and call order."""

from __future__ import annotations

import errno
import os

import pytest

from dockyard.runtime import capabilities, syscalls
from dockyard.runtime.capabilities import CAPABILITIES, apply, last_cap, mask
from dockyard.runtime.errors import RuntimeFailure
from tests.runtime.forking import run_in_child

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def bit(*names: str) -> int:
    return sum(1 << CAPABILITIES[n] for n in names)


def status_caps() -> str:
    with open("/proc/self/status") as f:
        lines = [line for line in f if line.startswith("Cap")]
    return "".join(lines)


def parse_status(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, value = line.split(":")
        out[key] = int(value.strip(), 16)
    return out


# --- names and masks ---------------------------------------------------------------


def test_table_is_complete_and_dense() -> None:
    assert CAPABILITIES["CAP_CHOWN"] == 0
    assert CAPABILITIES["CAP_SYS_ADMIN"] == 21
    assert CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    assert sorted(CAPABILITIES.values()) == list(range(41))
    assert all(name.startswith("CAP_") and name.isupper() for name in CAPABILITIES)


def test_mask_accepts_prefix_and_case() -> None:
    assert mask(None) == 0
    assert mask([]) == 0
    assert mask(["CAP_CHOWN"]) == 1
    assert mask(["chown", "Cap_Kill", "CAP_KILL"]) == 1 | 1 << 5
    assert mask(["NET_BIND_SERVICE", "CAP_CHECKPOINT_RESTORE"]) == 1 << 10 | 1 << 40


def test_mask_unknown_name() -> None:
    with pytest.raises(RuntimeFailure, match=r'unknown capability "CAP_FOO" in process\.capab'):
        mask(["CAP_CHOWN", "CAP_FOO"])
    with pytest.raises(RuntimeFailure, match=r'"bogus" in process\.capabilities\.ambient'):
        mask(["bogus"], "process.capabilities.ambient")
    with pytest.raises(RuntimeFailure):
        mask([""])


def test_parse_rejects_unknown_set() -> None:
    with pytest.raises(RuntimeFailure, match='unknown set "bounds"'):
        apply({"bounds": ["CAP_CHOWN"]})


def test_names_roundtrip() -> None:
    names = ["CAP_CHOWN", "CAP_SETUID", "CAP_BPF"]
    assert capabilities.to_names(mask(names)) == names


def test_last_cap_matches_proc() -> None:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        assert last_cap() == int(f.read())
    assert last_cap() >= 36


# --- the real thing, in a forked child ---------------------------------------------

SMALL = {
    "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID"],
    "effective": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"],
    "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
    "inheritable": ["CAP_NET_BIND_SERVICE"],
    "ambient": ["CAP_NET_BIND_SERVICE", "CAP_KILL"],  # CAP_KILL is not inheritable: skipped
}


@needs_root
def test_apply_sets_exact_masks() -> None:
    def child() -> str:
        apply(SMALL)
        return status_caps()

    caps = parse_status(run_in_child(child))
    assert caps["CapBnd"] == bit("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID")
    assert caps["CapEff"] == bit("CAP_CHOWN", "CAP_NET_BIND_SERVICE")
    assert caps["CapPrm"] == bit("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert caps["CapInh"] == bit("CAP_NET_BIND_SERVICE")
    assert caps["CapAmb"] == bit("CAP_NET_BIND_SERVICE")


@needs_root
def test_apply_after_switch_to_non_root_user() -> None:
    """The init's real order: KEEPCAPS, setresuid to a user, clear KEEPCAPS, apply."""

    def child() -> str:
        sys = syscalls.current()
        sys.prctl(syscalls.PR_SET_KEEPCAPS, 1)
        os.setresgid(1000, 1000, 1000)
        os.setresuid(1000, 1000, 1000)
        sys.prctl(syscalls.PR_SET_KEEPCAPS, 0)
        apply(SMALL)
        return status_caps()

    caps = parse_status(run_in_child(child))
    assert caps["CapBnd"] == bit("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID")
    assert caps["CapEff"] == bit("CAP_CHOWN", "CAP_NET_BIND_SERVICE")
    assert caps["CapPrm"] == bit("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert caps["CapAmb"] == bit("CAP_NET_BIND_SERVICE")


@needs_root
def test_empty_sets_drop_everything() -> None:
    def child() -> str:
        apply(None)
        return status_caps()

    caps = parse_status(run_in_child(child))
    assert caps == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}


@needs_root
def test_without_sys_admin_sethostname_is_refused() -> None:
    def child() -> str:
        sys = syscalls.current()
        sys.unshare(syscalls.CLONE_NEWUTS)  # never touch the host's hostname
        sys.sethostname("with-admin")  # still allowed here
        apply({s: ["CAP_CHOWN", "CAP_SETUID"] for s in ("bounding", "effective", "permitted")})
        try:
            sys.sethostname("without-admin")
        except OSError as e:
            return f"{e.errno} {os.uname().nodename}"
        return f"0 {os.uname().nodename}"

    assert run_in_child(child) == f"{errno.EPERM} with-admin"


@needs_root
def test_effective_must_be_within_permitted() -> None:
    def child() -> str:
        try:
            apply({"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": []})
        except RuntimeFailure as e:
            return str(e)
        return "applied"

    assert "effective has capabilities not in permitted: CAP_CHOWN" in run_in_child(child)


# --- call order, with a recording fake ----------------------------------------------


class Recorder(syscalls.LinuxSyscalls):
    def __init__(self, eff: int = 0, prm: int = (1 << 41) - 1, ambient_errno: int = 0) -> None:
        self.calls: list[tuple] = []
        self.state = (eff, prm, 0)
        self.ambient_errno = ambient_errno

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        self.calls.append(("prctl", option, arg2, arg3))
        if (
            self.ambient_errno
            and option == syscalls.PR_CAP_AMBIENT
            and arg2 == syscalls.PR_CAP_AMBIENT_RAISE
        ):
            raise OSError(self.ambient_errno, os.strerror(self.ambient_errno))
        return 0

    def capget(self, pid: int = 0) -> tuple[int, int, int]:
        self.calls.append(("capget",))
        return self.state

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        self.calls.append(("capset", effective, permitted, inheritable))


def test_call_order_with_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "_last_cap", 40)
    fake = Recorder(eff=(1 << 41) - 1)
    with syscalls.replaced(fake):
        apply(SMALL)
    keep = bit("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID")
    drops = [
        ("prctl", syscalls.PR_CAPBSET_DROP, cap, 0) for cap in range(41) if not keep >> cap & 1
    ]
    assert fake.calls == [
        ("capget",),
        *drops,
        (
            "capset",
            bit("CAP_CHOWN", "CAP_NET_BIND_SERVICE"),
            bit("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"),
            bit("CAP_NET_BIND_SERVICE"),
        ),
        ("prctl", syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL, 0),
        ("prctl", syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, 5),
        ("prctl", syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, 10),
    ]


def test_raises_effective_before_dropping_bounding(monkeypatch: pytest.MonkeyPatch) -> None:
    """After setresuid() effective is empty: apply raises it to permitted first."""
    monkeypatch.setattr(capabilities, "_last_cap", 40)
    prm = bit("CAP_SETPCAP", "CAP_CHOWN")
    fake = Recorder(eff=0, prm=prm)
    with syscalls.replaced(fake):
        apply({"bounding": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]})
    assert fake.calls[:3] == [
        ("capget",),
        ("capset", prm, prm, 0),
        ("prctl", syscalls.PR_CAPBSET_DROP, 1, 0),
    ]
    assert ("capset", 0, bit("CAP_CHOWN"), 0) in fake.calls


def test_caps_beyond_kernel_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "_last_cap", 37)  # kernel without CAP_PERFMON..
    fake = Recorder(eff=(1 << 38) - 1)
    everything = list(CAPABILITIES)
    with syscalls.replaced(fake):
        apply({s: everything for s in ("bounding", "effective", "permitted", "ambient")})
    full = (1 << 38) - 1
    assert ("capset", full, full, 0) in fake.calls
    assert not [c for c in fake.calls if c[:2] == ("prctl", syscalls.PR_CAPBSET_DROP)]
    raised = [c[3] for c in fake.calls if c[1:3] == (syscalls.PR_CAP_AMBIENT, 2)]
    assert raised == list(range(38))


@pytest.mark.parametrize("err", [errno.EPERM, errno.EINVAL])
def test_ambient_raise_failures_are_skipped(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    monkeypatch.setattr(capabilities, "_last_cap", 40)
    fake = Recorder(eff=(1 << 41) - 1, ambient_errno=err)
    with syscalls.replaced(fake):
        apply(SMALL)  # no exception


def test_ambient_raise_other_errors_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "_last_cap", 40)
    fake = Recorder(eff=(1 << 41) - 1, ambient_errno=errno.EIO)
    with syscalls.replaced(fake), pytest.raises(RuntimeFailure, match="CAP_KILL"):
        apply(SMALL)
