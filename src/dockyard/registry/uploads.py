"""Blob uploads in progress: one directory each under `<storage>/uploads/<id>/`.

    info     {"repo": ..., "started": unix time}: written once, when the upload starts
    data     the bytes received so far (its size is the upload's offset)
    hash     "<offset> <mtime_ns> <sha256 hex>" of `data`, written after each append

Every chunk is hashed as it arrives. The running sha256 stays in this process
between requests; a request that lands in another process (several workers, or
a restart) finds the digest so far in `hash` when `data` has not changed since,
and only otherwise hashes the file again. A completed upload is fsynced, its
digest checked, and its data file renamed into the content store: no blob is
ever copied or read again.

Only one request appends to an upload at a time (an flock on `data`); a second
one at the same time is refused, as is a chunk that does not start at the
current offset (416).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import time

from dockyard.oci import digest as _digest
from dockyard.registry.errors import RegistryError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from hashlib import _Hash

UPLOADS_DIR = "uploads"
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_CACHED_HASHERS = 4096
_WRITE_BUFFER = 1 << 20
_READ_CHUNK = 1 << 20


def _unknown(upload_id: str) -> RegistryError:
    return RegistryError("BLOB_UPLOAD_UNKNOWN", detail={"uuid": upload_id[:100]})


def new_id() -> str:
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def hash_file(path: str, algorithm: str, limit: int | None = None) -> tuple[_Hash, int]:
    """The hasher over the first `limit` bytes (all of them when None) and their count."""
    hasher = _digest.new_hasher(algorithm)
    done = 0
    with open(path, "rb") as f:
        while limit is None or done < limit:
            want = _READ_CHUNK if limit is None else min(_READ_CHUNK, limit - done)
            chunk = f.read(want)
            if not chunk:
                break
            hasher.update(chunk)
            done += len(chunk)
    return hasher, done


class Upload:
    """One upload in progress (found by `Uploads.get`)."""

    __slots__ = ("dir", "id", "repo", "started")

    def __init__(self, dir_: str, upload_id: str, repo: str, started: float) -> None:
        self.dir = dir_
        self.id = upload_id
        self.repo = repo
        self.started = started

    @property
    def data(self) -> str:
        return os.path.join(self.dir, "data")

    def size(self) -> int:
        try:
            return os.stat(self.data).st_size
        except FileNotFoundError:
            raise _unknown(self.id) from None


class Uploads:
    """The uploads of one storage directory."""

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, UPLOADS_DIR)
        # upload id -> (offset, running sha256): the state of uploads this process fed
        self._hashers: dict[str, tuple[int, _Hash]] = {}

    def start(self, repo: str) -> Upload:
        os.makedirs(self.dir, exist_ok=True)
        upload_id = new_id()
        path = os.path.join(self.dir, upload_id)
        os.mkdir(path)
        started = time.time()
        with open(os.path.join(path, "data"), "xb"):
            pass
        info = os.path.join(path, "info")
        with open(info + ".tmp", "w") as f:
            json.dump({"repo": repo, "started": started}, f)
        os.replace(info + ".tmp", info)
        return Upload(path, upload_id, repo, started)

    def get(self, repo: str, upload_id: str) -> Upload:
        """The upload `upload_id` of `repo`; BLOB_UPLOAD_UNKNOWN when there is none."""
        if not _ID.match(upload_id):
            raise _unknown(upload_id)
        path = os.path.join(self.dir, upload_id)
        try:
            with open(os.path.join(path, "info")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            raise _unknown(upload_id) from None
        if info.get("repo") != repo:
            raise _unknown(upload_id)
        return Upload(path, upload_id, repo, float(info.get("started", 0)))

    def remove(self, upload: Upload) -> None:
        self._hashers.pop(upload.id, None)
        shutil.rmtree(upload.dir, ignore_errors=True)

    # writing ---------------------------------------------------------------------------

    async def append(
        self,
        upload: Upload,
        chunks: AsyncIterator[bytes],
        start: int | None = None,
        length: int | None = None,
    ) -> int:
        """Append what `chunks` yields; return the new offset.

        `start` (from Content-Range) must be the current offset, else 416 with the
        upload's Range; `length` (Content-Length with a Content-Range) must be met.
        """
        try:
            fd = os.open(upload.data, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _unknown(upload.id) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RegistryError(
                    "BLOB_UPLOAD_INVALID", "another request is writing to this upload"
                ) from None
            offset = os.fstat(fd).st_size
            if start is not None and start != offset:
                raise RegistryError(
                    "RANGE_INVALID",
                    f"chunk starts at {start}, the upload is at {offset}",
                    {"offset": offset},
                    status=416,
                    headers={"Range": range_header(offset)},
                )
            hasher = await self._hasher(upload, offset)
            try:
                end = await self._write(fd, hasher, chunks, offset, length)
            except BaseException:
                os.ftruncate(fd, offset)  # a chunk is taken whole or not at all
                raise
            self._remember(upload, fd, end, hasher)
            return end
        finally:
            os.close(fd)

    async def _write(
        self,
        fd: int,
        hasher: _Hash,
        chunks: AsyncIterator[bytes],
        offset: int,
        length: int | None,
    ) -> int:
        buffered: list[bytes] = []
        pending = 0
        received = 0
        async for chunk in chunks:
            received += len(chunk)
            if length is not None and received > length:
                raise RegistryError("SIZE_INVALID", f"more than the {length} bytes announced")
            hasher.update(chunk)
            buffered.append(chunk)
            pending += len(chunk)
            if pending >= _WRITE_BUFFER:
                _write_all(fd, b"".join(buffered))
                buffered.clear()
                pending = 0
        if buffered:
            _write_all(fd, b"".join(buffered))
        if length is not None and received != length:
            raise RegistryError(
                "SIZE_INVALID", f"got {received} bytes, {length} announced", status=400
            )
        return offset + received

    async def _hasher(self, upload: Upload, offset: int) -> _Hash:
        cached = self._hashers.pop(upload.id, None)
        if cached is not None and cached[0] == offset:
            return cached[1]
        if offset == 0:
            return _digest.new_hasher("sha256")
        hasher, done = await asyncio.to_thread(hash_file, upload.data, "sha256", offset)
        if done != offset:
            raise RegistryError("BLOB_UPLOAD_INVALID", "the upload's data changed underneath it")
        return hasher

    def _remember(self, upload: Upload, fd: int, offset: int, hasher: _Hash) -> None:
        if len(self._hashers) >= _CACHED_HASHERS:
            self._hashers.pop(next(iter(self._hashers)))
        self._hashers[upload.id] = (offset, hasher)
        mtime = os.fstat(fd).st_mtime_ns
        state = os.path.join(upload.dir, "hash")
        with open(state + ".tmp", "w") as f:
            f.write(f"{offset} {mtime} {hasher.hexdigest()}")
        os.replace(state + ".tmp", state)

    # finishing -------------------------------------------------------------------------

    async def digest_of(self, upload: Upload, algorithm: str) -> tuple[str, int]:
        """The digest (in `algorithm`) and size of everything uploaded so far."""
        st = os.stat(upload.data)
        if algorithm == "sha256":
            cached = self._hashers.get(upload.id)
            if cached is not None and cached[0] == st.st_size:
                return f"sha256:{cached[1].hexdigest()}", st.st_size
            try:
                with open(os.path.join(upload.dir, "hash")) as f:
                    offset, mtime, hex_ = f.read().split()
                if int(offset) == st.st_size and int(mtime) == st.st_mtime_ns:
                    return f"sha256:{hex_}", st.st_size
            except (OSError, ValueError):
                pass
        hasher, done = await asyncio.to_thread(hash_file, upload.data, algorithm)
        return f"{algorithm}:{hasher.hexdigest()}", done

    def stale(self, older_than: float) -> list[Upload]:
        """Uploads nobody has written to for `older_than` seconds."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        cutoff = time.time() - older_than
        found = []
        for name in names:
            path = os.path.join(self.dir, name)
            try:
                newest = max(os.stat(os.path.join(path, n)).st_mtime for n in os.listdir(path))
            except (OSError, ValueError):
                newest = 0.0
            if newest < cutoff:
                found.append(Upload(path, name, "", 0.0))
        return found


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def range_header(offset: int) -> str:
    """The `Range` an upload reports: `0-<last byte>` (`0-0` when empty, as distribution)."""
    return f"0-{max(offset - 1, 0)}"
