"""The registry's metadata: repositories, manifests, tags, blob links; one SQLite file.

`<storage>/registry.db`, opened with `storage.db`'s rules (WAL, busy timeout, every
change in a BEGIN IMMEDIATE transaction), so many server processes and a `gc`
may share one storage directory. Blob and manifest bytes live in the content
store; rows here are written only after the bytes they name are stored.

- `manifests`: one row per manifest pushed to a repository, with its media type,
  size, subject and artifact type (for the referrers API).
- `manifest_refs`: what a manifest needs: its config and layers (`blob`) or, for an
  index, its child manifests (`manifest`). Garbage collection keeps these blobs.
- `tags`: repository + tag -> manifest digest.
- `repo_blobs`: the blobs a repository may serve: uploaded, mounted into it, or
  a manifest pushed to it.
"""

from __future__ import annotations

from dockyard.storage import db

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable

DB_NAME = "registry.db"

MIGRATIONS: list[str] = [
    """
    CREATE TABLE manifests (
        repo          TEXT NOT NULL,
        digest        TEXT NOT NULL,
        media_type    TEXT NOT NULL,
        size          INTEGER NOT NULL,
        artifact_type TEXT,
        subject       TEXT,
        annotations   TEXT,                        -- JSON object or NULL
        created       TEXT NOT NULL,
        PRIMARY KEY (repo, digest)
    ) WITHOUT ROWID;
    CREATE INDEX manifests_subject ON manifests(repo, subject) WHERE subject IS NOT NULL;
    CREATE INDEX manifests_digest ON manifests(digest);
    CREATE TABLE manifest_refs (
        repo   TEXT NOT NULL,
        digest TEXT NOT NULL,                      -- the manifest
        ref    TEXT NOT NULL,                      -- what it needs
        kind   TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
        PRIMARY KEY (repo, digest, ref)
    ) WITHOUT ROWID;
    CREATE INDEX manifest_refs_ref ON manifest_refs(ref);
    CREATE TABLE tags (
        repo    TEXT NOT NULL,
        tag     TEXT NOT NULL,
        digest  TEXT NOT NULL,
        updated TEXT NOT NULL,
        PRIMARY KEY (repo, tag)
    ) WITHOUT ROWID;
    CREATE INDEX tags_digest ON tags(repo, digest);
    CREATE TABLE repo_blobs (
        repo   TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (repo, digest)
    ) WITHOUT ROWID;
    CREATE INDEX repo_blobs_digest ON repo_blobs(digest);
    """,
]


class ManifestRow:
    """A manifest as the database holds it."""

    __slots__ = ("annotations", "artifact_type", "digest", "media_type", "size", "subject")

    def __init__(
        self,
        digest: str,
        media_type: str,
        size: int,
        artifact_type: str | None = None,
        subject: str | None = None,
        annotations: str | None = None,
    ) -> None:
        self.digest = digest
        self.media_type = media_type
        self.size = size
        self.artifact_type = artifact_type
        self.subject = subject
        self.annotations = annotations

    def __repr__(self) -> str:
        return f"ManifestRow({self.digest!r}, {self.media_type!r}, {self.size})"


class Metadata:
    """Queries and changes over one connection (one per process or thread)."""

    def __init__(self, root: str) -> None:
        self.conn: sqlite3.Connection = db.open_db(root, DB_NAME, MIGRATIONS)

    def close(self) -> None:
        self.conn.close()

    # reading ---------------------------------------------------------------------------

    def repo_exists(self, repo: str) -> bool:
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM manifests WHERE repo = ?)"
            " OR EXISTS (SELECT 1 FROM repo_blobs WHERE repo = ?)",
            (repo, repo),
        ).fetchone()
        return bool(row[0])

    def manifest(self, repo: str, digest: str) -> ManifestRow | None:
        row = self.conn.execute(
            "SELECT digest, media_type, size, artifact_type, subject, annotations"
            " FROM manifests WHERE repo = ? AND digest = ?",
            (repo, digest),
        ).fetchone()
        return ManifestRow(*row) if row else None

    def tag(self, repo: str, tag: str) -> str | None:
        row = self.conn.execute(
            "SELECT digest FROM tags WHERE repo = ? AND tag = ?", (repo, tag)
        ).fetchone()
        return str(row[0]) if row else None

    def has_manifests(self, repo: str, digests: Iterable[str]) -> list[str]:
        """Those of `digests` that are not manifests of `repo`."""
        return [d for d in digests if self.manifest(repo, d) is None]

    def has_link(self, repo: str, digest: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, digest)
        ).fetchone()
        return row is not None

    def references(self, repo: str, digest: str) -> bool:
        """True when a manifest of `repo` needs blob `digest` (its config or a layer)."""
        row = self.conn.execute(
            "SELECT 1 FROM manifest_refs WHERE ref = ? AND repo = ? AND kind = 'blob' LIMIT 1",
            (digest, repo),
        ).fetchone()
        return row is not None

    def tags(self, repo: str, last: str = "", limit: int = -1) -> list[str]:
        rows = self.conn.execute(
            "SELECT tag FROM tags WHERE repo = ? AND tag > ? ORDER BY tag LIMIT ?",
            (repo, last, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def repositories(self, last: str = "", limit: int = -1) -> list[str]:
        rows = self.conn.execute(
            "SELECT DISTINCT repo FROM manifests WHERE repo > ? ORDER BY repo LIMIT ?",
            (last, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def referrers(self, repo: str, subject: str) -> list[ManifestRow]:
        rows = self.conn.execute(
            "SELECT digest, media_type, size, artifact_type, subject, annotations"
            " FROM manifests WHERE repo = ? AND subject = ? ORDER BY digest",
            (repo, subject),
        ).fetchall()
        return [ManifestRow(*r) for r in rows]

    def referenced_blobs(self) -> set[str]:
        """Every blob a manifest needs, and every manifest's own blob: what gc keeps."""
        rows = self.conn.execute(
            "SELECT digest FROM manifests UNION SELECT ref FROM manifest_refs WHERE kind = 'blob'"
        ).fetchall()
        return {r[0] for r in rows}

    # changing --------------------------------------------------------------------------

    def link(self, repo: str, digest: str) -> None:
        """Let `repo` serve blob `digest` (idempotent)."""
        if self.has_link(repo, digest):
            return
        with db.transaction(self.conn) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO repo_blobs (repo, digest) VALUES (?, ?)", (repo, digest)
            )

    def unlink(self, repo: str, digest: str) -> bool:
        with db.transaction(self.conn) as conn:
            cur = conn.execute(
                "DELETE FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, digest)
            )
        return cur.rowcount > 0

    def put_manifest(
        self,
        repo: str,
        row: ManifestRow,
        refs: list[tuple[str, str]],
        tags: list[str],
    ) -> None:
        """Record manifest `row` of `repo`, what it needs (`refs`: (digest, kind)), its tags."""
        now = db.now()
        with db.transaction(self.conn) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO manifests (repo, digest, media_type, size,"
                " artifact_type, subject, annotations, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    repo,
                    row.digest,
                    row.media_type,
                    row.size,
                    row.artifact_type,
                    row.subject,
                    row.annotations,
                    now,
                ),
            )
            conn.execute(
                "DELETE FROM manifest_refs WHERE repo = ? AND digest = ?", (repo, row.digest)
            )
            conn.executemany(
                "INSERT OR IGNORE INTO manifest_refs (repo, digest, ref, kind) VALUES (?, ?, ?, ?)",
                [(repo, row.digest, ref, kind) for ref, kind in refs],
            )
            conn.execute(
                "INSERT OR IGNORE INTO repo_blobs (repo, digest) VALUES (?, ?)", (repo, row.digest)
            )
            conn.executemany(
                "INSERT OR REPLACE INTO tags (repo, tag, digest, updated) VALUES (?, ?, ?, ?)",
                [(repo, tag, row.digest, now) for tag in tags],
            )

    def set_tag(self, repo: str, tag: str, digest: str) -> None:
        """Point `tag` of `repo` at manifest `digest` (which `repo` has)."""
        with db.transaction(self.conn) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO tags (repo, tag, digest, updated) VALUES (?, ?, ?, ?)",
                (repo, tag, digest, db.now()),
            )

    def delete_tag(self, repo: str, tag: str) -> bool:
        with db.transaction(self.conn) as conn:
            cur = conn.execute("DELETE FROM tags WHERE repo = ? AND tag = ?", (repo, tag))
        return cur.rowcount > 0

    def delete_manifest(self, repo: str, digest: str) -> bool:
        """Forget manifest `digest` of `repo` and every tag that names it."""
        with db.transaction(self.conn) as conn:
            cur = conn.execute(
                "DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, digest)
            )
            if cur.rowcount == 0:
                return False
            conn.execute("DELETE FROM manifest_refs WHERE repo = ? AND digest = ?", (repo, digest))
            conn.execute("DELETE FROM tags WHERE repo = ? AND digest = ?", (repo, digest))
        return True

    def forget_blobs(self, digests: list[str]) -> None:
        """Drop every link to blobs that were removed from the store."""
        with db.transaction(self.conn) as conn:
            conn.executemany("DELETE FROM repo_blobs WHERE digest = ?", [(d,) for d in digests])
