"""`docker commit` and `docker export`: a container's file system → an image / a tar.

commit: the container's writable layer (the overlay upper dir of snapshot
`container-<id>`) becomes a new layer blob (`layer_diff.diff_layer`, whiteouts
included) on top of the image's layers; the image config gets `--change`
lines, a history entry and the new diff_id. A running container is frozen
while its upper dir is read, as Docker does.

export: a read-only overlay of the container's layers (its upper dir as the
top lower, so whiteouts and opaque dirs read as the container sees them) is
mounted under `<root>/tmp/` and written as one tar. The tree is walked with
directory fds and O_NOFOLLOW, so a running container that swaps a file for a
symlink can't make the export read a host file.
"""

from __future__ import annotations

import os
import stat
import time

from dockyard.oci import image_spec as spec

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import tarfile
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from typing import Any, BinaryIO

    from dockyard.engine.containers import Container, Engine
    from dockyard.image.store import Image
    from dockyard.storage.snapshots import Mount

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SKIPPED_XATTRS = ("trusted.overlay.", "user.overlay.")


def layer_dirs(engine: Engine, container: Container) -> tuple[str, list[str], list[Mount]]:
    """(upper dir, lower dirs top first, the snapshot's mounts) of a container."""
    mounts = engine.images.snapshots.mounts(f"container-{container.id}")
    upper, lowers = "", []
    for m in mounts:
        if m.type == "overlay":
            for opt in m.options:
                key, _, value = opt.partition("=")
                if key == "upperdir":
                    upper = value
                elif key == "lowerdir":
                    lowers = value.split(":")
        elif "bind" in m.options:
            upper = m.source
    if not upper:
        from dockyard.image.store import ImageError

        raise ImageError(f"container {container.id[:12]} has no writable layer")
    return upper, lowers, mounts


def _frozen(engine: Engine, container: Container, pause: bool) -> AbstractContextManager[None]:
    import contextlib

    @contextlib.contextmanager
    def frozen() -> Iterator[None]:
        from dockyard.runtime import container as runtime
        from dockyard.runtime.state import StateRoot

        if not pause or container.status() != "running":
            yield
            return
        root = StateRoot(engine.runtime_root)
        runtime.pause(root, container.id)
        try:
            yield
        finally:
            runtime.resume(root, container.id)

    return frozen()


def commit(
    engine: Engine,
    name: str,
    reference: str | None = None,
    changes: list[str] | None = None,
    message: str = "",
    author: str = "",
    pause: bool = True,
) -> Image:
    """Make an image of container `name`'s file system; tag it `reference` if given."""
    from dockyard.image import reference as refs
    from dockyard.image.changes import apply_changes
    from dockyard.image.layer_diff import diff_layer

    container = engine.get(name)
    ref = refs.parse(reference) if reference else None
    parent = engine.images.get(container.image_id)
    # Docker commits the container's configuration: the image's, with what `run` changed.
    base = dict(parent.config.get("config") or {})
    for key in ("Cmd", "Entrypoint", "Env", "WorkingDir", "User", "Labels"):
        if container.config.get(key) is not None:
            base[key] = container.config[key]
    container_config = apply_changes(base, list(changes or []))
    upper, lowers, _ = layer_dirs(engine, container)
    from dockyard.storage.leases import CONTENT

    # The lease keeps the new layer from a concurrent collection until the image holds it.
    with engine.images.leases.create() as lease:
        with _frozen(engine, container, pause), engine.images.content.writer() as writer:
            diff_id = diff_layer(upper, writer, lowers=lowers)  # type: ignore[arg-type]
            size = writer.offset
            with lease.guard():
                digest = writer.commit()
                lease.add(CONTENT, digest)
        if digest != diff_id:
            from dockyard.image.store import ImageError

            raise ImageError(f"layer digest {digest} differs from its diff_id {diff_id}")
        import json

        manifest = json.loads(engine.images.content.read(parent.manifest_digest))
        layers: list[dict[str, Any]] = list(manifest.get("layers") or [])
        layers.append(spec.descriptor(spec.MEDIA_LAYER, digest, size))
        now = spec.rfc3339(time.time())
        config: dict[str, Any] = json.loads(json.dumps(parent.config))
        config["created"] = now
        config["config"] = container_config
        config["container"] = container.id
        if author:
            config["author"] = author
        else:
            config.pop("author", None)
        config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        config["rootfs"]["diff_ids"] = [*parent.diff_ids, diff_id]
        entry: dict[str, Any] = {"created": now, "created_by": " ".join(container.command)}
        if author:
            entry["author"] = author
        if message:
            entry["comment"] = message
        config["history"] = [*(config.get("history") or []), entry]
        return engine.images.add_image(config, layers, [ref] if ref else [], lease=lease)


# ---------------------------------------------------------------------------- export


def read_only_view(mounts: list[Mount]) -> list[Mount]:
    """The same layers mounted read-only: the upper dir joins the lowers, no work dir."""
    from dockyard.storage.snapshots import Mount

    view: list[Mount] = []
    for m in mounts:
        if m.type == "overlay":
            upper, lower, rest = "", "", []
            for opt in m.options:
                key, _, value = opt.partition("=")
                if key == "upperdir":
                    upper = value
                elif key == "lowerdir":
                    lower = value
                elif key not in ("workdir", "rw", "ro"):
                    rest.append(opt)
            lowers = ":".join(d for d in (upper, lower) if d)
            view.append(Mount("overlay", "overlay", ["ro", *rest, f"lowerdir={lowers}"]))
        else:
            options = [o for o in m.options if o not in ("rw", "ro")]
            view.append(Mount(m.type, m.source, [*options, "ro"]))
    return view


def export(engine: Engine, name: str, out: BinaryIO) -> None:
    """Write container `name`'s merged root file system to `out` as a tar."""
    import secrets

    from dockyard.storage.snapshots import mount_all, unmount_all

    container = engine.get(name)
    _, _, mounts = layer_dirs(engine, container)
    target = os.path.join(engine.root, "tmp", f"export-{container.id[:12]}-{secrets.token_hex(4)}")
    os.makedirs(target, 0o700)
    try:
        mount_all(read_only_view(mounts), target)
        try:
            write_tree(target, out)
        finally:
            unmount_all(target)
    finally:
        os.rmdir(target)


def write_tree(root: str, out: BinaryIO) -> None:
    """Tar the tree at `root` (not following any symlink) to `out`."""
    import tarfile

    from dockyard.image.layers import _io

    fd = os.open(root, _DIR_FLAGS)
    try:
        with tarfile.open(
            fileobj=_io(out),
            mode="w|",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tar:
            TreeWalker(tar).directory(fd, "")
    finally:
        os.close(fd)


class TreeWalker:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.inodes: dict[tuple[int, int], str] = {}

    def info(self, name: str, st: os.stat_result, xattrs: dict[str, bytes]) -> tarfile.TarInfo:
        from dockyard.image.layer_diff import tar_header

        return tar_header(name, st, xattrs)

    def entries(self, dir_fd: int, rel: str) -> list[str]:
        """The names `directory` tars, sorted (a subclass may hide some)."""
        return sorted(os.listdir(dir_fd))

    def directory(self, dir_fd: int, rel: str) -> None:
        import tarfile

        for entry in self.entries(dir_fd, rel):
            name = f"{rel}/{entry}" if rel else entry
            try:
                st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile (a running container)
            mode = st.st_mode
            if stat.S_ISSOCK(mode):
                continue
            if stat.S_ISDIR(mode):
                try:
                    fd = os.open(entry, _DIR_FLAGS, dir_fd=dir_fd)
                except (FileNotFoundError, NotADirectoryError, OSError):
                    continue
                try:
                    info = self.info(name, os.fstat(fd), read_xattrs(fd))
                    info.type = tarfile.DIRTYPE
                    self.tar.addfile(info)
                    self.directory(fd, name)
                finally:
                    os.close(fd)
                continue
            if not stat.S_ISDIR(mode) and st.st_nlink > 1:
                first = self.inodes.setdefault((st.st_dev, st.st_ino), name)
                if first != name:
                    info = self.info(name, st, {})
                    info.type, info.linkname = tarfile.LNKTYPE, first
                    self.tar.addfile(info)
                    continue
            if stat.S_ISREG(mode):
                self.regular(dir_fd, entry, name)
            elif stat.S_ISLNK(mode):
                info = self.info(name, st, {})
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(entry, dir_fd=dir_fd)
                self.tar.addfile(info)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                info = self.info(name, st, {})
                if stat.S_ISFIFO(mode):
                    info.type = tarfile.FIFOTYPE
                else:
                    info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                    info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                self.tar.addfile(info)

    def regular(self, dir_fd: int, entry: str, name: str) -> None:
        import tarfile

        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return  # replaced by a symlink or removed meanwhile: never followed
        with open(fd, "rb") as data:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            info = self.info(name, st, read_xattrs(fd))
            info.type, info.size = tarfile.REGTYPE, st.st_size
            self.tar.addfile(info, _Exact(data, st.st_size))


def read_xattrs(fd: int) -> dict[str, bytes]:
    try:
        names = os.listxattr(fd)
    except OSError:
        return {}
    found: dict[str, bytes] = {}
    for name in sorted(names):
        if name.startswith(_SKIPPED_XATTRS):
            continue
        try:
            found[name] = os.getxattr(fd, name)
        except OSError:
            continue
    return found


class _Exact:
    """Exactly `size` bytes of `data`: padded with zeros if the file shrank meanwhile."""

    def __init__(self, data: BinaryIO, size: int) -> None:
        self._data = data
        self._left = size

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._left:
            size = self._left
        chunk = self._data.read(size)
        if len(chunk) < size:
            chunk += bytes(size - len(chunk))
        self._left -= len(chunk)
        return chunk
