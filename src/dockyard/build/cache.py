"""The classic builder's step cache, kept in the metadata DB (table ``build_cache``).

A step's key is the sha256 of its parent image ID, its instruction after
expansion (with the build args in scope for RUN) and, for COPY/ADD, the content
digest of every source. Hits are only taken when the image still exists.
"""

from __future__ import annotations

import hashlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dockyard.image.store import ImageStore


def step_key(parent: str, text: str, *extra: str) -> str:
    h = hashlib.sha256()
    for part in (parent, text, *extra):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return "sha256:" + h.hexdigest()


def lookup(images: ImageStore, key: str) -> str | None:
    row = images.conn.execute("SELECT image_id FROM build_cache WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    found = images.conn.execute("SELECT 1 FROM images WHERE id = ?", (row[0],)).fetchone()
    return str(row[0]) if found else None


def store(images: ImageStore, key: str, parent: str, image_id: str) -> None:
    from dockyard.storage import db

    with db.transaction(images.conn) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO build_cache (key, parent, image_id, created)"
            " VALUES (?, ?, ?, ?)",
            (key, parent, image_id, db.now()),
        )


def hide(images: ImageStore, image_ids: set[str]) -> None:
    """List `image_ids` as intermediate images (an entry naming each as a parent,
    of no image), so a failed build leaves no <none> image in `images`."""
    from dockyard.storage import db

    with db.transaction(images.conn) as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO build_cache (key, parent, image_id, created)"
            " VALUES (?, ?, '', ?)",
            [(step_key("unfinished", i), i, db.now()) for i in sorted(image_ids)],
        )


def intermediate_ids(images: ImageStore) -> set[str]:
    """Images the cache knows as some step's parent: hidden from `images` without -a."""
    return {r[0] for r in images.conn.execute("SELECT DISTINCT parent FROM build_cache")}


def prune(images: ImageStore) -> tuple[int, list[str]]:
    """Drop every cache entry; delete the untagged images only the cache kept.

    Returns (entries removed, image IDs deleted)."""
    from dockyard.storage import db

    conn = images.conn
    with db.transaction(conn):
        ids = {r[0] for r in conn.execute("SELECT image_id FROM build_cache")}
        count = conn.execute("DELETE FROM build_cache").rowcount
        deleted = []
        for image_id in sorted(ids):
            tagged = conn.execute("SELECT 1 FROM tags WHERE image_id = ?", (image_id,)).fetchone()
            used = conn.execute(
                "SELECT 1 FROM containers WHERE image_id = ?", (image_id,)
            ).fetchone()
            if tagged or used or not image_id:
                continue
            conn.execute(
                "DELETE FROM blob_refs WHERE holder_kind = 'image' AND holder_id = ?", (image_id,)
            )
            if conn.execute("DELETE FROM images WHERE id = ?", (image_id,)).rowcount:
                deleted.append(image_id)
    images.collect_garbage()
    return count, deleted
