"""The image store: OCI images in the content store, named by tags in the metadata DB.

An image is its config digest (its ID), a manifest, and layers stored as blobs;
`unpack` turns the layers into committed snapshots named by chain ID, so each
layer is unpacked once and shared by every image and container above it.
"""

from __future__ import annotations

import json
import os
import time

from dockyard.image import reference as refs
from dockyard.oci import image_spec as spec
from dockyard.storage import db

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable
    from typing import Any, BinaryIO

    from dockyard.storage.content import LocalContentStore
    from dockyard.storage.leases import Lease, Leases
    from dockyard.storage.overlay import OverlaySnapshotter


class ImageError(Exception):
    """An image operation the user asked for can't be done; the message says why."""


class ImageNotFound(ImageError):
    def __init__(self, name: str) -> None:
        super().__init__(f"No such image: {name}")


class Image:
    """One image: its ID (config digest), tags, config and manifest digest."""

    def __init__(
        self, id: str, manifest_digest: str, created: str, size: int, config: dict[str, Any]
    ) -> None:
        self.id = id
        self.manifest_digest = manifest_digest
        self.created = created
        self.size = size
        self.config = config
        self.tags: list[str] = []
        # "docker.io/library/nginx@sha256:…": the digests it was pulled or pushed by
        self.repo_digests: list[str] = []

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[1][:12]

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])

    @property
    def chain_ids(self) -> list[str]:
        return spec.chain_ids(self.diff_ids)


class ImageStore:
    """Images under one state root (content store + DB + snapshotter)."""

    def __init__(self, root: str, conn: sqlite3.Connection | None = None) -> None:
        from dockyard.storage.content import LocalContentStore
        from dockyard.storage.leases import Leases
        from dockyard.storage.overlay import OverlaySnapshotter

        self.root = root
        self.conn = conn or db.open_db(root)
        self.content: LocalContentStore = LocalContentStore(root)
        self.snapshots: OverlaySnapshotter = OverlaySnapshotter(root, lambda: self.conn)
        # What ingests in progress (any process) make, kept from collect_garbage.
        self.leases: Leases = Leases(root, lambda: self.conn)

    # ---------------------------------------------------------------- import

    def import_tar(
        self,
        stream: BinaryIO,
        reference: str | None = None,
        changes: Iterable[str] = (),
        message: str = "",
    ) -> Image:
        """`docker import`: a root file system tar (plain, gzip or zstd) → a one-layer image."""
        from dockyard.image.changes import apply_changes
        from dockyard.image.layers import open_layer
        from dockyard.storage.leases import CONTENT

        ref = refs.parse(reference) if reference else None
        container_config = apply_changes({}, list(changes))
        tar = open_layer(stream)
        with self.leases.create() as lease, self.content.writer() as writer:
            head = b""
            while len(head) < 512 and (chunk := tar.read(512 - len(head))):
                head += chunk
            _check_tar_header(head)
            writer.write(head)
            while chunk := tar.read(1 << 20):
                writer.write(chunk)
            size = writer.offset
            with lease.guard():  # no collection between the blob's rename and its lease
                diff_id = writer.commit()
                lease.add(CONTENT, diff_id)
            now = spec.rfc3339(time.time())
            history = [{"created": now, "created_by": "dockyard import", "comment": message or ""}]
            config = spec.new_config([diff_id], now, container_config, history)
            layer = spec.descriptor(spec.MEDIA_LAYER, diff_id, size)
            return self.add_image(config, [layer], [ref] if ref else [], lease=lease)

    def add_image(
        self,
        config: dict[str, Any],
        layers: list[dict[str, Any]],
        tags: list[refs.Reference],
        config_bytes: bytes | None = None,
        lease: Lease | None = None,
        manifest_bytes: bytes | None = None,
        repo_digests: Iterable[str] = (),
    ) -> Image:
        """Store config and manifest (layers are already blobs) and record the image.

        `config_bytes`: the config's exact bytes (from a loaded archive), kept so the
        image ID stays what it was; by default the canonical JSON of `config`.
        `lease`: the caller's, which already names the layers; else one of its own.
        `manifest_bytes`: the manifest's exact bytes (a pull: its digest is the
        registry's); by default a new OCI manifest of config and `layers`.
        `repo_digests`: `name@digest` references the image is known by (pull, push).
        """
        if lease is None:
            with self.leases.create() as own:
                return self.add_image(
                    config, layers, tags, config_bytes, own, manifest_bytes, repo_digests
                )
        from dockyard.oci.digest import from_bytes
        from dockyard.storage.leases import CONTENT

        if config_bytes is None:
            config_bytes = spec.canonical(config)
        config_digest = from_bytes(config_bytes)
        if manifest_bytes is None:
            manifest = spec.new_manifest(
                spec.descriptor(spec.MEDIA_CONFIG, config_digest, len(config_bytes)), layers
            )
            manifest_bytes = spec.canonical(manifest)
        manifest_digest = from_bytes(manifest_bytes)
        # Leased before they are looked at or written: a collection can't come between.
        lease.add(CONTENT, config_digest, manifest_digest, *(layer["digest"] for layer in layers))
        for layer in layers:
            if not self.content.has(layer["digest"]):
                raise ImageError(f"layer {layer['digest']} is not in the content store")
        self.content.put(config_bytes, config_digest)
        self.content.put(manifest_bytes, manifest_digest)
        size = sum(int(layer["size"]) for layer in layers)
        with db.transaction(self.conn) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO images (id, manifest_digest, created, size, config)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    config_digest,
                    manifest_digest,
                    config.get("created") or db.now(),
                    size,
                    config_bytes.decode(),
                ),
            )
            holders = [config_digest, manifest_digest, *(layer["digest"] for layer in layers)]
            conn.executemany(
                "INSERT OR IGNORE INTO blob_refs (digest, holder_kind, holder_id)"
                " VALUES (?, 'image', ?)",
                [(d, config_digest) for d in holders],
            )
            for ref in tags:
                conn.execute(
                    "INSERT OR REPLACE INTO tags (name, image_id) VALUES (?, ?)",
                    (str(ref), config_digest),
                )
            conn.executemany(
                "INSERT OR REPLACE INTO repo_digests (image_id, name, created) VALUES (?, ?, ?)",
                [(config_digest, name, db.now()) for name in repo_digests],
            )
        return self.get(config_digest)

    # ---------------------------------------------------------------- lookup

    def _row_to_image(self, row: sqlite3.Row) -> Image:
        image = Image(
            row["id"],
            row["manifest_digest"],
            row["created"],
            row["size"],
            json.loads(row["config"]),
        )
        image.tags = [
            r["name"]
            for r in self.conn.execute("SELECT name FROM tags WHERE image_id = ?", (image.id,))
        ]
        image.repo_digests = [
            r["name"]
            for r in self.conn.execute(
                "SELECT name FROM repo_digests WHERE image_id = ? ORDER BY created DESC",
                (image.id,),
            )
        ]
        return image

    def get(self, name: str) -> Image:
        """By reference (`busybox`, `localhost:5000/app:v1`), full or short ID."""
        row = self._find(name)
        if row is None:
            raise ImageNotFound(name)
        return self._row_to_image(row)

    def _find(self, name: str) -> sqlite3.Row | None:
        """Docker's order: a full ID, then a tag, then a unique ID prefix (so an image
        tagged `cafe` is found by that name even when another image's ID starts so)."""
        conn = self.conn
        hex_part = name.removeprefix("sha256:")
        is_hex = bool(hex_part) and all(c in "0123456789abcdef" for c in hex_part)
        if is_hex and len(hex_part) == 64:
            return conn.execute(
                "SELECT * FROM images WHERE id = ?", (f"sha256:{hex_part}",)
            ).fetchone()
        try:
            ref = refs.parse(name)
        except refs.ReferenceError:
            if not is_hex:
                raise  # a malformed name is the user's error, said as such
        else:
            row = conn.execute(
                "SELECT images.* FROM images JOIN tags ON tags.image_id = images.id"
                " WHERE tags.name = ?",
                (str(ref),),
            ).fetchone()
            if row is None and ref.digest:  # `name@sha256:…`: as pulled or pushed
                row = conn.execute(
                    "SELECT images.* FROM images JOIN repo_digests r ON r.image_id = images.id"
                    " WHERE r.name = ?",
                    (f"{ref.name}@{ref.digest}",),
                ).fetchone()
            if row is not None or not is_hex or len(hex_part) > 64:
                return row
        rows = conn.execute(
            "SELECT * FROM images WHERE id >= ? AND id < ? LIMIT 2",
            (f"sha256:{hex_part}", f"sha256:{hex_part}g"),
        ).fetchall()
        if len(rows) > 1:
            raise ImageError(f"image ID prefix {hex_part} is ambiguous: give more digits")
        return rows[0] if rows else None

    def list_images(self) -> list[Image]:
        rows = self.conn.execute("SELECT * FROM images ORDER BY created DESC").fetchall()
        return [self._row_to_image(row) for row in rows]

    # ---------------------------------------------------------------- tags

    def tag(self, source: str, target: str) -> None:
        image = self.get(source)
        ref = refs.parse(target)
        if ref.digest:
            raise ImageError(f'cannot tag with a digest reference "{target}": use NAME[:TAG]')
        with db.transaction(self.conn) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO tags (name, image_id) VALUES (?, ?)", (str(ref), image.id)
            )

    def remove(self, name: str, force: bool = False) -> list[tuple[str, str]]:
        """`docker rmi`: untag a name, and delete the image when no tag is left.

        Returns Docker's lines as (kind, value): ("Untagged", name) / ("Deleted", id).
        """
        image = self.get(name)
        done: list[tuple[str, str]] = []
        by_tag = _tag_of(name, image) is not None
        with db.transaction(self.conn) as conn:
            users = conn.execute(
                "SELECT id, name FROM containers WHERE image_id = ?", (image.id,)
            ).fetchall()
            if by_tag and len(image.tags) > 1:
                tag = str(_tag_of(name, image))
                conn.execute("DELETE FROM tags WHERE name = ?", (tag,))
                return [("Untagged", refs.parse(tag).familiar())]
            if len(image.tags) > 1 and not force:
                raise ImageError(
                    f"conflict: unable to delete {image.short_id} (must be forced) - "
                    "image is referenced in multiple repositories"
                )
            if users:
                c = users[0]
                raise ImageError(
                    f"conflict: unable to delete {image.short_id} - image is being used by "
                    f"container {c['id'][:12]} ({c['name']}): remove the container first"
                )
            for tag in image.tags:
                done.append(("Untagged", refs.parse(tag).familiar()))
            conn.execute(
                "DELETE FROM blob_refs WHERE holder_kind = 'image' AND holder_id = ?", (image.id,)
            )
            conn.execute("DELETE FROM images WHERE id = ?", (image.id,))
        done.append(("Deleted", image.id))
        self.collect_garbage()
        return done

    # ---------------------------------------------------------------- garbage

    def collect_garbage(self) -> list[str]:
        """Delete blobs no holder references, and layer snapshots no image needs;
        whatever a live lease names (an ingest in progress) is kept."""
        from dockyard.storage.content import BlobNotFound
        from dockyard.storage.leases import CONTENT, SNAPSHOT
        from dockyard.storage.snapshots import SnapshotInUse, SnapshotNotFound

        removed: list[str] = []
        with self.leases.collecting():
            # Leases before references: an ingest records its image before it lets go
            # of its lease, so whatever is in neither is garbage.
            held = self.leases.held()
            referenced = {r[0] for r in self.conn.execute("SELECT DISTINCT digest FROM blob_refs")}
            referenced |= held[CONTENT]
            for digest in list(self.content.digests()):
                if digest not in referenced:
                    try:
                        self.content.delete(digest)
                    except BlobNotFound:
                        continue
                    removed.append(digest)
            if removed:  # where they came from no longer matters (registry/ push mounts)
                with db.transaction(self.conn) as conn:
                    conn.executemany(
                        "DELETE FROM blob_sources WHERE digest = ?", [(d,) for d in removed]
                    )
            needed = set(held[SNAPSHOT])
            for image in self.list_images():
                needed.update(image.chain_ids)
            snapshots = self.snapshots
            for info in sorted(snapshots.walk(), key=lambda i: -_depth(snapshots, i.name)):
                if (
                    info.kind == "committed"
                    and info.name.startswith("sha256:")
                    and info.name not in needed
                ):
                    try:
                        snapshots.remove(info.name)
                    except (SnapshotInUse, SnapshotNotFound):  # something still stands on it
                        continue
        return removed

    # ---------------------------------------------------------------- unpack

    def unpack(self, image: Image, lease: Lease | None = None) -> str | None:
        """Commit a snapshot per layer (named by chain ID); returns the top one.

        `lease` keeps the snapshots (and the layer blobs) from a collection until
        the caller stands a container on them; without one they are kept while
        this runs."""
        if lease is None:
            with self.leases.create() as own:
                return self.unpack(image, own)
        from dockyard.image.layers import apply_layer_with_diff_id
        from dockyard.storage.leases import CONTENT, SNAPSHOT
        from dockyard.storage.snapshots import SnapshotExists, SnapshotNotFound, unmount

        if image.chain_ids:
            lease.add_all(
                [(SNAPSHOT, chain_id) for chain_id in image.chain_ids]
                + [(CONTENT, d) for d in (image.manifest_digest, *self._layer_blobs(image))]
            )
        parent: str | None = None
        for chain_id, diff_id in zip(image.chain_ids, image.diff_ids, strict=True):
            try:
                self.snapshots.stat(chain_id)
            except SnapshotNotFound:
                key = f"extract-{os.getpid()}-{time.monotonic_ns()}-{chain_id}"
                mounts = self.snapshots.prepare(key, parent)
                target = os.path.join(self.root, "tmp", key.replace(":", "-"))
                os.makedirs(target, 0o700)
                try:
                    for m in mounts:
                        m.mount(target)
                    try:
                        blob = self._layer_blob(image, diff_id)
                        with self.content.open(blob) as raw:
                            actual = apply_layer_with_diff_id(raw, target)[1]
                    finally:
                        unmount(target)
                    if actual != diff_id:  # a pulled layer is checked here, as containerd does
                        raise ImageError(
                            f"layer {blob} unpacks to {actual}, but the image's config says "
                            f"{diff_id}: the image is corrupt; remove it and pull it again"
                        )
                    try:
                        self.snapshots.commit(chain_id, key)
                    except SnapshotExists:
                        self.snapshots.remove(key)  # another process unpacked it first
                except BaseException:
                    try:
                        self.snapshots.remove(key)
                    except SnapshotNotFound:
                        pass
                    raise
                finally:
                    os.rmdir(target)
            parent = chain_id
        return parent

    def _layer_blob(self, image: Image, diff_id: str) -> str:
        return self._layer_blobs(image)[image.diff_ids.index(diff_id)]

    def _layer_blobs(self, image: Image) -> list[str]:
        manifest = json.loads(self.content.read(image.manifest_digest))
        return [str(layer["digest"]) for layer in manifest.get("layers") or []]


def _check_tar_header(chunk: bytes) -> None:
    """Refuse what is not a tar before storing it (its first header block)."""
    import tarfile

    block = chunk[:512]
    if block == bytes(512):
        return  # an empty archive
    if len(block) < 512:
        raise ImageError("the input is too short to be a tar archive: give a root file system tar")
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        raise ImageError(
            "the input is not a tar archive (nor gzip/zstd of one): give a root file system tar"
        ) from None


def _tag_of(name: str, image: Image) -> str | None:
    """The tag `name` means when it is one of `image`'s tags (not an ID), else None."""
    hex_part = name.removeprefix("sha256:")
    if len(hex_part) == 64 and all(c in "0123456789abcdef" for c in hex_part):
        return None
    try:
        tag = str(refs.parse(name))
    except refs.ReferenceError:
        return None
    return tag if tag in image.tags else None


def _depth(snapshots: OverlaySnapshotter, name: str) -> int:
    depth = 0
    info = snapshots.stat(name)
    while info.parent:
        depth += 1
        info = snapshots.stat(info.parent)
    return depth
