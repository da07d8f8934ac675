"""Apply OCI image layers (image-spec layer.md) onto a directory, safely.

A layer is a tar changeset, plain or gzip/zstd compressed. Whiteouts `.wh.<name>`
delete an entry of the layers below; `.wh..wh..opq` empties a directory of
everything not in this same layer. Semantics follow Docker/containerd.

Safety: nothing is ever written outside `target`. Member names are normalized
the way Docker does (leading `/` and `./` stripped; `..` that climbs out is
refused); every parent directory is opened component by component relative to a
directory fd with O_NOFOLLOW, and a symlink met on the way is resolved *inside*
target (like Docker's FollowSymlinkInScope: `/` is target, `..` stops at target),
never by the kernel. Entries are created with `dir_fd` and never followed; a
member that replaces a symlink replaces the link itself.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import hashlib
    import tarfile
    from typing import BinaryIO

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_ZEROS = bytes(4096)
_MAX_LINKS = 255
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
_XATTR_PREFIX = "SCHILY.xattr."
# Overlay's own xattrs would change what an overlay mount shows; a layer may not set them.
_SKIPPED_XATTRS = ("trusted.overlay.", "user.overlay.")


def _io(stream: object) -> BinaryIO:
    """Duck-typed streams (read/write only) where typeshed wants a full BinaryIO."""
    return stream  # type: ignore[return-value]


class LayerError(Exception):
    """A layer that cannot be applied; the message names the member and the problem."""


# --- decompression ---------------------------------------------------------------------


class _Prefixed:
    """A read-only stream that returns `head` and then the rest of `stream`."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._stream.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._stream.read(size)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Leaves the wrapped stream open: it belongs to the caller."""


def open_layer(stream: BinaryIO) -> BinaryIO:
    """The uncompressed tar stream of a layer; gzip and zstd are detected by magic bytes."""
    head = b""
    while len(head) < 4:
        chunk = stream.read(4 - len(head))
        if not chunk:
            break
        head += chunk
    raw = _Prefixed(head, stream)
    reader: object
    if head.startswith(_GZIP_MAGIC):
        from isal import igzip

        reader = igzip.IGzipFile(fileobj=_io(raw), mode="rb")
    elif head.startswith(_ZSTD_MAGIC):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(
            _io(raw), read_across_frames=True, closefd=False
        )
    else:
        reader = raw
    return _io(reader)


class _Reading:
    """Read-through that counts (and optionally hashes) the bytes read."""

    def __init__(self, stream: BinaryIO, hasher: hashlib._Hash | None) -> None:
        self._stream = stream
        self._hasher = hasher
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._stream.read(size)
        except (OSError, EOFError):
            raise
        except Exception as exc:  # zstandard.ZstdError and friends
            raise OSError(f"cannot decompress layer: {exc}") from exc
        self.count += len(data)
        if self._hasher is not None:
            self._hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


# --- names and safe directory walking -------------------------------------------------


def normalize_name(name: str) -> list[str]:
    """The path components of a member name, as Docker cleans it; [] is target itself.

    A leading `/` is dropped (an absolute name lands inside target, and `..` at the
    root stays at the root, as with filepath.Clean); a relative name that climbs
    above target with `..` is refused.
    """
    if "\0" in name:
        raise LayerError(f"{name!r}: NUL in member name")
    absolute = name.startswith("/")
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts:
                parts.pop()
            elif not absolute:
                raise LayerError(f"{name}: path climbs out of the target directory")
            continue
        parts.append(comp)
    return parts


def _key(names: list[str]) -> str:
    return "/".join(names)


class _Root:
    """target opened once; every path below it is reached through directory fds."""

    def __init__(self, target: str) -> None:
        try:
            self.fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise LayerError(f"{target}: cannot open target: {exc.strerror}") from None

    def close(self) -> None:
        os.close(self.fd)

    def walk(
        self, parts: list[str], member: str, *, create: bool, follow: bool = True
    ) -> tuple[int, list[str]] | None:
        """Open the directory `parts` names; returns (fd, canonical components).

        Missing directories are made (0755) when `create`, else None is returned.
        A symlink is resolved inside target when `follow`, else None is returned.
        A component that is neither directory nor symlink is an error when
        `create`, else None.
        """
        fds: list[int] = [os.dup(self.fd)]
        names: list[str] = []
        todo = list(reversed(parts))
        links = 0
        try:
            while todo:
                comp = todo.pop()
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if names:
                        names.pop()
                        os.close(fds.pop())
                    continue
                try:
                    fd = os.open(comp, _DIR_FLAGS, dir_fd=fds[-1])
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        raise
                    try:
                        st = os.lstat(comp, dir_fd=fds[-1])
                    except FileNotFoundError:
                        if not create:
                            return None
                        os.mkdir(comp, 0o755, dir_fd=fds[-1])
                        fd = os.open(comp, _DIR_FLAGS, dir_fd=fds[-1])
                        os.fchmod(fd, 0o755)
                    else:
                        where = _key([*names, comp])
                        if not stat.S_ISLNK(st.st_mode):
                            if not create:
                                return None
                            raise LayerError(f"{member}: {where} is not a directory") from None
                        if not follow:
                            return None
                        links += 1
                        if links > _MAX_LINKS:
                            raise LayerError(f"{member}: too many levels of symlinks") from None
                        dest = os.readlink(comp, dir_fd=fds[-1])
                        if dest.startswith("/"):
                            while len(fds) > 1:
                                os.close(fds.pop())
                            names.clear()
                        todo.extend(reversed(dest.split("/")))
                        continue
                fds.append(fd)
                names.append(comp)
            return fds.pop(), names
        finally:
            for fd in fds:
                os.close(fd)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _remove(name: str, dir_fd: int, st: os.stat_result | None = None) -> None:
    """Remove `name` in `dir_fd` (recursively if a directory), never following links."""
    if st is None:
        st = _lstat(name, dir_fd)
        if st is None:
            return
    if stat.S_ISDIR(st.st_mode):
        import shutil

        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _check_leaf(leaf: str, member: str) -> None:
    if leaf in ("", ".", "..") or "/" in leaf:
        raise LayerError(f"{member}: invalid entry name {leaf!r}")


# --- applying --------------------------------------------------------------------------


def _ns(member: tarfile.TarInfo, key: str) -> int:
    """A PAX time (exact, as a decimal string) or the header's mtime, in nanoseconds."""
    value = member.pax_headers.get(key)
    if value is not None:
        try:
            from decimal import Decimal

            return int(Decimal(value) * 1_000_000_000)
        except ArithmeticError:
            pass
    return int(member.mtime) * 1_000_000_000


class _Applier:
    def __init__(self, root: _Root, tar: tarfile.TarFile, same_owner: bool) -> None:
        self.root = root
        self.tar = tar
        self.same_owner = same_owner
        self.unpacked: set[str] = set()
        # directories get their mode and times once everything inside them exists
        self.dirs: list[tuple[list[str], int, int, int]] = []

    def member(self, m: tarfile.TarInfo) -> None:
        parts = normalize_name(m.name)
        base = parts[-1] if parts else ""
        if parts and parts[0].startswith(WHITEOUT_META_PREFIX):
            # AUFS metadata (.wh..wh.plnk, .wh..wh.orph): not part of the tree. Like Docker,
            # this also skips an opaque marker for the layer root itself.
            return
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(m, parts)
            return
        if not parts:
            if not m.isdir():
                raise LayerError(f"{m.name}: the root of the layer must be a directory")
            self.attributes(m, self.root.fd, None)
            self.dirs.append(([], m.mode, _ns(m, "atime"), _ns(m, "mtime")))
            return
        opened = self.root.walk(parts[:-1], m.name, create=True)
        assert opened is not None
        parent, pnames = opened
        try:
            self.entry(m, parent, pnames, parts[-1])
        finally:
            os.close(parent)

    def entry(self, m: tarfile.TarInfo, parent: int, pnames: list[str], leaf: str) -> None:
        key_parts = [*pnames, leaf]
        if m.islnk():
            self.hardlink(m, parent, leaf)
            self.mark(key_parts)
            return
        old = _lstat(leaf, parent)
        if old is not None and not (m.isdir() and stat.S_ISDIR(old.st_mode)):
            _remove(leaf, parent, old)
            old = None
        if m.isdir():
            if old is None:
                os.mkdir(leaf, 0o700, dir_fd=parent)
            fd = os.open(leaf, _DIR_FLAGS, dir_fd=parent)
            try:
                self.attributes(m, fd, None)
            finally:
                os.close(fd)
            self.dirs.append((key_parts, m.mode, _ns(m, "atime"), _ns(m, "mtime")))
        elif m.isreg():
            fd = os.open(leaf, _FILE_FLAGS, 0o600, dir_fd=parent)
            try:
                self.contents(m, fd)
                self.attributes(m, fd, None)
                os.fchmod(fd, m.mode)
                self.xattrs(m, fd)
                os.utime(fd, ns=(_ns(m, "atime"), _ns(m, "mtime")))
            finally:
                os.close(fd)
        elif m.issym():
            os.symlink(m.linkname, leaf, dir_fd=parent)
            self.attributes(m, parent, leaf)
            self.xattrs(m, parent, leaf)
            self.times(m, parent, leaf)
        elif m.ischr() or m.isblk() or m.isfifo():
            if not m.isfifo():
                if not self.same_owner:
                    return  # devices need root; Docker skips them in a user namespace
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                device = os.makedev(m.devmajor, m.devminor)
            else:
                kind, device = stat.S_IFIFO, 0
            os.mknod(leaf, kind | 0o600, device, dir_fd=parent)
            self.attributes(m, parent, leaf)
            # fchmodat(AT_SYMLINK_NOFOLLOW) is not in Python 3.11; the node was just made
            # here by mknod, so following it cannot leave target (checked anyway)
            if not stat.S_ISLNK(os.lstat(leaf, dir_fd=parent).st_mode):
                os.chmod(leaf, m.mode, dir_fd=parent)
            self.xattrs(m, parent, leaf)
            self.times(m, parent, leaf)
        else:
            raise LayerError(f"{m.name}: unsupported member type {m.type!r}")
        self.mark(key_parts)

    def mark(self, names: list[str]) -> None:
        """Remember a path (and its parents) as coming from this layer, for opaque dirs."""
        for i in range(len(names), 0, -1):
            key = _key(names[:i])
            if key in self.unpacked:
                break
            self.unpacked.add(key)

    def contents(self, m: tarfile.TarInfo, fd: int) -> None:
        src = self.tar.extractfile(m)
        if src is None:
            raise LayerError(f"{m.name}: no file data")
        sparse = m.issparse()
        while chunk := src.read(_CHUNK):
            if not sparse:
                _write_all(fd, chunk)
                continue
            view = memoryview(chunk)
            for start in range(0, len(view), 4096):
                block = view[start : start + 4096]
                if block == _ZEROS[: len(block)]:
                    os.lseek(fd, len(block), os.SEEK_CUR)
                else:
                    _write_all(fd, block)
        if sparse:
            os.ftruncate(fd, m.size)

    def attributes(self, m: tarfile.TarInfo, fd: int, leaf: str | None) -> None:
        """Ownership (and for directories their xattrs): `fd` itself, or `leaf` in it."""
        if self.same_owner:
            if leaf is None:
                os.fchown(fd, m.uid, m.gid)
            else:
                os.chown(leaf, m.uid, m.gid, dir_fd=fd, follow_symlinks=False)
        if leaf is None and m.isdir():
            self.xattrs(m, fd)

    def xattrs(self, m: tarfile.TarInfo, fd: int, leaf: str | None = None) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith(_XATTR_PREFIX):
                continue
            name = key[len(_XATTR_PREFIX) :]
            if name.startswith(_SKIPPED_XATTRS):
                continue
            data = value.encode("utf-8", "surrogateescape")
            try:
                if leaf is None:
                    os.setxattr(fd, name, data)
                else:
                    os.setxattr(f"/proc/self/fd/{fd}/{leaf}", name, data, follow_symlinks=False)
            except OSError as exc:
                ignorable = exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)
                if exc.errno == errno.EPERM and not self.same_owner:
                    ignorable = True  # trusted.* and security.capability need root
                if not ignorable:
                    raise

    def times(self, m: tarfile.TarInfo, parent: int, leaf: str) -> None:
        times = (_ns(m, "atime"), _ns(m, "mtime"))
        os.utime(leaf, ns=times, dir_fd=parent, follow_symlinks=False)

    def hardlink(self, m: tarfile.TarInfo, parent: int, leaf: str) -> None:
        try:
            src_parts = normalize_name(m.linkname)
        except LayerError:
            raise LayerError(
                f"{m.name}: hard link target {m.linkname} climbs out of the target directory"
            ) from None
        if not src_parts:
            raise LayerError(f"{m.name}: hard link to the target directory itself")
        opened = self.root.walk(src_parts[:-1], m.name, create=False)
        if opened is None:
            raise LayerError(f"{m.name}: hard link target {m.linkname} does not exist")
        src_dir, _ = opened
        try:
            src_leaf = src_parts[-1]
            src = _lstat(src_leaf, src_dir)
            if src is None:
                raise LayerError(f"{m.name}: hard link target {m.linkname} does not exist")
            if stat.S_ISDIR(src.st_mode):
                raise LayerError(f"{m.name}: hard link target {m.linkname} is a directory")
            old = _lstat(leaf, parent)
            if old is not None:
                if (old.st_dev, old.st_ino) == (src.st_dev, src.st_ino):
                    return  # already this very file (or the link names itself)
                _remove(leaf, parent, old)
            try:
                os.link(
                    src_leaf, leaf, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False
                )
            except FileNotFoundError:
                raise LayerError(f"{m.name}: hard link target {m.linkname} is gone") from None
        finally:
            os.close(src_dir)

    def whiteout(self, m: tarfile.TarInfo, parts: list[str]) -> None:
        base = parts[-1]
        if base == WHITEOUT_OPAQUE:
            opened = self.root.walk(parts[:-1], m.name, create=False)
            if opened is not None:
                fd, names = opened
                try:
                    self.opaque(fd, names)
                finally:
                    os.close(fd)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # AUFS metadata (.wh..wh.plnk and friends): nothing to apply
        victim = base[len(WHITEOUT_PREFIX) :]
        _check_leaf(victim, m.name)
        opened = self.root.walk(parts[:-1], m.name, create=False)
        if opened is None:
            return
        fd, _ = opened
        try:
            _remove(victim, fd)
        finally:
            os.close(fd)

    def opaque(self, fd: int, names: list[str]) -> None:
        """Remove everything below the directory `fd` that this layer did not unpack."""
        for entry in os.listdir(fd):
            child = [*names, entry]
            st = _lstat(entry, fd)
            if st is None:
                continue
            if _key(child) not in self.unpacked:
                _remove(entry, fd, st)
            elif stat.S_ISDIR(st.st_mode):
                sub = os.open(entry, _DIR_FLAGS, dir_fd=fd)
                try:
                    self.opaque(sub, child)
                finally:
                    os.close(sub)

    def finish(self) -> None:
        """Directory modes and times, last: creating entries would change the times."""
        for names, mode, atime, mtime in reversed(self.dirs):
            if names:
                opened = self.root.walk(names, "", create=False, follow=False)
                if opened is None:
                    continue  # removed or replaced later in this layer
                fd = opened[0]
            else:
                fd = os.dup(self.root.fd)
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _apply(stream: BinaryIO, target: str, same_owner: bool, digest: bool) -> tuple[int, str]:
    import hashlib
    import tarfile

    hasher = hashlib.sha256() if digest else None
    reader = _Reading(open_layer(stream), hasher)
    root = _Root(target)
    name = "<layer>"
    try:
        try:
            tar = tarfile.open(  # noqa: SIM115 (closed by the `with` below)
                fileobj=_io(reader), mode="r|", encoding="utf-8", errors="surrogateescape"
            )
        except tarfile.ReadError as exc:
            if reader.count == 0:
                return 0, "sha256:" + (hasher.hexdigest() if hasher else "")
            raise LayerError(f"{name}: not a tar archive: {exc}") from None
        with tar:
            applier = _Applier(root, tar, same_owner)
            for member in tar:
                name = member.name
                try:
                    applier.member(member)
                except OSError as exc:
                    what = exc.strerror or str(exc)
                    raise LayerError(f"{name}: {what}") from None
            name = "<layer>"
            applier.finish()
        reader.drain()
    except LayerError:
        raise
    except tarfile.TarError as exc:
        raise LayerError(f"{name}: broken tar: {exc}") from None
    except (OSError, EOFError, ValueError) as exc:
        # decompression errors (gzip, zstd) and truncated streams land here
        raise LayerError(f"{name}: {exc}") from None
    finally:
        root.close()
    return reader.count, "sha256:" + (hasher.hexdigest() if hasher else "")


def apply_layer(stream: BinaryIO, target: str, *, same_owner: bool = True) -> int:
    """Unpack a layer (plain, gzip or zstd) onto `target`; returns uncompressed bytes read.

    `same_owner` applies uid/gid from the tar and creates devices (needs root);
    without it, ownership is left to the caller and devices are skipped.
    """
    return _apply(stream, target, same_owner, digest=False)[0]


def apply_layer_with_diff_id(
    stream: BinaryIO, target: str, *, same_owner: bool = True
) -> tuple[int, str]:
    """`apply_layer`, plus the diff_id ("sha256:<hex>" of the uncompressed tar)."""
    return _apply(stream, target, same_owner, digest=True)
