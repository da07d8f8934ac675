"""The registry's storage: blobs, uploads, manifests and tags under one directory.

    <storage>/blobs/<alg>/<hex>   every blob and manifest, once, shared by all
                                  repositories (`storage.content`'s layout and rules)
    <storage>/blobs/.ingest/      monolithic uploads being written
    <storage>/uploads/<id>/       chunked uploads in progress (uploads.py)
    <storage>/registry.db         repositories, manifests, tags, blob links (metadata.py)
    <storage>/gc.lock             flock: `gc` exclusive; manifest pushes shared

A blob becomes visible only when its digest was verified and it was fsynced and
renamed into place; a metadata row is written only after the bytes it names.
A repository serves only the blobs linked to it (pushed to it, mounted into it).

Garbage collection (gc.py) removes blobs no manifest needs. Two rules keep it
from removing a blob a push still relies on: a manifest push checks and records
its blobs under the shared lock (gc sweeps under the exclusive one), and blobs
younger than the grace period are kept; a blob a client is told exists (HEAD,
mount, an upload of bytes already stored) has its mtime refreshed, under the
shared lock, so that it counts as young again.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time

from dockyard.oci import digest as _digest
from dockyard.registry import manifests, names
from dockyard.registry.errors import RegistryError
from dockyard.registry.metadata import ManifestRow, Metadata
from dockyard.registry.uploads import Upload, Uploads
from dockyard.storage.content import (
    BLOB_MODE,
    ContentError,
    DigestMismatch,
    LocalContentStore,
    SizeMismatch,
)

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import TracebackType

GRACE_SECONDS = 3600.0
"""Unreferenced blobs younger than this are kept by gc: a push may be about to use them."""

LOCK_NAME = "gc.lock"


class BlobStore(LocalContentStore):
    """The content store, plus taking in a file whose digest the registry verified."""

    def adopt(self, path: str, digest: str) -> None:
        """Rename `path` (fsynced, digest checked by the caller) into place as `digest`."""
        os.chmod(path, BLOB_MODE)
        self._place(path, digest)


class GcLock:
    """`with lock.shared():` / `async with lock.shared():` / `with lock.exclusive():`."""

    def __init__(self, path: str, mode: int) -> None:
        self.path = path
        self.mode = mode
        self.fd = -1

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __enter__(self) -> None:
        self._open()
        fcntl.flock(self.fd, self.mode)

    async def __aenter__(self) -> None:
        self._open()
        try:
            fcntl.flock(self.fd, self.mode | fcntl.LOCK_NB)
        except BlockingIOError:  # gc is sweeping: wait without blocking the server
            await asyncio.to_thread(fcntl.flock, self.fd, self.mode)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        os.close(self.fd)
        self.fd = -1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _blob_unknown(digest: str) -> RegistryError:
    return RegistryError("BLOB_UNKNOWN", detail={"digest": digest})


class RegistryStorage:
    """Everything a registry keeps, under `root`. One instance per process."""

    def __init__(self, root: str, grace: float = GRACE_SECONDS) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.blobs = BlobStore(self.root)
        self.meta = Metadata(self.root)
        self.uploads = Uploads(self.root)
        self.grace = grace
        self.lock_path = os.path.join(self.root, LOCK_NAME)

    def close(self) -> None:
        self.meta.close()

    def shared_lock(self) -> GcLock:
        return GcLock(self.lock_path, fcntl.LOCK_SH)

    def exclusive_lock(self) -> GcLock:
        return GcLock(self.lock_path, fcntl.LOCK_EX)

    # blobs -----------------------------------------------------------------------------

    def blob(self, repo: str, digest: str) -> tuple[str, os.stat_result]:
        """The file and stat of blob `digest` of `repo`; BLOB_UNKNOWN when it has none."""
        names.check_digest(digest)
        if not self.meta.has_link(repo, digest):
            raise _blob_unknown(digest)
        path = self.blobs._blob_path(digest)
        try:
            return path, os.stat(path)
        except FileNotFoundError:
            raise _blob_unknown(digest) from None

    async def keep(self, path: str, st: os.stat_result) -> None:
        """Refresh the blob's mtime when it is old: a client was told it exists."""
        if time.time() - st.st_mtime < self.grace / 2:
            return
        async with self.shared_lock():
            try:
                os.utime(path)
            except FileNotFoundError:
                pass

    async def mount(self, repo: str, digest: str, source: str | None) -> bool:
        """Link blob `digest` into `repo` from `source` (any repository when None)."""
        names.check_digest(digest)
        if source is not None and not self.meta.has_link(source, digest):
            return False
        path = self.blobs._blob_path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        await self.keep(path, st)
        self.meta.link(repo, digest)
        return True

    async def put_blob(
        self, repo: str, digest: str, chunks: AsyncIterator[bytes], length: int | None
    ) -> None:
        """A monolithic upload: all of the blob's bytes in one request."""
        names.check_digest(digest)
        try:
            writer = self.blobs.writer(expected=digest, size=length)
        except ContentError as e:
            raise RegistryError("DIGEST_INVALID", str(e)) from None
        with writer:
            try:
                async for chunk in chunks:
                    writer.write(chunk)
                await asyncio.to_thread(writer.commit)
            except DigestMismatch as e:
                raise RegistryError("DIGEST_INVALID", str(e), {"digest": digest}) from None
            except SizeMismatch as e:
                raise RegistryError("SIZE_INVALID", str(e), {"digest": digest}) from None
            except ContentError as e:  # the disk refused it
                raise RegistryError("UNKNOWN", str(e), status=500) from None
        await self._committed(repo, digest)

    async def _committed(self, repo: str, digest: str) -> None:
        path = self.blobs._blob_path(digest)
        await self.keep(path, os.stat(path))  # an older copy may have been kept
        self.meta.link(repo, digest)

    async def finish_upload(self, upload: Upload, digest: str) -> None:
        """Check the upload's digest, then store it as blob `digest` and end the upload."""
        algorithm = _digest.parse(names.check_digest(digest))[0]
        actual, _size = await self.uploads.digest_of(upload, algorithm)
        if actual != digest:
            self.uploads.remove(upload)
            raise RegistryError(
                "DIGEST_INVALID",
                f"upload has digest {actual}, not {digest}",
                {"digest": digest},
            )
        await asyncio.to_thread(self._adopt, upload.data, digest)
        self.uploads.remove(upload)
        await self._committed(upload.repo, digest)

    def _adopt(self, path: str, digest: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.blobs.adopt(path, digest)

    def delete_blob(self, repo: str, digest: str) -> None:
        names.check_digest(digest)
        if not self.meta.unlink(repo, digest):
            raise _blob_unknown(digest)

    # manifests -------------------------------------------------------------------------

    def resolve(self, repo: str, reference: str) -> ManifestRow:
        """The manifest `reference` (tag or digest) names in `repo`."""
        names.check_reference(reference)
        digest = reference if names.is_digest(reference) else self.meta.tag(repo, reference)
        row = self.meta.manifest(repo, digest) if digest else None
        if row is None:
            if not self.meta.repo_exists(repo):
                raise RegistryError("NAME_UNKNOWN", detail={"name": repo})
            raise RegistryError("MANIFEST_UNKNOWN", detail={"reference": reference})
        return row

    def manifest_path(self, row: ManifestRow) -> str:
        return self.blobs._blob_path(row.digest)

    async def put_manifest(
        self,
        repo: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        extra_tags: list[str] | None = None,
        check_refs: bool = True,
    ) -> tuple[str, manifests.Parsed]:
        """Check and store a pushed manifest; its digest and what was parsed from it.

        A pull-through cache stores manifests before their blobs (`check_refs=False`)."""
        names.check_reference(reference)
        tags = [] if names.is_digest(reference) else [reference]
        for tag in extra_tags or []:
            names.check_reference(tag)
            if names.is_digest(tag):
                raise RegistryError("TAG_INVALID", f"{tag[:100]!r} is not a tag")
            tags.append(tag)
        parsed = manifests.parse(body, content_type)
        algorithm = _digest.parse(reference)[0] if names.is_digest(reference) else "sha256"
        digest = _digest.from_bytes(body, algorithm)
        if names.is_digest(reference) and digest != reference:
            raise RegistryError(
                "DIGEST_INVALID",
                f"manifest has digest {digest}, not {reference}",
                {"digest": reference},
            )
        row = ManifestRow(
            digest,
            parsed.media_type,
            len(body),
            parsed.artifact_type,
            parsed.subject,
            json.dumps(parsed.annotations) if parsed.annotations else None,
        )
        async with self.shared_lock():
            if check_refs:
                self._check_refs(repo, parsed)
            if not self.blobs.has(digest):
                await asyncio.to_thread(self.blobs.put, body, digest)
            self.meta.put_manifest(repo, row, parsed.refs(), tags)
        return digest, parsed

    def _check_refs(self, repo: str, parsed: manifests.Parsed) -> None:
        for digest in parsed.blobs:
            if not (self.meta.has_link(repo, digest) and self.blobs.has(digest)):
                raise RegistryError(
                    "MANIFEST_BLOB_UNKNOWN",
                    f"blob {digest} is not in repository {repo}",
                    {"digest": digest},
                )
        missing = self.meta.has_manifests(repo, parsed.manifests)
        if missing:
            raise RegistryError(
                "MANIFEST_BLOB_UNKNOWN",
                f"manifest {missing[0]} is not in repository {repo}",
                {"digest": missing[0]},
            )

    def delete_manifest(self, repo: str, reference: str) -> None:
        names.check_reference(reference)
        if names.is_digest(reference):
            found = self.meta.delete_manifest(repo, reference)
        else:
            found = self.meta.delete_tag(repo, reference)
        if not found:
            raise RegistryError("MANIFEST_UNKNOWN", detail={"reference": reference})

    # listings --------------------------------------------------------------------------

    def tags(self, repo: str, last: str, limit: int) -> list[str]:
        if not self.meta.repo_exists(repo):
            raise RegistryError("NAME_UNKNOWN", detail={"name": repo})
        return self.meta.tags(repo, last, limit)

    def referrers(self, repo: str, subject: str, artifact_type: str | None) -> list[ManifestRow]:
        names.check_digest(subject)
        rows = self.meta.referrers(repo, subject)
        if artifact_type is not None:
            rows = [r for r in rows if r.artifact_type == artifact_type]
        return rows
