"""The build context: the filtered walk the builder sees, and its content digest.

A context is a directory (`DirContext`) or a tar archive — a file or the `-` stream,
plain or gzip/bzip2/xz/zstd compressed (`TarContext`). `walk()` yields `Entry`
(relpath, lstat, link target) depth first, each directory's names sorted by their bytes
(the order of Go's `filepath.WalkDir`, so `a`, `a/b`, `a.txt`), never following
symlinks (the way to the start is resolved inside the context: `resolve`, Docker's
FollowSymlinkInScope), with the .dockerignore matcher applied as BuildKit's fsutil applies it:
an excluded entry is left out; an excluded directory is pruned unless an exception
could re-include something below it, and a directory that was excluded but holds a
re-included entry is yielded just before that entry.

The Dockerfile and the ignore file always reach the builder: `read_file()` reads any
context file without the matcher, while `walk()` (what COPY/ADD see) leaves them out
when a pattern matches them.

`content_digest(ctx, *paths)` is the build cache's key for COPY/ADD sources: sha256
over each entry's (relpath, mode, uid, gid, link target, device, content digest) —
never times, so `touch` does not change it and an edit or chmod does. File content
digests are cached in memory by (dev, ino, size, mtime_ns, ctime_ns).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import tempfile
import time
from pathlib import Path

from dockyard.build.dockerignore import IgnoreMatcher, normalize_relpath

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO, Any, BinaryIO, Self, TypeAlias

    StatLike: TypeAlias = "os.stat_result | TarStat"
    Info: TypeAlias = "tuple[bool, ...] | None"

_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_MAX_SYMLINK_HOPS = 40


class ContextError(Exception):
    """A build context that can't be read or walked (one line)."""


class TarStat:
    """The lstat of a tar member, with the attribute names of `os.stat_result`."""

    __slots__ = (
        "st_ctime_ns",
        "st_dev",
        "st_gid",
        "st_ino",
        "st_mode",
        "st_mtime_ns",
        "st_nlink",
        "st_rdev",
        "st_size",
        "st_uid",
    )

    def __init__(
        self, mode: int, uid: int = 0, gid: int = 0, size: int = 0, mtime_ns: int = 0, rdev: int = 0
    ) -> None:
        self.st_mode, self.st_uid, self.st_gid, self.st_size = mode, uid, gid, size
        self.st_mtime_ns = self.st_ctime_ns = mtime_ns
        self.st_rdev, self.st_dev, self.st_ino, self.st_nlink = rdev, 0, 0, 1


class Entry:
    """One context entry: `relpath` ('/'-separated), `stat` (lstat) and `linkname`
    (a symlink's target, else ''). Unpacks as `(relpath, stat)`."""

    __slots__ = ("linkname", "relpath", "stat")

    def __init__(self, relpath: str, st: StatLike, linkname: str = "") -> None:
        self.relpath, self.stat, self.linkname = relpath, st, linkname

    def __iter__(self) -> Iterator[Any]:
        return iter((self.relpath, self.stat))

    def __repr__(self) -> str:
        return f"Entry({self.relpath!r}, mode={self.stat.st_mode:o})"

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.stat.st_mode)


class HashCache:
    """sha256 of file contents, keyed by (dev, ino, size, mtime_ns, ctime_ns)."""

    def __init__(self, limit: int = 500_000) -> None:
        self.limit = limit
        self._digests: dict[tuple[int, int, int, int, int], str] = {}
        self.loaded = -1  # how many entries load() left: save() skips an unchanged cache

    def __len__(self) -> int:
        return len(self._digests)

    def get(self, key: tuple[int, int, int, int, int]) -> str | None:
        return self._digests.get(key)

    def put(self, key: tuple[int, int, int, int, int], digest: str) -> None:
        if len(self._digests) >= self.limit:
            self._digests.clear()
        self._digests[key] = digest

    def clear(self) -> None:
        self._digests.clear()

    def load(self, path: str) -> None:
        """Add the digests a previous build saved at `path` (none if it can't be read)."""
        import marshal

        try:
            with open(path, "rb") as f:
                saved = marshal.load(f)
        except (OSError, EOFError, ValueError, TypeError):
            return
        if isinstance(saved, dict) and len(saved) < self.limit:
            self._digests.update(saved)
            self.loaded = len(self._digests)

    def save(self, path: str) -> None:
        """Keep the digests for the next build (when something was added)."""
        import marshal

        from dockyard.runtime.state import write_atomic

        if len(self._digests) == self.loaded:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, marshal.dumps(self._digests), 0o600, durable=False)


DEFAULT_CACHE = HashCache()
_RACY_NS = 2_000_000_000


def _stat_key(st: StatLike) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Context:
    """The walk shared by both kinds of context; subclasses list and stat entries."""

    matcher: IgnoreMatcher

    def _children(self, rel: str, tolerant: bool) -> list[Entry]:
        raise NotImplementedError

    def _entry(self, rel: str) -> Entry | None:
        raise NotImplementedError

    def file_sha256(self, entry: Entry, cache: HashCache | None) -> str:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the context holds (a tar context's files); idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resolve(self, rel: str, follow_last: bool = True) -> str:
        """`rel` with its symlinks resolved inside the context, as Docker's
        FollowSymlinkInScope: a link's absolute target starts at the context's root and
        `..` stops there, so no link leads out. The last component is kept as a link
        unless `follow_last`; from a missing component on, the path is kept as written."""
        todo = [p for p in normalize_relpath(rel).split("/") if p not in ("", ".")]
        done = ""
        hops = 0
        while todo:
            here = normalize_relpath(f"/{done}/{todo.pop(0)}")  # '..' stops at the root
            entry = None if (not todo and not follow_last) or here == "." else self._entry(here)
            if entry is None or not stat.S_ISLNK(entry.stat.st_mode):
                done = "" if here == "." else here
                if entry is None and todo and here != ".":
                    return normalize_relpath("/".join([here, *todo]))
                continue
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise ContextError(f"{rel}: too many levels of symbolic links")
            base = "" if entry.linkname.startswith("/") else done
            todo = [p for p in f"{base}/{entry.linkname}".split("/") if p] + todo
            done = ""
        return done or "."

    def walk(self, start: str = ".") -> Iterator[Entry]:
        """The entries at and below `start` that COPY would see, in walk order. The
        directories on the way to `start` are resolved inside the context (`resolve`),
        so a symlink among them never leads out of it."""
        top = normalize_relpath(start)
        if top.startswith("../") or top == "..":
            raise ContextError(f"{start}: outside the build context")
        top = self.resolve(top, follow_last=False)
        matcher = self.matcher if self.matcher else None
        pending: list[Entry] = []  # excluded directories not yet yielded
        stack: list[tuple[Iterator[Entry], Info, Entry | None]] = []
        if top == ".":
            stack.append((iter(self._children(".", False)), None, None))
        else:
            first = self._entry(top)
            if first is None:
                raise ContextError(f"{start}: not found in the build context")
            parent = top.rpartition("/")[0] or "."
            info = matcher.parent_info(parent) if matcher else None
            stack.append((iter([first]), info, None))
        while stack:
            entries, info, owner = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                if owner is not None and pending and pending[-1] is owner:
                    pending.pop()
                continue
            is_dir = stat.S_ISDIR(entry.stat.st_mode)
            if matcher is None:
                child_info: Info = None
            else:
                excluded, child_info = matcher.match_info(entry.relpath, info)
                if excluded:
                    if is_dir and matcher.could_include_below(entry.relpath):
                        pending.append(entry)
                        below = self._children(entry.relpath, True)
                        stack.append((iter(below), child_info, entry))
                    continue
            if pending:
                yield from pending
                pending.clear()
            yield entry
            if is_dir:
                stack.append((iter(self._children(entry.relpath, False)), child_info, None))


class DirContext(_Context):
    """A directory build context."""

    def __init__(self, root: str | Path, matcher: IgnoreMatcher | None = None) -> None:
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise ContextError(f"build context {self.root}: not a directory")
        self.matcher = matcher if matcher is not None else IgnoreMatcher()

    def _path(self, rel: str) -> str:
        return self.root if rel == "." else os.path.join(self.root, rel)

    def _children(self, rel: str, tolerant: bool) -> list[Entry]:
        prefix = "" if rel == "." else rel + "/"
        try:
            listing = os.scandir(self._path(rel))
        except OSError as e:
            if tolerant and isinstance(e, PermissionError | FileNotFoundError):
                return []
            raise ContextError(f"cannot read {rel} in the build context: {e.strerror}") from None
        keyed: list[tuple[bytes, Entry]] = []
        with listing:
            for de in listing:
                try:
                    st = de.stat(follow_symlinks=False)
                    link = os.readlink(de.path) if stat.S_ISLNK(st.st_mode) else ""
                except FileNotFoundError:
                    continue  # removed while walking
                keyed.append((os.fsencode(de.name), Entry(prefix + de.name, st, link)))
        keyed.sort(key=lambda pair: pair[0])
        return [entry for _, entry in keyed]

    def _entry(self, rel: str) -> Entry | None:
        path = self._path(rel)
        try:
            st = os.lstat(path)
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ContextError(f"cannot stat {rel} in the build context: {e.strerror}") from None
        return Entry(rel, st, link)

    def read_file(self, relpath: str) -> bytes:
        """A context file's bytes, whatever the matcher says (the Dockerfile, the ignore file)."""
        try:
            return Path(self._path(normalize_relpath(relpath))).read_bytes()
        except OSError as e:
            raise ContextError(
                f"cannot read {relpath} in the build context: {e.strerror}"
            ) from None

    def open_entry(self, entry: Entry) -> IO[bytes]:
        """A regular file entry's content, opened without following a symlink."""
        try:
            fd = os.open(self._path(entry.relpath), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise ContextError(f"cannot read {entry.relpath}: {e.strerror}") from None
        return os.fdopen(fd, "rb")

    def file_sha256(self, entry: Entry, cache: HashCache | None) -> str:
        key = _stat_key(entry.stat)
        if cache is not None:
            known = cache.get(key)
            if known is not None:
                return known
        try:
            fd = os.open(self._path(entry.relpath), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise ContextError(f"cannot read {entry.relpath}: {e.strerror}") from None
        with open(fd, "rb") as f:
            before = os.fstat(f.fileno())
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            after = os.fstat(f.fileno())
        # A file changed within the last seconds could change again without its times
        # moving (they tick coarsely): its digest is not kept (git's "racily clean").
        racy = time.time_ns() - after.st_ctime_ns < _RACY_NS
        if cache is not None and not racy and _stat_key(before) == _stat_key(after) == key:
            cache.put(key, digest)
        return digest


def _tar_mode(member: tarfile.TarInfo) -> int:
    if member.isdir():
        kind = stat.S_IFDIR
    elif member.issym():
        kind = stat.S_IFLNK
    elif member.ischr():
        kind = stat.S_IFCHR
    elif member.isblk():
        kind = stat.S_IFBLK
    elif member.isfifo():
        kind = stat.S_IFIFO
    else:
        kind = stat.S_IFREG  # regular files and hard links
    return kind | (member.mode & 0o7777)


def _tar_relpath(name: str) -> str:
    cleaned = normalize_relpath(name)
    if cleaned == ".." or cleaned.startswith("../"):
        raise ContextError(f"tar context entry {name!r} is outside the build context")
    return cleaned


def looks_like_archive(head: bytes) -> bool:
    """Docker's `IsArchive`: a compressed stream, or a valid tar header in `head`."""
    if head.startswith((*_COMPRESSED_MAGIC, _ZSTD_MAGIC)):
        return True
    if len(head) < 512:
        return False
    try:
        tarfile.TarInfo.frombuf(head[:512], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


class TarContext(_Context):
    """A tar archive build context (a path, or a binary stream such as stdin for `-`).

    A stream that can't seek is spooled to a temporary file first; zstd is
    decompressed with `zstandard`, the other compressions by `tarfile`.
    """

    def __init__(self, source: str | Path | BinaryIO, matcher: IgnoreMatcher | None = None) -> None:
        self.matcher = matcher if matcher is not None else IgnoreMatcher()
        self._files: list[BinaryIO] = []
        try:
            self._tar = self._open(source)
            self._index()
        except BaseException:
            self.close()
            raise

    def _open(self, source: str | Path | BinaryIO) -> tarfile.TarFile:
        if isinstance(source, str | Path):
            try:
                f: BinaryIO = open(source, "rb")  # noqa: SIM115 - closed by close()
            except OSError as e:
                raise ContextError(f"cannot open build context {source}: {e.strerror}") from None
            self._files.append(f)
        else:
            f = source
        if not f.seekable():
            spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            self._files.append(spool)
            while chunk := f.read(_CHUNK):
                spool.write(chunk)
            f = spool
        f.seek(0)
        if f.read(4) == _ZSTD_MAGIC:
            import zstandard

            f.seek(0)
            plain = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            self._files.append(plain)
            try:
                zstandard.ZstdDecompressor().copy_stream(f, plain)
            except zstandard.ZstdError as e:
                raise ContextError(f"build context: bad zstd stream: {e}") from None
            f = plain
        f.seek(0)
        try:
            return tarfile.open(fileobj=f, mode="r:*")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ContextError(f"build context is not a valid tar archive: {e}") from None

    def _index(self) -> None:
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            members = self._tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ContextError(f"build context is not a valid tar archive: {e}") from None
        for member in members:
            rel = _tar_relpath(member.name)
            if rel != ".":
                self._members[rel] = member  # the last one of a name wins, as on extraction
        kids: dict[str, list[str]] = {".": []}
        for rel in list(self._members):
            child = rel
            while True:
                parent = child.rpartition("/")[0] or "."
                known = parent in kids
                kids.setdefault(parent, []).append(child)
                if known or parent == ".":
                    break
                if parent not in self._members:  # a directory only implied by its entries
                    implied = tarfile.TarInfo(parent)
                    implied.type, implied.mode = tarfile.DIRTYPE, 0o755
                    self._members[parent] = implied
                child = parent
        self._kids = {
            rel: sorted(set(names), key=lambda n: os.fsencode(n.rpartition("/")[2]))
            for rel, names in kids.items()
        }

    def close(self) -> None:
        tar = getattr(self, "_tar", None)
        if tar is not None:
            tar.close()
        for f in self._files:
            f.close()
        self._files.clear()

    def _make(self, rel: str) -> Entry:
        m = self._members[rel]
        size = m.size
        if m.islnk():
            target = self._members.get(_tar_relpath(m.linkname))
            size = target.size if target is not None else 0
        rdev = os.makedev(m.devmajor, m.devminor) if m.ischr() or m.isblk() else 0
        mtime_ns = int(m.mtime * 1_000_000_000)
        st = TarStat(_tar_mode(m), m.uid, m.gid, size, mtime_ns, rdev)
        return Entry(rel, st, m.linkname if m.issym() else "")

    def _children(self, rel: str, tolerant: bool) -> list[Entry]:
        return [self._make(child) for child in self._kids.get(rel, ())]

    def _entry(self, rel: str) -> Entry | None:
        return self._make(rel) if rel in self._members else None

    def names(self) -> list[str]:
        """Every path in the archive (implied directories included), unfiltered."""
        return sorted(self._members)

    def _resolve(self, rel: str) -> tarfile.TarInfo:
        """The member at `rel`, symlinks (of any component) resolved inside the archive."""
        todo, done, hops = rel.split("/"), "", 0
        while todo:
            here = normalize_relpath("/" + done + "/" + todo.pop(0))  # '..' stops at the root
            member = self._members.get(here)
            if member is None:
                raise ContextError(f"{rel}: not found in the build context")
            if member.issym():
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise ContextError(f"{rel}: too many levels of symbolic links")
                base = "" if member.linkname.startswith("/") else here.rpartition("/")[0]
                target = normalize_relpath("/" + base + "/" + member.linkname)
                todo = ([] if target == "." else target.split("/")) + todo
                done = ""
                continue
            done = here
        if not done or done == ".":
            raise ContextError(f"{rel}: not a regular file in the build context")
        return self._members[done]

    def read_file(self, relpath: str) -> bytes:
        """A member's bytes (symlinks followed inside the archive), whatever the matcher says."""
        member = self._resolve(normalize_relpath(relpath))
        f = self._tar.extractfile(member)
        if f is None:
            raise ContextError(f"{relpath}: not a regular file in the build context")
        with f:
            return f.read()

    def open_entry(self, entry: Entry) -> IO[bytes]:
        """A regular file (or hard link) member's content."""
        member = self._members.get(entry.relpath)
        f = self._tar.extractfile(member) if member is not None else None
        if f is None:
            raise ContextError(f"{entry.relpath}: not a regular file in the build context")
        return f

    def file_sha256(self, entry: Entry, cache: HashCache | None) -> str:
        digest = hashlib.sha256()
        with self.open_entry(entry) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


def open_context(
    source: str | Path | BinaryIO, matcher: IgnoreMatcher | None = None
) -> DirContext | TarContext:
    """A directory path, a tar file path, `-` (stdin) or a binary stream, as a context."""
    if isinstance(source, str | Path):
        if str(source) == "-":
            import sys

            return TarContext(sys.stdin.buffer, matcher)
        if os.path.isdir(source):
            return DirContext(source, matcher)
    return TarContext(source, matcher)


def walk_context(
    root: str | Path, matcher: IgnoreMatcher | None = None, start: str = "."
) -> Iterator[Entry]:
    """`DirContext(root, matcher).walk(start)`."""
    return DirContext(root, matcher).walk(start)


def _record(ctx: _Context, entry: Entry, cache: HashCache | None) -> bytes:
    st = entry.stat
    mode = st.st_mode
    if stat.S_ISREG(mode):
        content = ctx.file_sha256(entry, cache)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        content = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    else:
        content = ""
    return b"\0".join(
        (
            os.fsencode(entry.relpath),
            f"{mode:o}\0{st.st_uid}\0{st.st_gid}".encode(),
            os.fsencode(entry.linkname),
            content.encode() + b"\n",
        )
    )


def content_digest(
    context: DirContext | TarContext | str | Path, *paths: str, cache: HashCache | None = None
) -> str:
    """`sha256:<hex>` of the given context-relative paths (the whole context if none).

    Each path contributes itself and everything the matcher leaves below it, in walk
    order, as (relpath, mode, uid, gid, link target, device, content sha256). A path
    that is missing, or wholly excluded by .dockerignore, is a ContextError.
    `cache` defaults to a process-wide in-memory cache of file content digests.
    """
    ctx = DirContext(context) if isinstance(context, str | Path) else context
    if cache is None:
        cache = DEFAULT_CACHE
    total = hashlib.sha256()
    for path in paths or (".",):
        rel = normalize_relpath(path)
        total.update(b"path\0" + os.fsencode(rel) + b"\n")
        seen = False
        for entry in ctx.walk(rel):
            seen = True
            total.update(_record(ctx, entry, cache))
        if not seen and rel != ".":
            raise ContextError(f"{path}: excluded from the build context by .dockerignore")
    return "sha256:" + total.hexdigest()
