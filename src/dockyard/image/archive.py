"""`docker save` / `docker load`: images to and from tar archives.

Saving writes Docker ≥25's combined form, which every peer reads: the legacy
docker-save files (`manifest.json` [{Config, RepoTags, Layers}], `repositories`)
whose paths point into an OCI image layout in the same tar (`oci-layout`,
`index.json`, `blobs/sha256/<hex>`). Blobs are the stored ones, byte for byte,
so the manifest and image ID survive a round trip.

Loading reads a tar stream once (plain, gzip or zstd; seekable or not) and
accepts: that combined form, older docker-save archives (`<id>/layer.tar`,
`<hex>.json`, symlinked duplicate layers), `podman save` docker-archive and
oci-archive, and OCI image layout archives (`index.json` with
`org.opencontainers.image.ref.name`). Every blob goes through the content
store, which verifies a digest-named blob before it becomes visible; layers
are checked against the config's diff_ids. When anything fails, the blobs this
load added are removed again and no image is recorded.
"""

from __future__ import annotations

import json
import posixpath

from dockyard.image import reference as refs
from dockyard.image.store import ImageError
from dockyard.oci import image_spec as spec

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import tarfile
    from typing import IO, Any, BinaryIO

    from dockyard.image.store import Image, ImageStore
    from dockyard.storage.leases import Lease

_CHUNK = 1 << 20
_SMALL = 8 << 20  # metadata files kept in memory; anything bigger is a blob
_MTIME = 0
_DOCKER_TO_OCI = {
    spec.DOCKER_MANIFEST: spec.MEDIA_MANIFEST,
    spec.DOCKER_MANIFEST_LIST: spec.MEDIA_INDEX,
    spec.DOCKER_CONFIG: spec.MEDIA_CONFIG,
    spec.DOCKER_LAYER: spec.MEDIA_LAYER,
    spec.DOCKER_LAYER_GZIP: spec.MEDIA_LAYER_GZIP,
}
_CONTAINERD_NAME = "io.containerd.image.name"


class ArchiveError(ImageError):
    """An archive that cannot be loaded; the message says what is wrong with it."""


# ---------------------------------------------------------------------------- save


def _blob_path(digest: str) -> str:
    algorithm, _, hex_ = digest.partition(":")
    return f"blobs/{algorithm}/{hex_}"


def save(store: ImageStore, names: list[str], out: BinaryIO) -> None:
    """Write the images `names` (references or IDs) as one docker-save + OCI layout tar."""
    import tarfile

    from dockyard.image.layers import _io

    if not names:
        raise ArchiveError("save needs at least one image")
    chosen: dict[str, tuple[Image, list[refs.Reference]]] = {}
    for name in names:  # resolve all first: an unknown name fails before any output
        image = store.get(name)
        entry = chosen.setdefault(image.id, (image, []))
        if not _names_id(name, image.id):
            ref = refs.parse(name)
            if ref.digest is None and ref not in entry[1]:
                entry[1].append(ref)
    with tarfile.open(fileobj=_io(out), mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _directory(tar, "blobs")
        _directory(tar, "blobs/sha256")
        written: set[str] = set()
        index: list[dict[str, Any]] = []
        docker_manifest: list[dict[str, Any]] = []
        repositories: dict[str, dict[str, str]] = {}
        for image, tags in chosen.values():
            manifest_bytes = store.content.read(image.manifest_digest)
            manifest = json.loads(manifest_bytes)
            layers = [str(layer["digest"]) for layer in manifest.get("layers") or []]
            for digest in (str(manifest["config"]["digest"]), *layers, image.manifest_digest):
                if digest not in written:
                    _blob(tar, store, digest)
                    written.add(digest)
            descriptor = spec.descriptor(
                str(manifest.get("mediaType") or spec.MEDIA_MANIFEST),
                image.manifest_digest,
                len(manifest_bytes),
            )
            if tags:
                for ref in tags:
                    annotations = {_CONTAINERD_NAME: str(ref), spec.ANNOTATION_REF_NAME: ref.tag}
                    index.append({**descriptor, "annotations": annotations})
                    repo = ref.familiar().rsplit(":", 1)[0]
                    repositories.setdefault(repo, {})[str(ref.tag)] = image.id.split(":", 1)[1]
            else:
                index.append(descriptor)
            docker_manifest.append(
                {
                    "Config": _blob_path(str(manifest["config"]["digest"])),
                    "RepoTags": [ref.familiar() for ref in tags] or None,
                    "Layers": [_blob_path(d) for d in layers],
                }
            )
        doc = {"schemaVersion": 2, "mediaType": spec.MEDIA_INDEX, "manifests": index}
        _file(tar, "index.json", json.dumps(doc).encode())
        _file(tar, "manifest.json", json.dumps(docker_manifest).encode())
        _file(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        if repositories:
            _file(tar, "repositories", json.dumps(repositories).encode())


def _names_id(name: str, image_id: str) -> bool:
    hex_part = name.removeprefix("sha256:")
    if not hex_part or any(c not in "0123456789abcdef" for c in hex_part):
        return False
    return image_id.removeprefix("sha256:").startswith(hex_part)


def _info(name: str, size: int = 0) -> tarfile.TarInfo:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, _MTIME
    info.uname = info.gname = ""
    return info


def _directory(tar: tarfile.TarFile, name: str) -> None:
    import tarfile

    info = _info(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)


def _file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _blob(tar: tarfile.TarFile, store: ImageStore, digest: str) -> None:
    with store.content.open(digest) as f:
        import os

        tar.addfile(_info(_blob_path(digest), os.fstat(f.fileno()).st_size), f)


# ---------------------------------------------------------------------------- load


class _Reader:
    """One pass over the archive: blobs into the content store, metadata into memory."""

    def __init__(self, store: ImageStore, lease: Lease) -> None:
        self.store = store
        self.lease = lease  # names every blob this load stores or finds, before it relies on it
        self.files: dict[str, bytes] = {}  # small metadata files by normalized path
        self.blobs: dict[str, str] = {}  # path -> digest of the stored blob
        self.links: dict[str, str] = {}  # path -> path it links to
        self.added: list[str] = []  # blobs this load stored that were not there before

    def read(self, stream: BinaryIO) -> None:
        import tarfile

        from dockyard.image.layers import _io, open_layer

        try:
            with tarfile.open(fileobj=_io(open_layer(stream)), mode="r|") as tar:
                for member in tar:
                    self.member(tar, member)
        except tarfile.TarError as err:
            raise ArchiveError(f"invalid archive: {err}") from None
        except EOFError:
            raise ArchiveError("invalid archive: unexpected end of data (truncated?)") from None

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = posixpath.normpath(member.name.lstrip("/"))
        if name.startswith("../") or name == "..":
            raise ArchiveError(f"invalid archive: member {member.name!r} climbs out")
        if member.issym() or member.islnk():
            target = member.linkname
            if member.issym():
                target = posixpath.join(posixpath.dirname(name), target)
            self.links[name] = posixpath.normpath(target.lstrip("/"))
            return
        if not member.isfile():
            return
        data = tar.extractfile(member)
        assert data is not None
        parts = name.split("/")
        expected: str | None = None
        if len(parts) == 3 and parts[0] == "blobs":
            expected = f"{parts[1]}:{parts[2]}"
        elif len(parts) == 1 and name.endswith(".json") and _is_hex(name[:-5]):
            expected = f"sha256:{name[:-5]}"  # an old docker-save config, named by its ID
        if expected is None and member.size <= _SMALL and not name.endswith(".tar"):
            self.files[name] = data.read()
            return
        self.blobs[name] = self.ingest(data, expected, member.size)

    def ingest(self, data: IO[bytes], expected: str | None, size: int) -> str:
        from dockyard.storage.content import ContentError
        from dockyard.storage.leases import CONTENT

        content = self.store.content
        if expected is not None:
            self.lease.add(CONTENT, expected)
            if content.has(expected):
                return expected  # already stored (and verified when it was)
        try:
            with content.writer(expected, size) as writer:
                while chunk := data.read(_CHUNK):
                    writer.write(chunk)
                with self.lease.guard():  # no collection between the rename and the lease
                    digest = writer.commit()
                    self.lease.add(CONTENT, digest)
        except ContentError as err:
            raise ArchiveError(f"invalid archive: {err}") from None
        if digest not in self.added:
            self.added.append(digest)
        return digest

    def resolve(self, path: str) -> str:
        path = posixpath.normpath(path.lstrip("/"))
        for _ in range(40):
            if path not in self.links:
                return path
            path = self.links[path]
        raise ArchiveError(f"invalid archive: too many links at {path}")

    def digest_of(self, path: str) -> str:
        """The stored blob for archive path `path` (a small file is stored on demand)."""
        path = self.resolve(path)
        if path in self.blobs:
            return self.blobs[path]
        if path in self.files:
            from dockyard.oci.digest import from_bytes
            from dockyard.storage.leases import CONTENT

            digest = from_bytes(self.files[path])
            self.lease.add(CONTENT, digest)
            self.store.content.put(self.files[path], digest)
            self.blobs[path] = digest
            if digest not in self.added:
                self.added.append(digest)
            return digest
        raise ArchiveError(f"invalid archive: {path} is missing")

    def json_at(self, path: str) -> Any:
        path = self.resolve(path)
        try:
            if path in self.files:
                return json.loads(self.files[path])
            return json.loads(self.store.content.read(self.digest_of(path)))
        except ValueError:
            raise ArchiveError(f"invalid archive: {path} is not valid JSON") from None

    def blob_json(self, digest: str) -> Any:
        return self.json_at(_blob_path(digest))


def _is_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def load(store: ImageStore, stream: BinaryIO) -> list[str]:
    """Load every image of the archive; returns Docker's output lines."""
    with store.leases.create() as lease:
        return _load(store, stream, lease)


def _load(store: ImageStore, stream: BinaryIO, lease: Lease) -> list[str]:
    reader = _Reader(store, lease)
    try:
        reader.read(stream)
        if "manifest.json" in reader.files or "manifest.json" in reader.links:
            found = _docker_images(reader)
        elif "index.json" in reader.files:
            found = _oci_images(reader)
        else:
            raise ArchiveError(
                "invalid archive: neither manifest.json (docker save) nor index.json "
                "(OCI image layout) found"
            )
        if not found:
            raise ArchiveError("invalid archive: it holds no image")
        planned = [_plan(reader, config_digest, layers) for config_digest, layers, _ in found]
    except BaseException:
        lease.release()
        _discard(store, reader.added)
        raise
    lines: list[str] = []
    for (config, raw, layers), (_, _, tags) in zip(planned, found, strict=True):
        image = store.add_image(config, layers, tags, config_bytes=raw, lease=lease)
        if tags:
            lines += [f"Loaded image: {ref.familiar()}" for ref in tags]
        else:
            lines.append(f"Loaded image ID: {image.id}")
    return lines


_Found = tuple[str, list[str], list[refs.Reference]]  # config digest, layer digests, tags


def _docker_images(reader: _Reader) -> list[_Found]:
    entries = reader.json_at("manifest.json")
    if not isinstance(entries, list):
        raise ArchiveError("invalid archive: manifest.json is not a list")
    found: list[_Found] = []
    for entry in entries:
        if not isinstance(entry, dict) or "Config" not in entry:
            raise ArchiveError("invalid archive: a manifest.json entry has no Config")
        tags = [refs.parse(tag) for tag in entry.get("RepoTags") or []]
        config = reader.digest_of(str(entry["Config"]))
        layers = [reader.digest_of(str(path)) for path in entry.get("Layers") or []]
        found.append((config, layers, tags))
    return found


def _oci_images(reader: _Reader) -> list[_Found]:
    index = reader.json_at("index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ArchiveError("invalid archive: index.json has no manifests")
    found: list[_Found] = []
    for desc in index["manifests"]:
        annotations = desc.get("annotations") or {}
        tags = _oci_tags(annotations)
        manifest = _pick_manifest(reader, desc)
        if manifest is None:
            continue
        config = str(manifest["config"]["digest"])
        layers = [str(layer["digest"]) for layer in manifest.get("layers") or []]
        for digest in (config, *layers):
            reader.digest_of(_blob_path(digest))  # present in the archive?
        for entry in found:
            if entry[0] == config:
                entry[2].extend(t for t in tags if t not in entry[2])
                break
        else:
            found.append((config, layers, tags))
    return found


def _oci_tags(annotations: dict[str, str]) -> list[refs.Reference]:
    """The image's name: containerd's full name, or a ref.name that is a full reference."""
    name = annotations.get(_CONTAINERD_NAME) or annotations.get(spec.ANNOTATION_REF_NAME)
    if not name:
        return []
    try:
        ref = refs.parse(name)
    except refs.ReferenceError:
        return []
    # A bare tag ("latest") names no repository: Docker loads that image untagged.
    has_repo = "/" in name or ":" in name or _CONTAINERD_NAME in annotations
    return [ref] if has_repo and ref.digest is None else []


def _pick_manifest(reader: _Reader, desc: dict[str, Any]) -> dict[str, Any] | None:
    media = _DOCKER_TO_OCI.get(str(desc.get("mediaType")), desc.get("mediaType"))
    doc = reader.blob_json(str(desc["digest"]))
    if media == spec.MEDIA_INDEX or "manifests" in doc:
        wanted = spec.host_architecture()
        for child in doc.get("manifests") or []:
            platform = child.get("platform") or {}
            if platform.get("architecture") in (None, wanted) and platform.get("os") in (
                None,
                "linux",
            ):
                return _pick_manifest(reader, child)
        return None
    if not isinstance(doc, dict) or "config" not in doc:
        raise ArchiveError(f"invalid archive: manifest {desc['digest']} has no config")
    return doc


def _plan(
    reader: _Reader, config_digest: str, layer_digests: list[str]
) -> tuple[dict[str, Any], bytes, list[dict[str, Any]]]:
    """The image's config (parsed, and its bytes) and layer descriptors; layers are
    checked against the config's diff_ids."""
    raw = reader.store.content.read(config_digest)
    try:
        config = json.loads(raw)
    except ValueError:
        raise ArchiveError(f"invalid archive: config {config_digest} is not valid JSON") from None
    if not isinstance(config, dict):
        raise ArchiveError(f"invalid archive: config {config_digest} is not an object")
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(layer_digests):
        raise ArchiveError(
            f"invalid archive: image {config_digest} names {len(diff_ids)} layers "
            f"but the archive gives {len(layer_digests)}"
        )
    layers = []
    for digest, diff_id in zip(layer_digests, diff_ids, strict=True):
        media, actual = _layer_kind(reader.store, digest)
        if actual != diff_id:
            raise ArchiveError(
                f"invalid archive: layer {digest} has diff_id {actual}, the config says {diff_id}"
            )
        layers.append(spec.descriptor(media, digest, reader.store.content.size(digest)))
    return config, raw, layers


def _layer_kind(store: ImageStore, digest: str) -> tuple[str, str]:
    """(media type, diff_id) of a stored layer blob; the diff_id is hashed unless obvious."""
    import hashlib

    from dockyard.image.layers import open_layer

    with store.content.open(digest) as raw:
        head = raw.read(4)
        raw.seek(0)
        if head.startswith(b"\x1f\x8b"):
            media = spec.MEDIA_LAYER_GZIP
        elif head.startswith(b"\x28\xb5\x2f\xfd"):
            media = spec.MEDIA_LAYER_ZSTD
        else:
            return spec.MEDIA_LAYER, digest
        hasher = hashlib.sha256()
        try:
            plain = open_layer(raw)
            while chunk := plain.read(_CHUNK):
                hasher.update(chunk)
        except Exception as err:  # gzip/zstd errors come in many types
            raise ArchiveError(
                f"invalid archive: layer {digest} does not decompress: {err}"
            ) from None
    return media, "sha256:" + hasher.hexdigest()


def _discard(store: ImageStore, added: list[str]) -> None:
    """Remove blobs this load stored, unless an image or another ingest's lease (maybe
    another process's) holds them; the load's own lease is released first."""
    from dockyard.storage.content import BlobNotFound
    from dockyard.storage.leases import CONTENT

    if not added:
        return
    with store.leases.collecting():
        leased = store.leases.held()[CONTENT]
        for digest in added:
            held = (
                digest in leased
                or store.conn.execute(
                    "SELECT 1 FROM blob_refs WHERE digest = ? LIMIT 1", (digest,)
                ).fetchone()
            )
            if not held:
                try:
                    store.content.delete(digest)
                except BlobNotFound:
                    pass
