"""Building the container's file system view, run in init inside its mount namespace.

Every path taken from config.json is resolved inside the rootfs without letting a
symlink lead out of it (filepath-securejoin's rule), and the mount itself goes to
the `/proc/self/fd/N` of an O_PATH handle checked to be inside the rootfs, so a
symlink swapped in between the check and the mount can't redirect it.
"""

from __future__ import annotations

import os
import stat

from dockyard.runtime import syscalls as sc
from dockyard.runtime.errors import RuntimeFailure

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

# option -> (clear?, flag)
FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID),
    "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV),
    "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC),
    "exec": (True, sc.MS_NOEXEC),
    "sync": (False, sc.MS_SYNCHRONOUS),
    "async": (True, sc.MS_SYNCHRONOUS),
    "dirsync": (False, sc.MS_DIRSYNC),
    "remount": (False, sc.MS_REMOUNT),
    "mand": (False, sc.MS_MANDLOCK),
    "nomand": (True, sc.MS_MANDLOCK),
    "atime": (True, sc.MS_NOATIME),
    "noatime": (False, sc.MS_NOATIME),
    "diratime": (True, sc.MS_NODIRATIME),
    "nodiratime": (False, sc.MS_NODIRATIME),
    "bind": (False, sc.MS_BIND),
    "rbind": (False, sc.MS_BIND | sc.MS_REC),
    "relatime": (False, sc.MS_RELATIME),
    "norelatime": (True, sc.MS_RELATIME),
    "strictatime": (False, sc.MS_STRICTATIME),
    "nostrictatime": (True, sc.MS_STRICTATIME),
    "lazytime": (False, sc.MS_LAZYTIME),
    "nolazytime": (True, sc.MS_LAZYTIME),
    "nosymfollow": (False, sc.MS_NOSYMFOLLOW),
    "symfollow": (True, sc.MS_NOSYMFOLLOW),
}

PROPAGATION = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}

# Flags a less privileged mount namespace may not clear on a bind remount.
_LOCKABLE = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_RDONLY
_ST_FLAGS = {1: sc.MS_RDONLY, 2: sc.MS_NOSUID, 4: sc.MS_NODEV, 8: sc.MS_NOEXEC}


def parse_options(options: list[str]) -> tuple[int, list[int], str]:
    """(mount flags, propagation flags to apply after, data string)."""
    flags = 0
    propagation: list[int] = []
    data: list[str] = []
    for opt in options:
        if opt in FLAGS:
            clear, flag = FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in PROPAGATION:
            propagation.append(PROPAGATION[opt])
        elif opt in ("tmpcopyup", "idmap", "ridmap", "copy-symlink"):
            continue  # crun/podman extensions that need no kernel flag here
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


def secure_join(root: str, unsafe: str) -> str:
    """`unsafe` resolved as if `root` were `/`: symlinks can't climb out of root."""
    parts = [p for p in unsafe.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 255:
                raise RuntimeFailure(f"too many symlinks resolving {unsafe} in the rootfs")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def make_mount_point(root: str, dest: str, directory: bool) -> str:
    """Create dest inside root (dirs for every missing component); return the host path."""
    path = secure_join(root, dest)
    rel = os.path.relpath(path, root)
    current = root
    parts = [] if rel == "." else rel.split("/")
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        last = i == len(parts) - 1
        if os.path.lexists(current):
            continue
        if last and not directory:
            os.close(
                os.open(current, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755)
            )
        else:
            os.mkdir(current, 0o755)
    return path


class _Target:
    """An O_PATH handle on a mount point, re-checked to be inside root."""

    def __init__(self, root: str, path: str) -> None:
        self.fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        real = os.readlink(f"/proc/self/fd/{self.fd}")
        if not _inside(root, real):
            os.close(self.fd)
            raise RuntimeFailure(f"mount point {path} resolves to {real}, outside the rootfs")
        self.proc_path = f"/proc/self/fd/{self.fd}"

    def __enter__(self) -> str:
        return self.proc_path

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def locked_flags(path: str) -> int:
    """Flags of the mount under path that a bind remount must keep."""
    st_flag = os.statvfs(path).f_flag
    return sum(flag for bit, flag in _ST_FLAGS.items() if st_flag & bit)


def mount_entry(root: str, bundle: str, entry: dict[str, Any], cgroup: dict[str, Any]) -> None:
    """Mount one config.json `mounts` entry inside root."""
    options = list(entry.get("options") or [])
    kind = entry.get("type") or ""
    flags, propagation, data = parse_options(options)
    dest = entry["destination"]
    if kind == "bind":
        flags |= sc.MS_BIND
    syscalls = sc.current()
    if flags & sc.MS_BIND:
        source = entry.get("source") or ""
        if not source.startswith("/"):
            source = os.path.join(bundle, source)
        if not os.path.exists(source):
            raise RuntimeFailure(f"mount {dest}: bind source {source} does not exist")
        target = make_mount_point(root, dest, os.path.isdir(source))
        with _Target(root, target) as where:
            syscalls.mount(source, where, None, flags & (sc.MS_BIND | sc.MS_REC))
        extra = flags & ~(sc.MS_BIND | sc.MS_REC)
        if extra:
            # Options of a bind mount only take effect through a remount (of the new
            # mount: a fresh handle, the old one still points below it).
            with _Target(root, target) as where:
                keep = locked_flags(where) & ~sc.MS_RDONLY
                syscalls.mount(None, where, None, sc.MS_BIND | sc.MS_REMOUNT | extra | keep)
    elif kind in ("cgroup", "cgroup2"):
        target = make_mount_point(root, dest, True)
        _mount_cgroups(root, target, flags, cgroup)
    else:
        target = make_mount_point(root, dest, True)
        source = entry.get("source") or kind
        with _Target(root, target) as where:
            try:
                syscalls.mount(source, where, kind, flags, data)
            except OSError as err:
                if not (kind == "sysfs" and err.errno == 1):
                    raise RuntimeFailure(f"mount {kind} on {dest}: {err.strerror}") from None
                # sysfs of a network namespace we don't own: fall back like runc.
                syscalls.mount("/sys", where, None, sc.MS_BIND | sc.MS_REC)
                _remount_ro(root, target)
    if propagation:
        with _Target(root, target) as where:
            for prop in propagation:
                syscalls.mount(None, where, None, prop)


def _remount_ro(root: str, target: str) -> None:
    with _Target(root, target) as where:
        remount = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY
        sc.current().mount(None, where, None, remount | locked_flags(where))


def _mount_cgroups(root: str, target: str, flags: int, cgroup: dict[str, Any]) -> None:
    """The container's own cgroups at /sys/fs/cgroup (read-only when asked)."""
    syscalls = sc.current()
    ro = flags & sc.MS_RDONLY
    base = flags & ~sc.MS_RDONLY
    if cgroup.get("mode") == "v2":
        with _Target(root, target) as where:
            if cgroup.get("namespace"):
                syscalls.mount("cgroup2", where, "cgroup2", flags)
                return
            src = os.path.join(cgroup["root"], cgroup["path"].lstrip("/"))
            syscalls.mount(src, where, None, sc.MS_BIND | sc.MS_REC)
        if ro:
            _remount_ro(root, target)
        return
    with _Target(root, target) as where:
        syscalls.mount("tmpfs", where, "tmpfs", base, "mode=755")
    for name, host_dir in cgroup.get("hierarchies", {}).items():
        sub = make_mount_point(root, os.path.join(os.path.relpath(target, root), name), True)
        with _Target(root, sub) as where:
            src = os.path.join(host_dir, cgroup["path"].lstrip("/"))
            if not os.path.isdir(src):
                continue
            syscalls.mount(src, where, None, sc.MS_BIND | sc.MS_REC)
        if ro:
            _remount_ro(root, sub)
    if ro:
        with _Target(root, target) as where:
            syscalls.mount(None, where, None, sc.MS_REMOUNT | flags, "mode=755")


def prepare_root(rootfs: str, propagation: str | None) -> None:
    """Make rootfs a mount point whose parents don't share, as pivot_root needs."""
    syscalls = sc.current()
    prop = PROPAGATION.get(propagation or "", sc.MS_SLAVE | sc.MS_REC)
    if prop & sc.MS_SHARED:
        prop = sc.MS_SLAVE | sc.MS_REC  # set after pivot_root, see finish_propagation
    syscalls.mount(None, "/", None, prop)
    syscalls.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC)


def pivot(rootfs: str, no_pivot: bool) -> None:
    syscalls = sc.current()
    os.chdir(rootfs)
    if no_pivot:
        syscalls.mount(rootfs, "/", None, sc.MS_MOVE)
        os.chroot(".")
    else:
        # pivot_root(".", ".") stacks the old root under the new one; detach it.
        syscalls.pivot_root(".", ".")
        syscalls.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
        syscalls.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def finish_propagation(propagation: str | None) -> None:
    prop = PROPAGATION.get(propagation or "")
    if prop and prop & sc.MS_SHARED:
        sc.current().mount(None, "/", None, prop)


def readonly_root() -> None:
    flags = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY
    sc.current().mount(None, "/", None, flags | locked_flags("/"))


def mask_paths(paths: list[str]) -> None:
    """Hide paths: /dev/null over files, an empty read-only tmpfs over directories."""
    syscalls = sc.current()
    for path in paths:
        try:
            is_dir = os.path.isdir(path) and not os.path.islink(path)
            if is_dir:
                syscalls.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, "size=0k")
            elif os.path.lexists(path):
                syscalls.mount("/dev/null", path, None, sc.MS_BIND)
        except OSError as err:
            if err.errno not in (2, 20):  # gone or not a directory: nothing to hide
                raise RuntimeFailure(f"cannot mask {path}: {err.strerror}") from None


def readonly_paths(paths: list[str]) -> None:
    syscalls = sc.current()
    for path in paths:
        if not os.path.exists(path):
            continue
        syscalls.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
        flags = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC
        syscalls.mount(None, path, None, flags | locked_flags(path))
