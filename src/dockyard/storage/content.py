"""The content store: immutable blobs addressed by digest, shared by images and the registry.

Layout under the dockyard state root (DESIGN.md, "State"):

    blobs/<algorithm>/<hex>      committed blobs, mode 0o444
    blobs/.ingest/<random>.tmp   a writer's data while it is being written
    blobs/.ingest/<alg>-<hex>.partial
                                 a resumable writer's data, found again by its digest

Nothing is lost and nothing wrong becomes visible: data is written to a temp file
under `blobs/.ingest/`, fsynced, and its size and digest are checked before it is
renamed into place (then the directory is fsynced). A mismatch removes the temp
file. Every open ingest holds an exclusive `flock` on its file, so concurrent
writers never share a file and the stale-ingest sweep never removes a live one;
two writers of the same blob both succeed and leave one file.
"""

from __future__ import annotations

import fcntl
import os
import time

from dockyard.oci import digest as _digest

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterator
    from hashlib import _Hash
    from types import TracebackType
    from typing import BinaryIO, Protocol, Self
else:
    Protocol = object

CHUNK = 1 << 20
"""Bytes read or hashed at a time when streaming."""

WRITEBACK = 8 << 20
"""A writer hands its data to the disk every this many bytes (not waiting for it), so
the fsync at commit finds little left to write: disk and network overlap."""

INGEST_DIR = ".ingest"
BLOB_MODE = 0o444


# -- errors ------------------------------------------------------------------------------


class ContentError(Exception):
    """A content store failure, with a one-line message a user can act on."""


class InvalidDigest(ContentError, _digest.DigestError):
    """A malformed digest was passed to the store (also a `DigestError`)."""


class BlobNotFound(ContentError):
    """No blob with that digest is stored."""


class DigestMismatch(ContentError):
    """The data written does not hash to the expected digest; nothing was stored."""


class SizeMismatch(ContentError):
    """The data written is not the declared size; nothing was stored."""


class IngestIOError(ContentError):
    """The filesystem refused an ingest (no space, no permission, ...); nothing was stored."""


class WriterClosed(ContentError):
    """The writer was used after commit, abort or close."""


# -- the seam ----------------------------------------------------------------------------


class BlobWriter(Protocol):
    """An open ingest: write chunks, then `commit()`; leaving the `with` block aborts it."""

    @property
    def offset(self) -> int: ...

    def write(self, chunk: bytes | bytearray | memoryview) -> int: ...

    def flush(self) -> None: ...

    def commit(self) -> str: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ContentStore(Protocol):
    """Blobs by digest. Every implementation passes `tests/conformance/content_suite.py`."""

    def has(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int: ...

    def path(self, digest: str) -> str: ...

    def open(self, digest: str) -> BinaryIO: ...

    def read(self, digest: str) -> bytes: ...

    def put(self, data: bytes, expected: str | None = None, algorithm: str = "sha256") -> str: ...

    def ingest(
        self,
        stream: BinaryIO,
        expected: str | None = None,
        size: int | None = None,
        algorithm: str = "sha256",
    ) -> str: ...

    def writer(
        self,
        expected: str | None = None,
        size: int | None = None,
        algorithm: str = "sha256",
        resume: bool = False,
    ) -> BlobWriter: ...

    def delete(self, digest: str) -> None: ...

    def digests(self) -> Iterator[str]: ...

    def verify(self, digest: str) -> bool: ...

    def stale_ingests(self, older_than: float) -> list[str]: ...

    def remove_stale_ingests(self, older_than: float) -> list[str]: ...


# -- helpers -----------------------------------------------------------------------------


def _parse(digest: str) -> tuple[str, str]:
    try:
        return _digest.parse(digest)
    except _digest.DigestError as e:
        raise InvalidDigest(str(e)) from None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- the writer --------------------------------------------------------------------------


class LocalBlobWriter:
    """One ingest into a `LocalContentStore`; get it from `LocalContentStore.writer`.

    Holds an exclusive flock on its temp file from open to commit/close. A resumable
    writer (`resume=True`) keeps its data under a name derived from the expected
    digest when it is aborted, so a later resumable writer continues at `offset`.
    """

    def __init__(
        self,
        store: LocalContentStore,
        algorithm: str,
        expected: str | None,
        size: int | None,
        resume: bool,
    ) -> None:
        self._store = store
        self._algorithm = algorithm
        self._expected = expected
        self._size = size
        self._hasher: _Hash = _digest.new_hasher(algorithm)
        self._offset = 0
        self._written_back = 0  # data before this offset was handed to the disk
        self._closed = False
        self._temp = ""
        try:
            os.makedirs(store.ingest_dir, exist_ok=True)
            fd = self._open_partial() if resume else None
            self._resumable = fd is not None
            if fd is None:
                fd = self._open_private()
        except OSError as e:
            raise IngestIOError(
                f"cannot start a blob ingest in {store.ingest_dir}: {e.strerror or e}"
            ) from e
        self._file = open(fd, "r+b")  # noqa: SIM115 - owned by the writer, closed in close()
        if self._resumable:
            self._rehash()
            self._written_back = self._offset

    # opening ---------------------------------------------------------------------------

    def _open_private(self) -> int:
        while True:
            self._temp = os.path.join(self._store.ingest_dir, os.urandom(16).hex() + ".tmp")
            try:
                fd = os.open(self._temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)  # new, unshared file: never blocks
            return fd

    def _open_partial(self) -> int | None:
        """Open and lock the shared partial file; None when another writer holds it."""
        algorithm, hex_ = _parse(self._expected or "")
        self._temp = os.path.join(self._store.ingest_dir, f"{algorithm}-{hex_}.partial")
        while True:
            fd = os.open(self._temp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if not _try_lock(fd):
                os.close(fd)
                return None
            # The file may have been committed or swept between open and lock.
            try:
                same = os.stat(self._temp).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _rehash(self) -> None:
        """Continue a partial ingest: hash what is on disk, position at its end."""
        if self._size is not None and os.fstat(self._file.fileno()).st_size > self._size:
            self._file.truncate(0)  # longer than the blob can be: start over
        while chunk := self._file.read(CHUNK):
            self._hasher.update(chunk)
            self._offset += len(chunk)

    # the BlobWriter API ----------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Bytes written so far (including those found on disk when resumed)."""
        return self._offset

    @property
    def path(self) -> str:
        """The file the data goes to; others may read it while it grows (never write to it)."""
        return self._temp

    @property
    def resumed(self) -> bool:
        """True when this writer owns the resumable partial file for its digest."""
        return self._resumable

    def write(self, chunk: bytes | bytearray | memoryview) -> int:
        """Append `chunk`; SizeMismatch as soon as it would exceed the declared size."""
        if self._closed:
            raise WriterClosed("cannot write: the blob writer is already committed or closed")
        if self._size is not None and self._offset + len(chunk) > self._size:
            name = self._expected or "blob"
            raise SizeMismatch(
                f"size mismatch for {name}: expected {self._size} bytes,"
                f" got at least {self._offset + len(chunk)}"
            )
        try:
            self._file.write(chunk)
        except OSError as e:
            raise IngestIOError(f"cannot write blob data to {self._temp}: {e.strerror or e}") from e
        self._hasher.update(chunk)
        self._offset += len(chunk)
        if self._offset - self._written_back >= WRITEBACK:
            self._write_back()
        return len(chunk)

    def _write_back(self) -> None:
        """Start the disk writing what came since the last call, without waiting.

        On Linux, POSIX_FADV_DONTNEED starts writeback of the range's dirty pages and
        drops only its clean ones: the data stays cached while commit's fsync later
        finds most of it written already."""
        try:
            self._file.flush()
            os.posix_fadvise(
                self._file.fileno(),
                self._written_back,
                self._offset - self._written_back,
                os.POSIX_FADV_DONTNEED,
            )
        except OSError:
            pass  # only a head start; commit's flush and fsync report real failures
        self._written_back = self._offset

    def flush(self) -> None:
        """Push buffered data to the temp file (not fsynced; commit does that)."""
        if not self._closed:
            self._file.flush()

    def commit(self) -> str:
        """Verify size and digest, then make the blob visible atomically; return its digest."""
        if self._closed:
            raise WriterClosed("cannot commit: the blob writer is already committed or closed")
        actual = f"{self._algorithm}:{self._hasher.hexdigest()}"
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            if self._size is not None and self._offset != self._size:
                raise SizeMismatch(
                    f"size mismatch for {self._expected or actual}: expected {self._size}"
                    f" bytes, got {self._offset}"
                )
            if self._expected is not None and actual != self._expected:
                raise DigestMismatch(f"digest mismatch: expected {self._expected}, got {actual}")
            os.fchmod(self._file.fileno(), BLOB_MODE)
            self._store._place(self._temp, actual)
        except OSError as e:
            self._discard()
            raise IngestIOError(f"cannot store blob {actual}: {e.strerror or e}") from e
        except BaseException:
            self._discard()
            raise
        self._release()
        return actual

    def close(self) -> None:
        """Give up without committing: a resumable writer keeps its data, others remove it."""
        if self._closed:
            return
        if self._resumable:
            self._release()
        else:
            self._discard()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # internals -------------------------------------------------------------------------

    def _discard(self) -> None:
        if self._closed:
            return
        _unlink_quiet(self._temp)  # unlink while still holding the lock
        self._release()

    def _release(self) -> None:
        self._closed = True
        self._file.close()


# -- the store ---------------------------------------------------------------------------


class LocalContentStore:
    """Blobs as files under `<root>/blobs/<algorithm>/<hex>`; `root` is the state root."""

    def __init__(self, root: str) -> None:
        self.root = os.fspath(root)
        self.blobs_dir = os.path.join(self.root, "blobs")
        self.ingest_dir = os.path.join(self.blobs_dir, INGEST_DIR)

    def __repr__(self) -> str:
        return f"LocalContentStore({self.root!r})"

    def _blob_path(self, digest: str) -> str:
        algorithm, hex_ = _parse(digest)
        return os.path.join(self.blobs_dir, algorithm, hex_)

    def _not_found(self, digest: str) -> BlobNotFound:
        return BlobNotFound(
            f"blob {digest} not found in {self.blobs_dir} (pull or import the image again)"
        )

    def _place(self, temp: str, digest: str) -> None:
        """Move a verified temp file to its blob path; keep an existing blob if there is one."""
        target = self._blob_path(digest)
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        if os.path.exists(target):
            _unlink_quiet(temp)  # same digest, same bytes: keep the existing inode
            return
        os.replace(temp, target)
        _fsync_dir(parent)

    # reading ---------------------------------------------------------------------------

    def has(self, digest: str) -> bool:
        """True when the blob is stored."""
        return os.path.isfile(self._blob_path(digest))

    def size(self, digest: str) -> int:
        """The blob's size in bytes."""
        try:
            return os.stat(self._blob_path(digest)).st_size
        except FileNotFoundError:
            raise self._not_found(digest) from None

    def path(self, digest: str) -> str:
        """The blob's file, for readers that want it without a copy; never write to it."""
        path = self._blob_path(digest)
        if not os.path.isfile(path):
            raise self._not_found(digest)
        return path

    def open(self, digest: str) -> BinaryIO:
        """The blob opened for binary reading; the caller closes it."""
        try:
            return open(self._blob_path(digest), "rb")
        except FileNotFoundError:
            raise self._not_found(digest) from None

    def read(self, digest: str) -> bytes:
        """The whole blob in memory; prefer `open` or `path` for large blobs."""
        with self.open(digest) as f:
            return f.read()

    # writing ---------------------------------------------------------------------------

    def writer(
        self,
        expected: str | None = None,
        size: int | None = None,
        algorithm: str = "sha256",
        resume: bool = False,
    ) -> LocalBlobWriter:
        """Open an ingest. With `expected`, its algorithm is used and the data must match.

        `resume=True` (needs `expected`) continues a partial ingest of the same digest
        left by an earlier writer that was not committed; `offset` tells where it is.
        If another live writer holds that partial, this one starts afresh at offset 0.
        """
        if expected is not None:
            algorithm = _parse(expected)[0]
        else:
            try:
                _digest.check_algorithm(algorithm)
            except _digest.DigestError as e:
                raise InvalidDigest(str(e)) from None
            if resume:
                raise ContentError("cannot resume an ingest without its expected digest")
        if size is not None and size < 0:
            raise ContentError(f"invalid blob size {size}: must be 0 or more")
        return LocalBlobWriter(self, algorithm, expected, size, resume)

    def put(self, data: bytes, expected: str | None = None, algorithm: str = "sha256") -> str:
        """Store `data`; return its digest."""
        with self.writer(expected, len(data), algorithm) as w:
            w.write(data)
            return w.commit()

    def ingest(
        self,
        stream: BinaryIO,
        expected: str | None = None,
        size: int | None = None,
        algorithm: str = "sha256",
    ) -> str:
        """Store everything `stream` yields, read in chunks; return its digest."""
        with self.writer(expected, size, algorithm) as w:
            while chunk := stream.read(CHUNK):
                w.write(chunk)
            return w.commit()

    def delete(self, digest: str) -> None:
        """Remove the blob; BlobNotFound when it is not stored."""
        path = self._blob_path(digest)
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise self._not_found(digest) from None
        _fsync_dir(os.path.dirname(path))

    # listing and checking --------------------------------------------------------------

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest, sorted by algorithm then hex."""
        for algorithm in sorted(_digest.ALGORITHMS):
            try:
                entries = list(os.scandir(os.path.join(self.blobs_dir, algorithm)))
            except FileNotFoundError:
                continue
            for name in sorted(e.name for e in entries if e.is_file(follow_symlinks=False)):
                candidate = f"{algorithm}:{name}"
                if _digest.is_valid(candidate):
                    yield candidate

    def verify(self, digest: str) -> bool:
        """Re-hash the stored file: True when it still matches its digest."""
        algorithm, hex_ = _parse(digest)
        hasher = _digest.new_hasher(algorithm)
        with self.open(digest) as f:
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
        return hasher.hexdigest() == hex_

    def stale_ingests(self, older_than: float) -> list[str]:
        """Paths of abandoned ingests: not held by a live writer, unmodified for `older_than` s."""
        return self._sweep(older_than, remove=False)

    def remove_stale_ingests(self, older_than: float) -> list[str]:
        """Remove the ingests `stale_ingests` reports; return their paths."""
        return self._sweep(older_than, remove=True)

    def _sweep(self, older_than: float, remove: bool) -> list[str]:
        try:
            names = sorted(os.listdir(self.ingest_dir))
        except FileNotFoundError:
            return []
        cutoff = time.time() - older_than
        found: list[str] = []
        for name in names:
            path = os.path.join(self.ingest_dir, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue  # gone meanwhile, or not a regular file we made
            try:
                if not _try_lock(fd):
                    continue  # a live writer holds it
                st = os.fstat(fd)
                try:
                    same = os.stat(path).st_ino == st.st_ino
                except FileNotFoundError:
                    same = False
                if not same or st.st_mtime > cutoff:
                    continue  # committed meanwhile, replaced, or recent
                if remove:
                    _unlink_quiet(path)
                found.append(path)
            finally:
                os.close(fd)
        if remove and found:
            _fsync_dir(self.ingest_dir)
        return found
