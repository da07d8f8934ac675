"""The one place where dockyard calls libc through ctypes.

Python 3.11 lacks unshare, setns, mount, pivot_root, capset and friends. Every
such call goes through a `Syscalls` object so that tests can swap in a recorder
(youki's syscall trait is the model): `with syscalls.replaced(fake): ...`.
The real implementation is `LinuxSyscalls`; `current()` returns the one in use.
"""

from __future__ import annotations

import ctypes
import os

# namespaces (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# mount flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2

# prctl (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_SYS_PIVOT_ROOT = 155
_SYS_SETNS = 308
_SYS_CLOSE_RANGE = 436
CLOSE_RANGE_CLOEXEC = 1 << 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


class LinuxSyscalls:
    """The real thing: thin wrappers that raise OSError with the call named."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        self._libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4

    def unshare(self, flags: int) -> None:
        _check(self._libc.unshare(ctypes.c_int(flags)), "unshare")

    def setns(self, fd: int, nstype: int = 0) -> None:
        _check(self._libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")

    def mount(
        self,
        source: str | None,
        target: str,
        fstype: str | None,
        flags: int = 0,
        data: str | None = None,
    ) -> None:
        res = self._libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        )
        _check(res, f"mount {source or fstype or ''} on {target}")

    def umount2(self, target: str, flags: int = 0) -> None:
        _check(self._libc.umount2(target.encode(), flags), f"umount {target}")

    def pivot_root(self, new_root: str, put_old: str) -> None:
        res = self._libc.syscall(
            ctypes.c_long(_SYS_PIVOT_ROOT),
            ctypes.c_char_p(new_root.encode()),
            ctypes.c_char_p(put_old.encode()),
        )
        _check(res, "pivot_root")

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        return _check(self._libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")

    def capget(self, pid: int = 0) -> tuple[int, int, int]:
        """(effective, permitted, inheritable) as 64-bit masks."""
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
        data = (_CapData * 2)()
        _check(self._libc.capget(ctypes.byref(header), data), "capget")
        return (
            data[0].effective | (data[1].effective << 32),
            data[0].permitted | (data[1].permitted << 32),
            data[0].inheritable | (data[1].inheritable << 32),
        )

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for i in (0, 1):
            shift = 32 * i
            data[i].effective = (effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
        _check(self._libc.capset(ctypes.byref(header), data), "capset")

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        _check(self._libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")

    def setdomainname(self, name: str) -> None:
        raw = name.encode()
        _check(self._libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")

    def close_range(self, first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
        res = self._libc.syscall(
            ctypes.c_long(_SYS_CLOSE_RANGE),
            ctypes.c_uint(first),
            ctypes.c_uint(last),
            ctypes.c_uint(flags),
        )
        _check(res, "close_range")

    def bpf(self, cmd: int, attr: bytearray) -> int:
        """bpf(2) with `attr` as union bpf_attr; the kernel may write results back into it."""
        buf = (ctypes.c_char * len(attr)).from_buffer(attr)
        res = self._libc.syscall(
            ctypes.c_long(321),  # __NR_bpf on x86_64
            ctypes.c_int(cmd),
            buf,
            ctypes.c_uint(len(attr)),
        )
        return _check(res, f"bpf({cmd})")


_current: LinuxSyscalls | None = None


def current() -> LinuxSyscalls:
    """The implementation in use (created on first use, so importing is free)."""
    global _current
    if _current is None:
        _current = LinuxSyscalls()
    return _current


class replaced:
    """`with replaced(fake):` swaps in another implementation (a recorder in tests)."""

    def __init__(self, impl: LinuxSyscalls) -> None:
        self.impl = impl
        self.previous: LinuxSyscalls | None = None

    def __enter__(self) -> LinuxSyscalls:
        global _current
        self.previous, _current = _current, self.impl
        return self.impl

    def __exit__(self, *exc: object) -> None:
        global _current
        _current = self.previous
