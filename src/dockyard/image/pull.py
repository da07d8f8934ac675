"""`pull`: an image from a registry into the store, as `load` would have put it.

1. The name is resolved (registries.conf: short names, aliases) and each place
   that may have it is asked for its manifest: the registry's mirrors first,
   then the registry itself; the first that has it wins.
2. An index (OCI) or manifest list (Docker) is narrowed to one platform.
3. The config and the layers not stored yet are fetched in parallel, each
   streamed into the content store with its digest computed as it arrives;
   a connection cut short is resumed with a Range request (image/pull_blobs.py).
4. Manifest and config are stored byte for byte (their digests are the
   registry's), the image is recorded with its tag and repo digest, and where each
   blob came from is remembered (for cross-repository mounts on push).

Layers are not unpacked here: the store unpacks (and checks each layer's diff_id)
when a container is first created from the image, as before. A lease holds
everything from the first byte until the image is recorded; a pull that fails
removes the blobs it added, and records nothing.
"""

from __future__ import annotations

import json

from dockyard.image import reference as refs
from dockyard.image.store import ImageError
from dockyard.oci import image_spec as spec

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.image.platforms import Platform
    from dockyard.image.store import Image, ImageStore
    from dockyard.registry.client import Manifest, RegistryClient
    from dockyard.registry.client_auth import Credentials
    from dockyard.registry.client_errors import RegistryError
    from dockyard.registry.config import RegistriesConf, Source
    from dockyard.registry.progress import Progress

INDEX_TYPES = (spec.MEDIA_INDEX, spec.DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (spec.MEDIA_MANIFEST, spec.DOCKER_MANIFEST)
CONFIG_TYPES = (spec.MEDIA_CONFIG, spec.DOCKER_CONFIG)
SCHEMA1_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
_LAYER_SUFFIXES = ("tar", "tar+gzip", "tar.gzip", "tar+zstd")
_FOREIGN = "foreign.diff"


class PullError(ImageError):
    """A pull that can't be done; one line naming the image and the cause."""


class Clients:
    """Registry clients of one pull (or several), by host and insecurity."""

    def __init__(
        self,
        auth_file: str | None = None,
        tls_verify: bool | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.auth_file = auth_file
        self.tls_verify = tls_verify
        self.credentials = credentials  # for every registry (the Python API's auth_config)
        self._clients: dict[tuple[str, bool], RegistryClient] = {}

    def get(self, host: str, insecure: bool) -> RegistryClient:
        from dockyard.registry.client import RegistryClient

        if self.tls_verify is not None:
            insecure = not self.tls_verify
        key = (host, insecure)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = RegistryClient(
                host, insecure=insecure, credentials=self.credentials, auth_file=self.auth_file
            )
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


class PullResult:
    """What a pull did: the reference pulled, the image, the digest the reference
    resolved to (an index's when it was one), and whether anything changed."""

    def __init__(
        self, reference: refs.Reference, image: Image, digest: str, updated: bool, source: Source
    ) -> None:
        self.reference = reference
        self.image = image
        self.digest = digest
        self.updated = updated
        self.source = source

    def __repr__(self) -> str:
        return f"PullResult({str(self.reference)!r}, {self.image.id!r}, updated={self.updated})"


def pull(
    store: ImageStore,
    name: str,
    platform: Platform | None = None,
    conf: RegistriesConf | None = None,
    progress: Progress | None = None,
    clients: Clients | None = None,
    concurrency: int | None = None,
) -> PullResult:
    """Pull `name` (`nginx`, `127.0.0.1:5000/app:v1`, `app@sha256:…`) into `store`."""
    from dockyard.image import platforms
    from dockyard.registry import config
    from dockyard.registry.progress import Progress

    conf = conf if conf is not None else config.load(None, store.root)
    progress = progress or Progress()
    own_clients = clients is None
    clients = clients or Clients()
    explicit = platform is not None
    platform = platform or platforms.host()
    try:
        if refs.parse(name, default_tag=None).tag is None and "@" not in name:
            progress.message(f"Using default tag: {refs.DEFAULT_TAG}")
        ref, source, client, top = _find(conf, clients, name)
        progress.message(f"{ref.digest or ref.tag}: Pulling from {_remote_name(ref)}")
        manifest = _platform_manifest(client, source, ref, top, platform)
        return _fetch_and_record(
            store,
            ref,
            source,
            client,
            top,
            manifest,
            platform if explicit else None,
            progress,
            concurrency,
        )
    finally:
        if own_clients:
            clients.close()


def _remote_name(ref: refs.Reference) -> str:
    """What Docker shows in `latest: Pulling from library/nginx`."""
    return ref.path


def _find(
    conf: RegistriesConf, clients: Clients, name: str
) -> tuple[refs.Reference, Source, RegistryClient, Manifest]:
    """The first (reference, place) that has a manifest for `name`."""
    from dockyard.registry.client_errors import RegistryError

    tried: list[tuple[refs.Reference, Source, RegistryError]] = []
    for ref in conf.resolve(name):
        for source in conf.pull_sources(ref):
            client = clients.get(source.host, source.insecure)
            try:
                manifest = client.get_manifest(source.repository, ref.digest or str(ref.tag))
            except RegistryError as err:
                tried.append((ref, source, err))
                continue
            return ref, source, client, manifest
    raise _not_found(tried)


def _not_found(tried: list[tuple[refs.Reference, Source, RegistryError]]) -> PullError:
    """One line: Docker's words for the registry itself, then what the others said."""
    main = next((t for t in reversed(tried) if not t[1].mirror), tried[-1])
    ref, source, err = main
    message = _translate(ref, source, err)
    others = [
        f"{'mirror ' if s.mirror else ''}{s}: {e.text or e}" for r, s, e in tried if e is not err
    ]
    if others:
        message += f" (also tried {'; '.join(others)})"
    return PullError(message)


def _translate(ref: refs.Reference, source: Source, err: RegistryError) -> str:
    """Docker's messages for a manifest that couldn't be fetched."""
    from dockyard.registry.client_errors import RegistryNotFound, RegistryUnauthorized

    where = "" if source.host == ref.domain else f" (at {source})"
    if err.code == "MANIFEST_UNKNOWN" or (isinstance(err, RegistryNotFound) and not err.code):
        return f"manifest for {ref.familiar()} not found{where}: {err.text or err}"
    if err.code in ("NAME_UNKNOWN", "UNAUTHORIZED", "DENIED") or isinstance(
        err, RegistryUnauthorized
    ):
        name = refs.Reference(ref.domain, ref.path, None, None).familiar()
        return (
            f"pull access denied for {name}, repository does not exist or may require "
            f"'docker login'{where}: {err.text or err}"
        )
    return str(err)


def _kind(manifest: Manifest, doc: dict[str, Any]) -> str:
    """ "index", "manifest", "schema1" or "other", from the media type or the document."""
    media = manifest.media_type or str(doc.get("mediaType") or "")
    if media in INDEX_TYPES or (media not in MANIFEST_TYPES and "manifests" in doc):
        return "index"
    if media in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        return "schema1"
    if media in MANIFEST_TYPES or "config" in doc:
        return "manifest"
    return "other"


def _platform_manifest(
    client: RegistryClient,
    source: Source,
    ref: refs.Reference,
    manifest: Manifest,
    platform: Platform,
) -> Manifest:
    """The image manifest for `platform`: `manifest` itself, or chosen from its index."""
    from dockyard.image import platforms

    for _ in range(3):  # an index of indexes, at most this deep
        doc = manifest.json()
        kind = _kind(manifest, doc)
        if kind == "manifest":
            return manifest
        if kind == "schema1":
            raise PullError(
                f"{ref.familiar()}: Docker Image Format v1 (schema 1) manifests are not "
                "supported any more: push the image again with a current client"
            )
        if kind != "index":
            raise PullError(
                f"{ref.familiar()} is not a container image "
                f"(manifest media type {manifest.media_type or 'unknown'})"
            )
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise PullError(f"{ref.familiar()}: the index has no manifests list")
        entries = [e for e in entries if isinstance(e, dict)]
        chosen = platforms.choose(entries, platform)
        if chosen is None:
            found = sorted({platforms.describe(e.get("platform") or {}) for e in entries})
            raise PullError(
                f"no matching manifest for {platform} in the manifest list entries of "
                f"{ref.familiar()} (it has {', '.join(found) or 'none'})"
            )
        manifest = client.get_manifest(source.repository, _digest_of(chosen, ref))
    raise PullError(f"{ref.familiar()}: indexes nested too deep")


def _digest_of(descriptor: Any, ref: refs.Reference) -> str:
    from dockyard.oci import digest as digests

    value = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if not isinstance(value, str) or not digests.is_valid(value):
        raise PullError(f"{ref.familiar()}: the manifest has an invalid digest {value!r}")
    return value


def _descriptor(value: Any, ref: refs.Reference, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PullError(f"{ref.familiar()}: the manifest's {what} is not a descriptor")
    size = value.get("size")
    if not isinstance(size, int) or size < 0:
        raise PullError(f"{ref.familiar()}: the manifest's {what} has an invalid size")
    _digest_of(value, ref)
    return value


def _check_layer(layer: dict[str, Any], ref: refs.Reference) -> None:
    media = str(layer.get("mediaType") or "")
    if _FOREIGN in media or "nondistributable" in media:
        raise PullError(
            f"{ref.familiar()}: layer {layer['digest']} is a foreign layer ({media}), "
            "which dockyard doesn't fetch"
        )
    if media and not media.endswith(_LAYER_SUFFIXES):
        raise PullError(
            f"{ref.familiar()} is not a container image: layer {layer['digest']} is {media}"
        )


def _fetch_and_record(
    store: ImageStore,
    ref: refs.Reference,
    source: Source,
    client: RegistryClient,
    top: Manifest,
    manifest: Manifest,
    platform: Platform | None,
    progress: Progress,
    concurrency: int | None,
) -> PullResult:
    from dockyard.image.archive import _discard
    from dockyard.image.pull_blobs import Fetcher
    from dockyard.storage.leases import CONTENT

    doc = manifest.json()
    config_desc = _descriptor(doc.get("config"), ref, "config")
    if config_desc.get("mediaType") and config_desc["mediaType"] not in CONFIG_TYPES:
        raise PullError(
            f"{ref.familiar()} is not a container image (config {config_desc['mediaType']})"
        )
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise PullError(f"{ref.familiar()}: the manifest has no layers list")
    layers = [_descriptor(layer, ref, "layer") for layer in raw_layers]
    for layer in layers:
        _check_layer(layer, ref)
    before = _tagged(store, ref)
    content = store.content
    new_meta = [d for d in (manifest.digest, config_desc["digest"]) if not content.has(d)]
    with store.leases.create() as lease:
        lease.add(CONTENT, manifest.digest, config_desc["digest"], *(d["digest"] for d in layers))
        fetcher = Fetcher(store, client, source.repository, progress, concurrency)
        try:
            config_bytes = fetcher.fetch_all(config_desc, layers)
            config = _config(config_bytes, ref, len(layers), platform)
            repo_digest = f"{ref.name}@{ref.digest or top.digest}"
            image = store.add_image(
                config,
                layers,
                [ref] if ref.tag and not ref.digest else [],
                config_bytes=config_bytes,
                lease=lease,
                manifest_bytes=manifest.data,
                repo_digests=[repo_digest],
            )
        except BaseException:
            lease.release()
            _discard(store, fetcher.added + new_meta)
            raise
    remember_sources(
        store,
        [config_desc["digest"], *(d["digest"] for d in layers)],
        source.host,
        source.repository,
    )
    updated = before != image.id or bool(fetcher.added)
    progress.message(f"Digest: {ref.digest or top.digest}")
    what = "Downloaded newer image" if updated else "Image is up to date"
    progress.message(f"Status: {what} for {ref.familiar()}")
    return PullResult(ref, image, ref.digest or top.digest, updated, source)


def _tagged(store: ImageStore, ref: refs.Reference) -> str | None:
    name = str(ref) if not ref.digest else f"{ref.name}@{ref.digest}"
    row = store.conn.execute(
        "SELECT image_id FROM tags WHERE name = ? UNION ALL "
        "SELECT image_id FROM repo_digests WHERE name = ? LIMIT 1",
        (name, name),
    ).fetchone()
    return str(row[0]) if row else None


def _config(
    data: bytes, ref: refs.Reference, layer_count: int, platform: Platform | None
) -> dict[str, Any]:
    try:
        config = json.loads(data)
    except ValueError:
        raise PullError(f"{ref.familiar()}: the image config is not valid JSON") from None
    if not isinstance(config, dict):
        raise PullError(f"{ref.familiar()}: the image config is not a JSON object")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != layer_count:
        count = len(diff_ids) if isinstance(diff_ids, list) else 0
        raise PullError(
            f"{ref.familiar()}: the image config names {count} layers, the manifest {layer_count}"
        )
    if platform is not None:
        actual = "/".join(
            str(p)
            for p in (config.get("os"), config.get("architecture"), config.get("variant"))
            if p
        )
        if platform.rank(config) is None:
            raise PullError(
                f"image with reference {ref.familiar()} was found but does not match the "
                f"specified platform: wanted {platform}, actual: {actual}"
            )
    return config


def remember_sources(store: ImageStore, digests: list[str], host: str, repository: str) -> None:
    """Blobs `digests` are in `host`/`repository` (push mounts them from there)."""
    from dockyard.storage import db

    now = db.now()
    with db.transaction(store.conn) as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO blob_sources (digest, registry, repository, updated)"
            " VALUES (?, ?, ?, ?)",
            [(d, host, repository, now) for d in dict.fromkeys(digests)],
        )
