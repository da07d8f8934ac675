"""Fetching a pull's blobs: in parallel threads, streamed into the content store.

Each blob goes to a resumable content-store writer (`blobs/.ingest/<digest>.partial`)
that hashes what it is given as it writes; nothing is visible until the size and
digest check out. A connection that breaks (or a body cut short) is picked up
where it stopped with `Range: bytes=N-` (a server that ignores Range is read past
what is already there); a pull that was interrupted altogether resumes from the
partial file next time, and if that data turns out bad the blob is fetched once
more from the start. Layers already stored are not fetched ("Already exists").
"""

from __future__ import annotations

import os
import threading

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from concurrent.futures import Future
    from typing import Any

    from dockyard.image.store import ImageStore
    from dockyard.registry.client import RegistryClient
    from dockyard.registry.progress import Progress
    from dockyard.storage.content import LocalBlobWriter

CONCURRENCY_ENV = "DOCKYARD_MAX_CONCURRENT_DOWNLOADS"
DEFAULT_CONCURRENCY = 4
BLOCK = 1 << 20
RETRIES = 5
"""Attempts in a row that bring no new byte before a download is given up."""
MAX_ATTEMPTS = 100
BACKOFF = 0.05
"""Seconds before the first retry; doubled each time (at most 1 s)."""
CONFIG_LIMIT = 64 << 20


class _Cancelled(Exception):
    """Another download failed (or the pull was interrupted): stop this one."""


def short(digest: str) -> str:
    """The 12 hex digits Docker shows for a layer."""
    return digest.split(":", 1)[-1][:12]


def default_concurrency() -> int:
    value = os.environ.get(CONCURRENCY_ENV, "")
    return max(1, int(value)) if value.isdigit() else DEFAULT_CONCURRENCY


class Fetcher:
    """The blobs of one image from one repository of one registry."""

    def __init__(
        self,
        store: ImageStore,
        client: RegistryClient,
        repository: str,
        progress: Progress,
        concurrency: int | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.repository = repository
        self.progress = progress
        self.concurrency = concurrency or default_concurrency()
        self.where = f"{client.host}/{repository}"
        self.added: list[str] = []  # blobs this fetcher stored (that were not there)
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def fetch_all(self, config: dict[str, Any], layers: list[dict[str, Any]]) -> bytes:
        """Fetch config and missing layers; returns the config's bytes."""
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        from dockyard.registry.client_errors import BlobError

        if int(config["size"]) > CONFIG_LIMIT:
            raise BlobError(f"{self.where}: the image config is larger than 64 MiB")
        content = self.store.content
        unique: dict[str, dict[str, Any]] = {}
        for layer in layers:
            unique.setdefault(str(layer["digest"]), layer)
        missing = [d for d in unique if not content.has(d)]
        jobs = ([config] if not content.has(config["digest"]) else []) + [
            unique[d] for d in missing
        ]
        workers = max(1, min(self.concurrency, len(jobs)))
        for digest in unique:
            if digest not in missing:
                self.progress.status(short(digest), "Already exists")
        for digest in missing:
            self.progress.status(short(digest), "Pulling fs layer")
        started = workers - (len(jobs) - len(missing))
        for digest in missing[started:]:
            self.progress.status(short(digest), "Waiting")
        futures: dict[str, Future[None]] = {}
        pool = ThreadPoolExecutor(workers, thread_name_prefix="pull") if jobs else None
        try:
            for job in jobs:
                digest = str(job["digest"])
                ident = short(digest) if job is not config else None
                assert pool is not None
                futures[digest] = pool.submit(self.fetch, job, ident)
            pending = set(futures.values())
            completed = 0
            order = [d for d in unique if d in futures]
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    error = future.exception()
                    if error is not None and not isinstance(error, _Cancelled):
                        raise error
                while completed < len(order) and futures[order[completed]].done():
                    self.progress.status(short(order[completed]), "Pull complete")
                    completed += 1
        finally:
            self.stop.set()  # a no-op after success; on failure the others stop soon
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return content.read(str(config["digest"]))

    def fetch(self, descriptor: dict[str, Any], ident: str | None) -> None:
        """One blob into the content store (the lease already names it)."""
        from dockyard.registry.client_errors import BlobError
        from dockyard.storage.content import ContentError, DigestMismatch

        digest, size = str(descriptor["digest"]), int(descriptor["size"])
        content = self.store.content
        if content.has(digest):  # another process stored it meanwhile
            return
        again = True
        while True:
            try:
                with content.writer(digest, size, resume=True) as writer:
                    resumed = writer.offset > 0
                    self._stream(writer, digest, size, ident)
                    if ident:
                        self.progress.status(ident, "Verifying Checksum")
                    writer.commit()
            except DigestMismatch as err:
                if resumed and again:
                    again = False  # what an earlier pull left was bad: once more, from 0
                    continue
                raise BlobError(
                    f"blob {digest} from {self.where} is corrupt: {err} (nothing was stored)"
                ) from None
            except ContentError as err:
                raise BlobError(f"blob {digest} from {self.where}: {err}") from None
            break
        with self._lock:
            self.added.append(digest)
        if ident:
            self.progress.status(ident, "Download complete")

    def _stream(self, writer: LocalBlobWriter, digest: str, size: int, ident: str | None) -> None:
        """Write the blob's bytes from `writer.offset` on, resuming after breaks."""
        import http.client
        import time

        from dockyard.registry.client_errors import (
            BlobError,
            RegistryProtocolError,
            RegistryUnreachable,
        )
        from dockyard.registry.client_http import describe_failure

        buffer = bytearray(BLOCK)
        view = memoryview(buffer)
        failures = attempts = 0
        reason = ""
        progress = self.progress
        while writer.offset < size:
            if self.stop.is_set():
                raise _Cancelled()
            if failures > RETRIES or attempts >= MAX_ATTEMPTS:
                raise BlobError(
                    f"downloading blob {digest} from {self.where} failed at byte "
                    f"{writer.offset} of {size}: {reason}"
                )
            if failures:
                time.sleep(min(BACKOFF * 2 ** (failures - 1), 1.0))
            attempts += 1
            offset = writer.offset
            try:
                resp = self.client.get_blob(self.repository, digest, offset)
            except RegistryUnreachable as err:
                failures, reason = failures + 1, str(err)
                continue
            skip = 0
            if offset and resp.status == 206:
                ranged = resp.header("Content-Range") or ""
                if not ranged.startswith(f"bytes {offset}-"):
                    resp.close()
                    raise RegistryProtocolError(
                        f"{self.where}: asked for blob {digest} from byte {offset}, "
                        f'got the range "{ranged}"'
                    )
            elif offset:
                skip = offset  # the server ignored Range: read past what is stored
            try:
                while n := resp.readinto(buffer):
                    if skip:
                        if n <= skip:
                            skip -= n
                            continue
                        writer.write(view[skip:n])
                        skip = 0
                    else:
                        writer.write(view[:n])
                    if ident:
                        progress.transfer(ident, "Downloading", writer.offset, size)
                    if self.stop.is_set():
                        resp.close()
                        raise _Cancelled()
            except (OSError, http.client.HTTPException) as err:
                resp.close()
                failures = 0 if writer.offset > offset else failures + 1
                reason = describe_failure(err)
                if isinstance(err, http.client.IncompleteRead):
                    reason = f"the connection was cut after {writer.offset} of {size} bytes"
                continue
            resp.release()
            if writer.offset < size:
                failures = 0 if writer.offset > offset else failures + 1
                reason = f"the registry sent {writer.offset} of {size} bytes"
