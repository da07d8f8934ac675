"""The file system `cp` sees in a container: its root file system with the
container's volumes and bind mounts over it, as the container itself sees them.

On the host, a container's rootfs (mounted while it runs, or its snapshot
mounted for the copy) shows no volume: the runtime mounts those inside the
container's mount namespace only. So a container path is resolved against the
mount list of the container's record (the longest mount destination that is a
prefix of the path wins) and reached in that mount's source directory: a named
volume's `volumes/<name>/_data` or a bind mount's host directory. Docker does
the same, for running and stopped containers alike.

Every directory is opened through directory fds from the root of the file
system that holds it (the rootfs or a mount source) without following links;
a symlink is resolved in the container's scope (`/` is the container root,
`..` stops there) and the path it leads to is located against the mounts
again. So no link in a volume can lead to a host file outside that volume's
source, the rootfs, or another of the container's mounts. tmpfs mounts exist
only inside a running container; as with Docker, `cp` does not see them.
"""

from __future__ import annotations

import os
import posixpath
import stat

from dockyard.engine.commit import TreeWalker, read_xattrs
from dockyard.engine.containers import EngineError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import tarfile
    from typing import Any

    from dockyard.engine.containers import Container, Engine
    from dockyard.image.layers import _Root

_MAX_LINKS = 255


class ViewError(EngineError):
    """A mount `cp` needs can't be reached (its source is gone, or not a directory)."""


def _real(parts: list[str]) -> list[str]:
    return [p for p in parts if p not in ("", ".")]


class ViewMount:
    """One volume or bind mount of the container: destination components and source."""

    def __init__(self, record: dict[str, Any], device: str = "") -> None:
        self.kind = str(record.get("Type") or "")
        self.dest = _real(posixpath.normpath(str(record.get("Destination") or "/")).split("/"))
        self.source = str(record.get("Source") or "")
        self.rw = bool(record.get("RW", True))
        self.name = str(record.get("Name") or self.source)
        self.device = device  # a volume backed by a mount of its own: not on the host
        self.root: _Root | None = None
        self.file = False  # a bind-mounted file, not a directory

    @property
    def path(self) -> str:
        return "/" + "/".join(self.dest)


class View:
    """A container's rootfs (`top`, a host directory) with its mounts; close() it."""

    def __init__(self, top: str, mounts: list[ViewMount]) -> None:
        from dockyard.image.layers import _Root

        self.rootfs = _Root(top)
        # longest destination first: the first that covers a path is the one that shows
        self.mounts = sorted(mounts, key=lambda m: -len(m.dest))
        for mount in self.mounts:
            if mount.kind == "bind":
                mount.file = os.path.exists(mount.source) and not os.path.isdir(mount.source)

    def close(self) -> None:
        self.rootfs.close()
        for mount in self.mounts:
            if mount.root is not None:
                mount.root.close()
                mount.root = None

    # ------------------------------------------------------------ where a path is

    def mount_at(self, names: list[str]) -> ViewMount | None:
        """The mount whose destination is exactly `names`."""
        return next((m for m in self.mounts if m.dest == names), None)

    def covering(self, names: list[str]) -> tuple[ViewMount | None, list[str]]:
        """(mount that shows `names`, or None for the rootfs; the path inside it)."""
        for mount in self.mounts:
            if names[: len(mount.dest)] == mount.dest:
                return mount, names[len(mount.dest) :]
        return None, names

    def root_of(self, mount: ViewMount | None) -> _Root:
        if mount is None:
            return self.rootfs
        if mount.root is None:
            from dockyard.image.layers import LayerError, _Root

            if mount.device:
                raise ViewError(
                    f"volume {mount.name} at {mount.path} is mounted from {mount.device}"
                    " inside the container: cp can't reach it"
                )
            try:
                mount.root = _Root(mount.source)
            except LayerError as exc:
                raise ViewError(f"the {mount.kind} mounted at {mount.path}: {exc}") from None
        return mount.root

    # ------------------------------------------------------------ reaching it

    def open_dir(self, names: list[str]) -> int | None:
        """An fd of the directory `names` (canonical), or None when it is not one."""
        mount, rel = self.covering(names)
        if mount is not None and mount.file:
            return None
        opened = self.root_of(mount).walk(rel, "", create=False, follow=False)
        return None if opened is None else opened[0]

    def lstat(self, names: list[str]) -> os.stat_result | None:
        """What is at `names` (canonical; a final symlink not followed), None if missing."""
        mount, rel = self.covering(names)
        if mount is not None and mount.file:
            return os.stat(mount.source) if not rel else None
        if not rel:
            return os.fstat(self.root_of(mount).fd)
        opened = self.root_of(mount).walk(rel[:-1], "", create=False, follow=False)
        if opened is None:
            return None
        try:
            return os.lstat(rel[-1], dir_fd=opened[0])
        except FileNotFoundError:
            return None
        finally:
            os.close(opened[0])

    def parent_and_leaf(self, names: list[str]) -> tuple[int, str] | None:
        """(fd of the directory holding `names`, its name there); leaf "" is the
        directory fd itself (the container root or a mount's root)."""
        mount, rel = self.covering(names)
        if mount is not None and mount.file:
            source = os.path.realpath(mount.source)
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            return os.open(os.path.dirname(source), flags), os.path.basename(source)
        root = self.root_of(mount)
        if not rel:
            return os.dup(root.fd), ""
        opened = root.walk(rel[:-1], "", create=False, follow=False)
        return None if opened is None else (opened[0], rel[-1])

    def resolve(self, path: str, follow_last: bool) -> list[str] | None:
        """The canonical components of `path` in the container, symlinks resolved in scope.

        The last component may be missing (the caller checks), or a symlink when not
        `follow_last`. None when a parent is missing or not a directory.
        """
        todo = list(reversed(path.split("/")))
        names: list[str] = []
        links = 0
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if names:
                    names.pop()
                continue
            last = not _real(todo)
            st = self.lstat([*names, comp])
            if st is None:
                if last:
                    names.append(comp)
                    return names
                return None
            if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                links += 1
                if links > _MAX_LINKS:
                    raise ViewError(f"{path}: too many levels of symbolic links")
                dest = self._readlink([*names, comp])
                if dest is None:
                    return None  # changed meanwhile
                if dest.startswith("/"):
                    names.clear()
                todo.extend(reversed(dest.split("/")))
                continue
            if not last and not stat.S_ISDIR(st.st_mode):
                return None
            names.append(comp)
        return names

    def _readlink(self, names: list[str]) -> str | None:
        found = self.parent_and_leaf(names)
        if found is None:
            return None
        fd, leaf = found
        try:
            return os.readlink(leaf, dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)

    def walker(self, tar: tarfile.TarFile, names: list[str], top: str) -> TreeWalker:
        """A tar walker for the tree at `names`, tarred as `top`, that descends into the
        mounts below it (what the rootfs has under a mount point stays hidden)."""
        return _MountWalker(tar, self, names, top)


class _MountWalker(TreeWalker):
    """TreeWalker that shows each mount below the tarred tree in place of what the
    rootfs has at its mount point."""

    def __init__(self, tar: tarfile.TarFile, view: View, names: list[str], top: str) -> None:
        super().__init__(tar)
        self.view = view
        self.base = names
        self.top = len(_real(top.split("/")))

    def _below(self, rel: str) -> dict[str, ViewMount]:
        """Mounts right below the directory tarred as `rel`, by entry name."""
        where = self.base + _real(rel.split("/"))[self.top :]
        return {
            m.dest[-1]: m
            for m in self.view.mounts
            if len(m.dest) == len(where) + 1 and m.dest[:-1] == where
        }

    def entries(self, dir_fd: int, rel: str) -> list[str]:
        hidden = self._below(rel)
        return [e for e in super().entries(dir_fd, rel) if e not in hidden]

    def directory(self, dir_fd: int, rel: str) -> None:
        import tarfile

        super().directory(dir_fd, rel)
        for entry, mount in sorted(self._below(rel).items()):
            name = f"{rel}/{entry}" if rel else entry
            if mount.file:
                found = self.view.parent_and_leaf(mount.dest)
                if found is not None:
                    try:
                        self.regular(found[0], found[1], name)
                    finally:
                        os.close(found[0])
                continue
            root = self.view.root_of(mount)
            info = self.info(name, os.fstat(root.fd), read_xattrs(root.fd))
            info.type = tarfile.DIRTYPE
            self.tar.addfile(info)
            self.directory(root.fd, name)


def container_mounts(engine: Engine, container: Container) -> list[ViewMount]:
    """The volumes and bind mounts of the container's record (tmpfs is not on the host)."""
    found: list[ViewMount] = []
    store = None
    for record in container.config.get("Mounts") or []:
        kind = record.get("Type")
        if kind not in ("volume", "bind") or not record.get("Source"):
            continue
        device = ""
        if kind == "volume" and record.get("Name"):
            from dockyard.engine.volumes import VolumeStore

            store = store or VolumeStore(engine.root, engine.conn)
            volume = store.find(str(record["Name"]))
            device = str((volume.options if volume else {}).get("type") or "")
        found.append(ViewMount(record, device))
    return found
