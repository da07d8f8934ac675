"""Linux capabilities for the container process (OCI `process.capabilities`).

`apply()` runs in the container init just before execve, after the uid/gid
switch. Every syscall goes through `dockyard.runtime.syscalls.current()` so
tests can record the calls.
"""

from __future__ import annotations

import errno

from dockyard.runtime import syscalls
from dockyard.runtime.errors import RuntimeFailure

# linux/capability.h, in bit order.
CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

SETS: tuple[str, ...] = ("bounding", "effective", "permitted", "inheritable", "ambient")

_CAP_SETPCAP = 8
_last_cap: int | None = None


def number(name: str, where: str = "process.capabilities") -> int:
    """The bit number of one capability name ("CAP_CHOWN", "chown", "cap_chown")."""
    if not isinstance(name, str):
        raise RuntimeFailure(f"capability {name!r} in {where} is not a string")
    key = name.strip().upper()
    if not key.startswith("CAP_"):
        key = "CAP_" + key
    try:
        return CAPABILITIES[key]
    except KeyError:
        raise RuntimeFailure(
            f'unknown capability "{name}" in {where}: '
            "not a Linux capability name (CAP_CHOWN ... CAP_CHECKPOINT_RESTORE)"
        ) from None


def mask(names: list[str] | None, where: str = "process.capabilities") -> int:
    """The bit mask of a list of capability names; None or [] is 0."""
    if names is None:
        return 0
    if not isinstance(names, list | tuple):
        raise RuntimeFailure(f"{where} must be a list of capability names, not {names!r}")
    result = 0
    for name in names:
        result |= 1 << number(name, where)
    return result


def to_names(bits: int) -> list[str]:
    """The capability names in a mask, in bit order (unknown high bits ignored)."""
    return [name for name, bit in CAPABILITIES.items() if bits >> bit & 1]


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    global _last_cap
    if _last_cap is None:
        try:
            with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
                _last_cap = int(f.read().strip())
        except (OSError, ValueError):
            _last_cap = _probe_last_cap()
    return _last_cap


def _probe_last_cap() -> int:
    # Without /proc: PR_CAPBSET_READ fails with EINVAL above the last cap.
    sys = syscalls.current()
    for cap in range(63, -1, -1):
        try:
            sys.prctl(syscalls.PR_CAPBSET_READ, cap)
        except OSError:
            continue
        return cap
    return max(CAPABILITIES.values())


def parse(caps: dict | None) -> dict[str, int]:
    """OCI `process.capabilities` to one mask per set; a missing set is empty."""
    if caps is None:
        return {s: 0 for s in SETS}
    if not isinstance(caps, dict):
        raise RuntimeFailure(f"process.capabilities must be an object, not {caps!r}")
    for key in caps:
        if key not in SETS:
            raise RuntimeFailure(
                f'unknown set "{key}" in process.capabilities '
                "(expected bounding, effective, permitted, inheritable, ambient)"
            )
    return {s: mask(caps.get(s), f"process.capabilities.{s}") for s in SETS}


def apply(caps: dict | None) -> None:
    """Set the calling process's capability sets to OCI `process.capabilities`.

    Order: drop from the bounding set, capset(effective, permitted,
    inheritable), then clear and raise the ambient set. Capabilities newer than
    the running kernel are ignored (runc warns and does the same).
    """
    sets = parse(caps)
    top = last_cap()
    known = (1 << (top + 1)) - 1
    bounding = sets["bounding"] & known
    effective = sets["effective"] & known
    permitted = sets["permitted"] & known
    inheritable = sets["inheritable"] & known
    ambient = sets["ambient"] & known
    sys = syscalls.current()

    to_drop = [cap for cap in range(top + 1) if not bounding >> cap & 1]
    if to_drop:
        # After setresuid() to a non-root uid (with KEEPCAPS) the effective set
        # is empty; dropping bounding caps needs CAP_SETPCAP in effective.
        try:
            cur_eff, cur_prm, cur_inh = sys.capget()
        except OSError as e:
            raise RuntimeFailure(f"reading capabilities: {e.strerror}") from None
        if not cur_eff >> _CAP_SETPCAP & 1 and cur_prm >> _CAP_SETPCAP & 1:
            try:
                sys.capset(cur_prm, cur_prm, cur_inh)
            except OSError as e:
                raise RuntimeFailure(f"raising effective capabilities: {e.strerror}") from None
        for cap in to_drop:
            try:
                sys.prctl(syscalls.PR_CAPBSET_DROP, cap)
            except OSError as e:
                if e.errno == errno.EINVAL:  # the kernel does not know it after all
                    continue
                raise RuntimeFailure(
                    f"dropping {to_names(1 << cap)[0]} from the bounding set: {e.strerror}"
                ) from None

    if effective & ~permitted:
        raise RuntimeFailure(
            "process.capabilities.effective has capabilities not in permitted: "
            + ", ".join(to_names(effective & ~permitted))
        )
    try:
        sys.capset(effective, permitted, inheritable)
    except OSError as e:
        raise RuntimeFailure(
            f"setting capabilities (effective={effective:#x}, permitted={permitted:#x}, "
            f"inheritable={inheritable:#x}): {e.strerror}"
        ) from None

    try:
        sys.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: kernel without ambient caps (< 4.3)
            raise RuntimeFailure(f"clearing ambient capabilities: {e.strerror}") from None
    for cap in range(top + 1):
        if not ambient >> cap & 1:
            continue
        try:
            sys.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, cap)
        except OSError as e:
            # Not in permitted+inheritable (EPERM) or no ambient support
            # (EINVAL): runc only warns, and so the cap is simply not raised.
            if e.errno in (errno.EINVAL, errno.EPERM):
                continue
            raise RuntimeFailure(
                f"raising ambient capability {to_names(1 << cap)[0]}: {e.strerror}"
            ) from None
