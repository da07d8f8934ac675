"""`push`: an image of the store to a registry, its blobs and manifest byte for byte.

Each blob (the config and every layer) is first asked for with `HEAD`: one the
repository has is not sent ("Layer already exists"). One this store has seen in
another repository of the same registry (pulled from or pushed to it: the
`blob_sources` table) is mounted from there (`POST …?mount=&from=`: "Mounted
from …"). The rest is uploaded in parallel, in one `PUT` up to the chunk size
(`$DOCKYARD_PUSH_CHUNK_SIZE`, default 32 MiB) or in `PATCH` chunks of it. The
manifest is sent last, as stored, so its digest is the one `images --digests`
shows; it becomes a repo digest of the image, and the blobs' new home is
remembered for later mounts.
"""

from __future__ import annotations

import json
import os
import threading

from dockyard.image import reference as refs
from dockyard.image.store import ImageError
from dockyard.oci import image_spec as spec

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO

    from dockyard.image.pull import Clients
    from dockyard.image.store import ImageStore
    from dockyard.registry.client import RegistryClient
    from dockyard.registry.config import RegistriesConf
    from dockyard.registry.progress import Progress

CHUNK_ENV = "DOCKYARD_PUSH_CHUNK_SIZE"
DEFAULT_CHUNK = 32 << 20
CONCURRENCY = 3
_MOUNT_CANDIDATES = 3


class PushError(ImageError):
    """A push that can't be done; one line naming the image and the cause."""


class PushResult:
    def __init__(self, reference: refs.Reference, digest: str, size: int) -> None:
        self.reference = reference
        self.digest = digest
        self.size = size

    def __repr__(self) -> str:
        return f"PushResult({str(self.reference)!r}, {self.digest!r}, {self.size})"


def chunk_size() -> int:
    value = os.environ.get(CHUNK_ENV, "")
    return max(1, int(value)) if value.isdigit() else DEFAULT_CHUNK


def push(
    store: ImageStore,
    name: str,
    conf: RegistriesConf | None = None,
    progress: Progress | None = None,
    clients: Clients | None = None,
) -> PushResult:
    """Push the image tagged `name` (`127.0.0.1:5000/app:v1`) to its registry."""
    from dockyard.image.pull import Clients
    from dockyard.image.store import ImageNotFound
    from dockyard.registry import config
    from dockyard.registry.progress import Progress

    ref = refs.parse(name, default_tag=None)
    if ref.digest:
        raise PushError(f'cannot push a digest reference "{name}": push NAME[:TAG]')
    progress = progress or Progress()
    if ref.tag is None:
        progress.message(f"Using default tag: {refs.DEFAULT_TAG}")
        ref = ref.with_tag(refs.DEFAULT_TAG)
    try:
        image = store.get(str(ref))
    except ImageNotFound:
        raise PushError(
            f"An image does not exist locally with the tag: {ref.familiar().rsplit(':', 1)[0]}"
        ) from None
    conf = conf if conf is not None else config.load(None, store.root)
    source = conf.push_source(ref)
    own_clients = clients is None
    clients = clients or Clients()
    try:
        client = clients.get(source.host, source.insecure)
        progress.message(f"The push refers to repository [{ref.name}]")
        data = store.content.read(image.manifest_digest)
        manifest = json.loads(data)
        blobs = _blobs(store, manifest, image.diff_ids)
        from dockyard.registry.client_errors import RegistryUnauthorized
        from dockyard.registry.client_upload import put_manifest

        try:
            _Uploader(store, client, source.repository, progress).run(blobs)
            media_type = str(manifest.get("mediaType") or spec.MEDIA_MANIFEST)
            digest = put_manifest(client, source.repository, str(ref.tag), data, media_type)
        except RegistryUnauthorized as err:
            raise PushError(
                f"{err.text or err}: cannot push to {source} "
                f"(log in first: dockyard login {source.host})"
            ) from None
    finally:
        if own_clients:
            clients.close()
    from dockyard.image.pull import remember_sources
    from dockyard.storage import db

    remember_sources(store, [b[0] for b in blobs], source.host, source.repository)
    with db.transaction(store.conn) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO repo_digests (image_id, name, created) VALUES (?, ?, ?)",
            (image.id, f"{ref.name}@{digest}", db.now()),
        )
    progress.message(f"{ref.tag}: digest: {digest} size: {len(data)}")
    return PushResult(ref, digest, len(data))


def _blobs(
    store: ImageStore, manifest: dict[str, Any], diff_ids: list[str]
) -> list[tuple[str, int, str | None]]:
    """(digest, size, id shown or None) of the layers, then the config."""
    from dockyard.image.pull_blobs import short

    found: list[tuple[str, int, str | None]] = []
    layers = manifest.get("layers") or []
    for i, layer in enumerate(layers):
        shown = diff_ids[i] if i < len(diff_ids) else layer["digest"]
        found.append((str(layer["digest"]), int(layer["size"]), short(shown)))
    config = manifest["config"]
    found.append((str(config["digest"]), int(config["size"]), None))
    for digest, _, _ in found:
        if not store.content.has(digest):
            raise PushError(
                f"blob {digest} of the image is missing from the store: pull or load it again"
            )
    return list({b[0]: b for b in found}.values())


class _Section:
    """Bytes [start, start+length) of a blob file, read by http.client, with progress."""

    def __init__(self, fd: int, start: int, length: int, report: Any) -> None:
        self.fd = fd
        self.pos = start
        self.end = start + length
        self.report = report

    def read(self, size: int = -1) -> bytes:
        left = self.end - self.pos
        if size < 0 or size > left:
            size = left
        data = os.pread(self.fd, size, self.pos) if size > 0 else b""
        self.pos += len(data)
        self.report(self.pos)
        return data


def _stream(section: _Section) -> BinaryIO:
    return section  # type: ignore[return-value]  # read() is all http.client needs


def _piece(fd: int, start: int, length: int, report: Any) -> Callable[[], BinaryIO]:
    """A body that can be sent again (a retried request reads it from the start)."""
    return lambda: _stream(_Section(fd, start, length, report))


class _Uploader:
    def __init__(
        self, store: ImageStore, client: RegistryClient, repository: str, progress: Progress
    ) -> None:
        self.store = store
        self.client = client
        self.repository = repository
        self.progress = progress
        self.stop = threading.Event()

    def run(self, blobs: list[tuple[str, int, str | None]]) -> None:
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        for _, _, ident in blobs:
            if ident:
                self.progress.status(ident, "Preparing")
        for _, _, ident in blobs[CONCURRENCY:]:
            if ident:
                self.progress.status(ident, "Waiting")
        with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="push") as pool:
            futures = [pool.submit(self.one, *blob) for blob in blobs]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in done:
                    error = future.exception()
                    if error is not None:
                        raise error
            finally:
                self.stop.set()
                for future in futures:
                    future.cancel()

    def one(self, digest: str, size: int, ident: str | None) -> None:
        from dockyard.registry.client_upload import start_upload

        if self.stop.is_set():
            return
        client, repo = self.client, self.repository
        if client.blob_size(repo, digest, f"repository:{repo}:pull,push") is not None:
            if ident:
                self.progress.status(ident, "Layer already exists")
            return
        location = ""
        for source in self._mount_sources(digest):
            mounted, location = start_upload(client, repo, digest, source)
            if mounted:
                if ident:
                    self.progress.status(ident, f"Mounted from {source}")
                return
            break  # not there after all: upload to the location it gave
        if not location:
            location = start_upload(client, repo)[1]
        self._upload(location, digest, size, ident)
        if ident:
            self.progress.status(ident, "Pushed")

    def _mount_sources(self, digest: str) -> list[str]:
        rows = self.store.conn.execute(
            "SELECT repository FROM blob_sources WHERE digest = ? AND registry = ?"
            " AND repository != ? ORDER BY updated DESC LIMIT ?",
            (digest, self.client.host, self.repository, _MOUNT_CANDIDATES),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def _upload(self, location: str, digest: str, size: int, ident: str | None) -> None:
        from dockyard.registry.client_upload import finish_upload, upload_chunk

        chunk = chunk_size()
        fd = os.open(self.store.content.path(digest), os.O_RDONLY | os.O_CLOEXEC)
        progress = self.progress

        def report(done: int) -> None:
            if ident:
                progress.transfer(ident, "Pushing", done, size)

        try:
            if size <= chunk:
                whole = _piece(fd, 0, size, report)
                finish_upload(self.client, self.repository, location, digest, whole, size)
                return
            start = 0
            while start < size:
                if self.stop.is_set():
                    raise PushError("push interrupted")
                length = min(chunk, size - start)
                piece = _piece(fd, start, length, report)
                location = upload_chunk(
                    self.client, self.repository, location, piece, start, length
                )
                start += length
            finish_upload(self.client, self.repository, location, digest)
        finally:
            os.close(fd)
