"""The default seccomp profile of a container: least privilege, as Docker's default.

Docker's profile is an allow-list; this one states the same policy as a
deny-list, which is shorter and keeps working as the kernel adds harmless
system calls: calls that reach across the container boundary (kernel modules,
clocks, mounts, namespaces, keyrings, tracing, reboot, swap, …) fail with
EPERM unless the container holds the capability that would make them
legitimate, exactly where Docker's profile makes the same exception.
`clone3` fails with ENOSYS without CAP_SYS_ADMIN so libc falls back to
`clone`, whose namespace flags are then checked (a clone3 argument is a
pointer seccomp can't read).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

EPERM = 1
ENOSYS = 38

# Denied unless the container has one of the capabilities listed with them.
GUARDED: dict[str, tuple[str, ...]] = {
    "acct": ("CAP_SYS_PACCT",),
    "add_key": (),
    "bpf": ("CAP_SYS_ADMIN", "CAP_BPF"),
    "clock_adjtime": ("CAP_SYS_TIME",),
    "clock_adjtime64": ("CAP_SYS_TIME",),
    "clock_settime": ("CAP_SYS_TIME",),
    "clock_settime64": ("CAP_SYS_TIME",),
    "settimeofday": ("CAP_SYS_TIME",),
    "stime": ("CAP_SYS_TIME",),
    "create_module": ("CAP_SYS_MODULE",),
    "delete_module": ("CAP_SYS_MODULE",),
    "finit_module": ("CAP_SYS_MODULE",),
    "init_module": ("CAP_SYS_MODULE",),
    "get_kernel_syms": (),
    "query_module": (),
    "get_mempolicy": ("CAP_SYS_NICE",),
    "mbind": ("CAP_SYS_NICE",),
    "set_mempolicy": ("CAP_SYS_NICE",),
    "move_pages": ("CAP_SYS_NICE",),
    "ioperm": ("CAP_SYS_RAWIO",),
    "iopl": ("CAP_SYS_RAWIO",),
    "kcmp": ("CAP_SYS_PTRACE",),
    "process_vm_readv": ("CAP_SYS_PTRACE",),
    "process_vm_writev": ("CAP_SYS_PTRACE",),
    "ptrace": ("CAP_SYS_PTRACE",),
    "kexec_file_load": ("CAP_SYS_BOOT",),
    "kexec_load": ("CAP_SYS_BOOT",),
    "reboot": ("CAP_SYS_BOOT",),
    "keyctl": (),
    "request_key": (),
    "lookup_dcookie": ("CAP_SYS_ADMIN",),
    "mount": ("CAP_SYS_ADMIN",),
    "mount_setattr": ("CAP_SYS_ADMIN",),
    "move_mount": ("CAP_SYS_ADMIN",),
    "open_tree": ("CAP_SYS_ADMIN",),
    "fsconfig": ("CAP_SYS_ADMIN",),
    "fsmount": ("CAP_SYS_ADMIN",),
    "fsopen": ("CAP_SYS_ADMIN",),
    "fspick": ("CAP_SYS_ADMIN",),
    "umount": ("CAP_SYS_ADMIN",),
    "umount2": ("CAP_SYS_ADMIN",),
    "pivot_root": ("CAP_SYS_ADMIN",),
    "setns": ("CAP_SYS_ADMIN",),
    "unshare": ("CAP_SYS_ADMIN",),
    "quotactl": ("CAP_SYS_ADMIN",),
    "quotactl_fd": ("CAP_SYS_ADMIN",),
    "name_to_handle_at": ("CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH"),
    "open_by_handle_at": ("CAP_DAC_READ_SEARCH",),
    "nfsservctl": (),
    "perf_event_open": ("CAP_SYS_ADMIN", "CAP_PERFMON"),
    "fanotify_init": ("CAP_SYS_ADMIN",),
    "swapon": ("CAP_SYS_ADMIN",),
    "swapoff": ("CAP_SYS_ADMIN",),
    "sethostname": ("CAP_SYS_ADMIN",),
    "setdomainname": ("CAP_SYS_ADMIN",),
    "syslog": ("CAP_SYSLOG",),
    "sysfs": (),
    "_sysctl": (),
    "uselib": (),
    "userfaultfd": (),
    "ustat": (),
    "vm86": (),
    "vm86old": (),
}

# clone's namespace flags (CLONE_NEWNS … CLONE_NEWTIME): each needs CAP_SYS_ADMIN.
CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # NEWNS
    0x02000000,  # NEWCGROUP
    0x04000000,  # NEWUTS
    0x08000000,  # NEWIPC
    0x10000000,  # NEWUSER
    0x20000000,  # NEWPID
    0x40000000,  # NEWNET
    0x00000080,  # NEWTIME
)

ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def default_profile(capabilities: list[str] | set[str]) -> dict[str, Any]:
    """The OCI `linux.seccomp` object for a container with these capabilities."""
    caps = set(capabilities)
    denied = sorted(name for name, allowed_by in GUARDED.items() if not caps & set(allowed_by))
    syscalls: list[dict[str, Any]] = [
        {"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}
    ]
    if "CAP_SYS_ADMIN" not in caps:
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
        for flag in CLONE_NAMESPACE_FLAGS:
            syscalls.append(
                {
                    "names": ["clone"],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": EPERM,
                    "args": [
                        {"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}
                    ],
                }
            )
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(ARCHITECTURES),
        "syscalls": syscalls,
    }


def from_docker_profile(doc: dict[str, Any], capabilities: list[str] | set[str]) -> dict[str, Any]:
    """A profile file in Docker's format (or already OCI) → the OCI seccomp object.

    Docker's format adds `archMap` and, per rule, `includes`/`excludes` of
    capabilities and architectures; rules are kept for this container's
    capabilities on this architecture.
    """
    import platform

    caps = set(capabilities)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    architectures = list(doc.get("architectures") or [])
    for entry in doc.get("archMap") or []:
        architectures += [entry["architecture"], *(entry.get("subArchitectures") or [])]
    rules = []
    for rule in doc.get("syscalls") or []:
        includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
        if not set(includes.get("caps") or []) <= caps or caps & set(excludes.get("caps") or []):
            continue
        if includes.get("arches") and arch not in includes["arches"]:
            continue
        if arch in (excludes.get("arches") or []):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        kept = {k: v for k, v in rule.items() if k in ("action", "args", "errnoRet")}
        rules.append({"names": names, **kept})
    profile: dict[str, Any] = {"defaultAction": doc.get("defaultAction", "SCMP_ACT_ERRNO")}
    if "defaultErrnoRet" in doc:
        profile["defaultErrnoRet"] = doc["defaultErrnoRet"]
    if architectures:
        profile["architectures"] = architectures
    profile["syscalls"] = rules
    if doc.get("flags"):
        profile["flags"] = doc["flags"]
    return profile
