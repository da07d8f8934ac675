"""Make OCI layers: an overlayfs upper directory → layer tar (the inverse of `layers`); compress.

Overlay whiteouts (character device 0/0, or a file with `trusted.overlay.whiteout`)
become `.wh.<name>`; a directory marked `trusted.overlay.opaque=y` gets a
`.wh..wh..opq` entry right after its own. Ownership, modes, mtimes (whole
seconds, as Docker writes them), xattrs (minus overlay's own), hard links within
the upper, symlinks, devices and fifos are kept; sockets are skipped. Entries are
written in sorted order, in PAX format, with no user/group names, so the same
upper gives the same bytes and so the same diff_id.
"""

from __future__ import annotations

import os
import stat

from dockyard.image.layers import WHITEOUT_OPAQUE, WHITEOUT_PREFIX, LayerError, _io

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import hashlib
    import tarfile
    from typing import BinaryIO, Literal

    CompressKind = Literal["gzip", "zstd", "none"]

_CHUNK = 1 << 20

_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")
_XWHITEOUT = ("trusted.overlay.whiteout", "user.overlay.whiteout")
_REDIRECT = ("trusted.overlay.redirect", "user.overlay.redirect")
_METACOPY = ("trusted.overlay.metacopy", "user.overlay.metacopy")


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found: dict[str, bytes] = {}
    for name in sorted(names):
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue  # gone meanwhile, or not readable on this filesystem
    return found


def _any(xattrs: dict[str, bytes], names: tuple[str, ...]) -> bytes | None:
    for name in names:
        if name in xattrs:
            return xattrs[name]
    return None


def tar_header(name: str, st: os.stat_result, xattrs: dict[str, bytes]) -> tarfile.TarInfo:
    """A deterministic PAX header: owner by number, whole-second mtime, xattrs as SCHILY."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    info.pax_headers = {
        "SCHILY.xattr." + key: value.decode("utf-8", "surrogateescape")
        for key, value in xattrs.items()
    }
    return info


_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile pads the archive to whole records: the same bytes here
_USTAR_MAX = {"mode": 8**7, "uid": 8**7, "gid": 8**7, "size": 8**11, "mtime": 8**11}
_MAGIC_AND_NAMES = b"ustar\x0000" + b"\0" * 64  # magic, version, empty uname/gname
_NO_DEVICES = b"\0" * 16
_HEADER_TAIL = b"\0" * (_BLOCK - 345)  # prefix (155) and padding to the block


def _octal(n: int, digits: int) -> bytes:
    return b"%0*o\0" % (digits - 1, n)


def header_bytes(info: tarfile.TarInfo) -> bytes:
    """`info.tobuf(PAX_FORMAT)`, without tarfile's per-field checks when a plain
    ustar header says it all (the bytes are the same either way)."""
    import tarfile

    name = info.name.encode("utf-8", "surrogateescape")
    link = info.linkname.encode("utf-8", "surrogateescape")
    if (
        info.pax_headers
        or len(name) > 100
        or len(link) > 100
        or not name.isascii()
        or not link.isascii()
        or info.uname
        or info.gname
        or isinstance(info.mtime, float)
        or not 0 <= info.mode < _USTAR_MAX["mode"]
        or not 0 <= info.uid < _USTAR_MAX["uid"]
        or not 0 <= info.gid < _USTAR_MAX["gid"]
        or not 0 <= info.size < _USTAR_MAX["size"]
        or not 0 <= info.mtime < _USTAR_MAX["mtime"]
        or not 0 <= info.devmajor < 8**7
        or not 0 <= info.devminor < 8**7
    ):
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    if info.type == tarfile.DIRTYPE and not name.endswith(b"/"):
        name += b"/"  # as tarfile writes a directory's name
        if len(name) > 100:
            return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        devices = _octal(info.devmajor, 8) + _octal(info.devminor, 8)
    else:
        devices = _NO_DEVICES  # tarfile leaves them empty for other types
    # name, mode, uid, gid, size, mtime, checksum (spaces), type, link, magic, names
    buf = bytearray(
        b"%s%07o\0%07o\0%07o\0%011o\0%011o\0        %s%s%s%s"
        % (
            name.ljust(100, b"\0"),
            info.mode & 0o7777,
            info.uid,
            info.gid,
            info.size,
            info.mtime,
            info.type,
            link.ljust(100, b"\0"),
            _MAGIC_AND_NAMES,
            devices,
        )
    )
    buf += _HEADER_TAIL
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


class _TarWriter:
    """The layer tar, written as tarfile's streaming PAX writer would (same bytes).

    Small members are gathered into one buffer: a layer of thousands of small files
    would otherwise cost several writes (and hash updates) per file."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.offset = 0
        self.buf = bytearray()

    def addfile(self, info: tarfile.TarInfo, fd: int | None = None) -> None:
        buf = self.buf
        header = header_bytes(info)
        buf += header
        self.offset += len(header)
        if fd is not None and info.size:
            left = info.size
            while left:
                chunk = os.read(fd, min(left, _CHUNK))
                if not chunk:
                    raise LayerError(f"{info.name}: the file shrank while its layer was written")
                buf += chunk
                left -= len(chunk)
                if len(buf) >= _CHUNK:
                    self.flush()
                    buf = self.buf
            pad = -info.size % _BLOCK
            buf += bytes(pad)
            self.offset += info.size + pad
        if len(buf) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.out.write(self.buf)
            self.buf = bytearray()

    def close(self) -> None:
        end = _BLOCK * 2
        end += -(self.offset + end) % _RECORD
        self.buf += bytes(end)
        self.flush()


class _Differ:
    def __init__(
        self, upper: str, tar: _TarWriter, lowers: list[str], clamp: int | None = None
    ) -> None:
        self.upper = upper
        self.tar = tar
        self.lowers = lowers
        self.clamp = clamp
        self.inodes: dict[tuple[int, int], str] = {}

    def info(self, name: str, st: os.stat_result, xattrs: dict[str, bytes]) -> tarfile.TarInfo:
        kept = {k: v for k, v in xattrs.items() if not k.startswith(_OVERLAY_XATTRS)}
        info = tar_header(name, st, kept)
        if self.clamp is not None and info.mtime > self.clamp:
            info.mtime = self.clamp
        return info

    def whiteout(self, rel: str, st: os.stat_result) -> None:
        import tarfile

        head, _, base = rel.rpartition("/")
        info = tarfile.TarInfo((head + "/" if head else "") + WHITEOUT_PREFIX + base)
        info.mode = 0o644
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        if self.clamp is not None and info.mtime > self.clamp:
            info.mtime = self.clamp
        self.tar.addfile(info)

    def directory(self, rel: str) -> None:
        """Emit the entries of directory `rel` ("" for the upper root), sorted."""
        import tarfile

        base = os.path.join(self.upper, rel) if rel else self.upper
        for entry in sorted(os.listdir(base)):
            path = os.path.join(base, entry)
            name = f"{rel}/{entry}" if rel else entry
            st = os.lstat(path)
            mode = st.st_mode
            xattrs = _xattrs(path)
            if (stat.S_ISCHR(mode) and st.st_rdev == 0) or (
                stat.S_ISREG(mode) and st.st_size == 0 and _any(xattrs, _XWHITEOUT) is not None
            ):
                self.whiteout(name, st)
                continue
            if stat.S_ISSOCK(mode):
                continue  # a tar cannot carry a socket; Docker skips them too
            info = self.info(name, st, xattrs)
            if stat.S_ISDIR(mode):
                if _any(xattrs, _REDIRECT) is not None:
                    raise LayerError(f"{name}: overlay redirect_dir is not supported")
                info.type = tarfile.DIRTYPE
                self.tar.addfile(info)
                if _any(xattrs, _OPAQUE) == b"y":
                    opaque = self.info(f"{name}/{WHITEOUT_OPAQUE}", st, {})
                    opaque.mode = 0o644
                    self.tar.addfile(opaque)
                self.directory(name)
                continue
            if st.st_nlink > 1:
                first = self.inodes.setdefault((st.st_dev, st.st_ino), name)
                if first != name:
                    info.type, info.linkname = tarfile.LNKTYPE, first
                    self.tar.addfile(info)
                    continue
            if stat.S_ISREG(mode):
                self.regular(info, path, xattrs)
            elif stat.S_ISLNK(mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                self.tar.addfile(info)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                self.tar.addfile(info)
            elif stat.S_ISFIFO(mode):
                info.type = tarfile.FIFOTYPE
                self.tar.addfile(info)

    def regular(self, info: tarfile.TarInfo, path: str, xattrs: dict[str, bytes]) -> None:
        import tarfile

        source = path
        if _any(xattrs, _METACOPY) is not None:
            source = self.lower_data(info.name, xattrs)
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            info.type = tarfile.REGTYPE
            info.size = os.fstat(fd).st_size
            self.tar.addfile(info, fd)
        finally:
            os.close(fd)

    def lower_data(self, name: str, xattrs: dict[str, bytes]) -> str:
        """The lower file holding the data of a metacopy-only upper file."""
        redirect = _any(xattrs, _REDIRECT)
        rel = redirect.decode("utf-8", "surrogateescape").lstrip("/") if redirect else name
        for lower in self.lowers:
            candidate = os.path.join(lower, rel)
            if os.path.isfile(candidate) and not os.path.islink(candidate):
                return candidate
        raise LayerError(f"{name}: metacopy file without its data in the given lowers")


def diff_layer(
    upper: str,
    out: BinaryIO,
    *,
    lowers: list[str] | None = None,
    mtime_clamp: int | None = None,
) -> str:
    """Write the layer tar (uncompressed) of overlay `upper` to `out`; returns its diff_id.

    `lowers` (top first) are only read for files overlay copied up metadata-only
    (`metacopy=on`); `redirect_dir` renames are refused. `mtime_clamp`
    (SOURCE_DATE_EPOCH) caps every mtime, so a rebuild gives the same bytes.
    """
    import hashlib

    hasher = hashlib.sha256()
    sink = _Counting(out, hasher)
    tar = _TarWriter(sink)  # type: ignore[arg-type]
    _Differ(upper, tar, lowers or [], mtime_clamp).directory("")
    tar.close()
    sink.flush()
    return "sha256:" + hasher.hexdigest()


def compress(stream_in: BinaryIO, stream_out: BinaryIO, kind: CompressKind) -> int:
    """Copy `stream_in` to `stream_out` compressed as `kind`; returns the bytes written.

    gzip output has mtime 0 and no file name, so the same input gives the same blob.
    """
    counted = _Counting(stream_out)
    if kind == "gzip":
        from isal import igzip

        with igzip.IGzipFile(fileobj=_io(counted), mode="wb", mtime=0) as gz:
            while chunk := stream_in.read(_CHUNK):
                gz.write(chunk)
    elif kind == "zstd":
        import zstandard

        zstandard.ZstdCompressor(level=3).copy_stream(stream_in, _io(counted), read_size=_CHUNK)
    elif kind == "none":
        while chunk := stream_in.read(_CHUNK):
            counted.write(chunk)
    else:
        raise ValueError(f"unknown compression {kind!r}")
    return counted.count


class _Counting:
    """Write-through that counts (and optionally hashes) the bytes written."""

    def __init__(self, out: BinaryIO, hasher: hashlib._Hash | None = None) -> None:
        self._out = out
        self._hasher = hasher
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        if self._hasher is not None:
            self._hasher.update(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()
