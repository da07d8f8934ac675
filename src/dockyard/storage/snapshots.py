"""The snapshotter seam: containerd's Prepare/View/Commit/Mounts/Remove in Python.

A snapshot is a directory tree that is either

- *committed*: immutable, named, usable as the parent of other snapshots (an
  image layer, with the layer's chain ID as its name);
- *active*: writable, made by `prepare(key, parent)` on top of a committed parent
  (a container's root filesystem, or a layer being unpacked before `commit`);
- *view*: read-only, made by `view(key, parent)`.

Keys of active/view snapshots and names of committed ones share one namespace.
A snapshotter never mounts anything itself: it hands back `Mount`s that the
caller mounts where it wants (`mount_all`) and unmounts (`unmount`) when done.
Implementations: `dockyard.storage.overlay.OverlaySnapshotter`. Each must pass
`tests/conformance/snapshotter_suite.py`.
"""

from __future__ import annotations

import errno
import os

from dockyard.runtime import syscalls

TYPE_CHECKING = False  # typing/dataclasses cost milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from typing import Literal, Protocol

    Kind = Literal["active", "view", "committed"]
else:
    Protocol = object


class SnapshotError(Exception):
    """A snapshot operation failed; the message says which snapshot and why."""


class SnapshotNotFound(SnapshotError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SnapshotExists(SnapshotError):
    """The key or committed name is already taken (a layer committed by someone else)."""


class SnapshotInUse(SnapshotError):
    """A committed snapshot still has children and can't be removed."""


class SnapshotInvalid(SnapshotError):
    """The request doesn't fit the snapshot's kind (commit a view, parent not committed ...)."""


class _Record:
    """What @dataclass would give (fields in `_fields` order): eq, repr."""

    __slots__: tuple[str, ...] = ()
    _fields: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _Record)
        return self._values() == other._values()

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({fields})"


class SnapshotInfo(_Record):
    """Immutable, like a frozen dataclass."""

    _fields = ("kind", "name", "parent", "labels", "created", "updated")
    __slots__ = ("created", "kind", "labels", "name", "parent", "updated")
    kind: Kind
    name: str
    parent: str | None
    labels: Mapping[str, str]
    created: str  # RFC 3339 UTC
    updated: str

    def __init__(
        self,
        kind: Kind,
        name: str,
        parent: str | None,
        labels: Mapping[str, str],
        created: str,
        updated: str,
    ) -> None:
        values = (kind, name, parent, labels, created, updated)
        for field, value in zip(self._fields, values, strict=True):
            object.__setattr__(self, field, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:
        return hash(self._values())


class Snapshotter(Protocol):
    def prepare(
        self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create an active (writable) snapshot `key` on top of committed `parent`."""
        ...

    def view(
        self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create a read-only view `key` of committed `parent`."""
        ...

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of an active snapshot or view (again)."""
        ...

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active `key` into committed, immutable `name`; `key` ceases to exist."""
        ...

    def remove(self, key: str) -> None:
        """Remove a snapshot; a committed one with children is refused (SnapshotInUse)."""
        ...

    def stat(self, key: str) -> SnapshotInfo: ...

    def update_labels(self, key: str, labels: Mapping[str, str]) -> SnapshotInfo:
        """Replace the labels of `key`."""
        ...

    def walk(self) -> Iterator[SnapshotInfo]: ...

    def usage(self, key: str) -> tuple[int, int]:
        """(bytes, inodes) the snapshot itself uses (not its parents)."""
        ...

    def check(self) -> list[str]:
        """Inconsistencies between metadata and disk, one readable line each."""
        ...

    def cleanup(self) -> list[str]:
        """Remove what a crash left behind on disk; returns what was removed."""
        ...


# --- mounts -----------------------------------------------------------------------

# option -> (flags to set, flags to clear); anything else is filesystem data
_FLAGS: dict[str, tuple[int, int]] = {
    "ro": (syscalls.MS_RDONLY, 0),
    "rw": (0, syscalls.MS_RDONLY),
    "bind": (syscalls.MS_BIND, 0),
    "rbind": (syscalls.MS_BIND | syscalls.MS_REC, 0),
    "nosuid": (syscalls.MS_NOSUID, 0),
    "suid": (0, syscalls.MS_NOSUID),
    "nodev": (syscalls.MS_NODEV, 0),
    "dev": (0, syscalls.MS_NODEV),
    "noexec": (syscalls.MS_NOEXEC, 0),
    "exec": (0, syscalls.MS_NOEXEC),
    "noatime": (syscalls.MS_NOATIME, 0),
    "relatime": (syscalls.MS_RELATIME, 0),
    "sync": (syscalls.MS_SYNCHRONOUS, 0),
}


def parse_options(options: Sequence[str]) -> tuple[int, list[str]]:
    """Split mount options into MS_* flags and filesystem data (containerd's parseMountOptions)."""
    flags = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            set_, clear = _FLAGS[opt]
            flags = (flags | set_) & ~clear
        else:
            data.append(opt)
    return flags, data


class Mount(_Record):
    """One mount, like containerd's mount.Mount: `mount -t type -o options source target`."""

    _fields = ("type", "source", "options")
    __slots__ = ("options", "source", "type")
    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass with eq

    def __init__(self, type: str, source: str, options: list[str] | None = None) -> None:
        self.type = type
        self.source = source
        self.options: list[str] = [] if options is None else options

    @property
    def readonly(self) -> bool:
        return bool(parse_options(self.options)[0] & syscalls.MS_RDONLY)

    def mount(self, target: str) -> None:
        sc = syscalls.current()
        flags, data = parse_options(self.options)
        target = os.path.abspath(target)
        if flags & syscalls.MS_BIND:
            sc.mount(self.source, target, None, flags & (syscalls.MS_BIND | syscalls.MS_REC))
            # a bind mount ignores every other flag until it is remounted
            rest = flags & ~(syscalls.MS_BIND | syscalls.MS_REC)
            if rest:
                try:
                    sc.mount(None, target, None, syscalls.MS_REMOUNT | syscalls.MS_BIND | rest)
                except OSError:
                    unmount(target)
                    raise
            return
        joined = ",".join(data)
        if self.type == "overlay" and len(joined) >= _page_size():
            _mount_overlay_relative(self.source, target, flags, data)
            return
        sc.mount(self.source, target, self.type, flags, joined or None)


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount each of `mounts` on `target` in order (containerd's mount.All)."""
    done = 0
    try:
        for m in mounts:
            m.mount(target)
            done += 1
    except BaseException:
        for _ in range(done):
            unmount(target)
        raise


def unmount(target: str, flags: int = 0) -> None:
    """Unmount `target`; if it is busy, detach it (MNT_DETACH) so it goes away when free."""
    sc = syscalls.current()
    try:
        sc.umount2(target, flags)
    except OSError as exc:
        if exc.errno != errno.EBUSY or flags & syscalls.MNT_DETACH:
            raise
        sc.umount2(target, flags | syscalls.MNT_DETACH)


def unmount_all(target: str) -> None:
    """Unmount every mount stacked on `target` (stops at EINVAL: not a mount point)."""
    for _ in range(1000):
        try:
            unmount(target)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise


def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def _mount_overlay_relative(source: str, target: str, flags: int, data: list[str]) -> None:
    """Mount an overlay whose option string is longer than a page.

    The kernel copies at most one page of mount data, so a deep chain of
    lowerdirs with absolute paths doesn't fit. The trick containerd and Docker
    use: chdir into the directory the layer paths share and pass them relative
    to it. chdir changes the whole process's working directory, which would race
    with other threads, so the mount happens in a forked child that does only
    chdir + mount(2) and reports errno as its exit status.
    """
    paths: list[str] = []
    for opt in data:
        k, _, v = opt.partition("=")
        if k == "lowerdir":
            paths.extend(v.split(":"))
        elif k in ("upperdir", "workdir"):
            paths.append(v)
    base = os.path.commonpath(paths) if paths else "/"
    if base in paths:  # a path must stay non-empty relative to base
        base = os.path.dirname(base)

    def rel(p: str) -> str:
        return os.path.relpath(p, base)

    out: list[str] = []
    for opt in data:
        k, _, v = opt.partition("=")
        if k == "lowerdir":
            out.append("lowerdir=" + ":".join(rel(p) for p in v.split(":")))
        elif k in ("upperdir", "workdir"):
            out.append(f"{k}={rel(v)}")
        else:
            out.append(opt)
    joined = ",".join(out)
    if len(joined) >= _page_size():
        raise OSError(
            errno.E2BIG,
            f"overlay mount options are {len(joined)} bytes even with relative paths "
            f"(limit {_page_size()}): too many layers",
        )
    sc = syscalls.current()
    pid = os.fork()
    if pid == 0:  # child: only chdir + mount, then _exit
        code = 0
        try:
            os.chdir(base)
            sc.mount(source, target, "overlay", flags, joined)
        except OSError as exc:
            code = exc.errno or 1
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        err = code if code > 0 else errno.EINTR
        raise OSError(err, f"mount overlay on {target} (relative to {base}): {os.strerror(err)}")
