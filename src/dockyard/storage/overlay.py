"""The overlay snapshotter: snapshots as overlayfs layers under `<root>/snapshots/`.

On disk, every snapshot (any kind) is `<root>/snapshots/<id>/` holding

- `diff/` the layer's contents (committed) or the overlay upper dir (active);
- `work/` overlayfs's work dir (used only while active).

`<id>` is the row id in the `snapshots` table of `<root>/dockyard.db`; ids are
never reused (AUTOINCREMENT). Metadata and directories are kept in step so that
a crash at any point leaves only things `check()` reports and `cleanup()` fixes:

- create: in one write transaction, insert the row, build `new-<rand>/{fs,work}`
  and rename it to `<id>`, then commit. A crash before the commit leaves a
  directory without a row (an orphan); never a row without a directory.
- remove: delete the row and commit first, then rename the directory to
  `rm-<id>-<rand>` and delete it. A crash leaves an orphan, never a row whose
  directory is half gone.
- `cleanup()` takes the write lock, so it never mistakes a snapshot being created
  by another process (which holds the lock until its row is committed) for an orphan.

Mounts handed out:

- active, no parent: a read-write bind mount of `diff/`;
- active with parents: overlay, `lowerdir=` every ancestor's `diff/` (nearest
  first), `upperdir=fs/`, `workdir=work/`;
- view of one committed parent: a read-only bind mount of the parent's `diff/`;
- view of a deeper chain: overlay with only lowerdirs (read-only by nature);
- view with no parent: a read-only bind mount of its own empty `diff/`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat as stat_mod

from dockyard.storage import db
from dockyard.storage.snapshots import (
    Mount,
    SnapshotError,
    SnapshotExists,
    SnapshotInfo,
    SnapshotInUse,
    SnapshotInvalid,
    SnapshotNotFound,
)

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from dockyard.storage.snapshots import Kind

_INDEX_PARAM = "/sys/module/overlay/parameters/index"


class OverlaySnapshotter:
    """containerd's overlay snapshotter, with metadata in dockyard's SQLite DB.

    `root` is the dockyard state root; `conn_factory` opens the metadata DB
    (default: `db.open_db(root)`), called once, lazily.
    """

    def __init__(
        self, root: str, conn_factory: Callable[[], sqlite3.Connection] | None = None
    ) -> None:
        self.root = os.path.abspath(root)
        self.dir = os.path.join(self.root, "snapshots")
        self._conn_factory = conn_factory or (lambda: db.open_db(self.root))
        self._conn: sqlite3.Connection | None = None
        self._index_off: bool | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            os.makedirs(self.dir, exist_ok=True)
            self._conn = self._conn_factory()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- the verbs ------------------------------------------------------------

    def prepare(
        self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return self._create("active", key, parent, labels)

    def view(
        self, key: str, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return self._create("view", key, parent, labels)

    def mounts(self, key: str) -> list[Mount]:
        row = self._get(self.conn, key)
        if row["kind"] == "committed":
            raise SnapshotInvalid(
                f"snapshot {key!r} is committed; mount it through a view or prepare"
            )
        return self._mounts(row, self._ancestors(self.conn, row["parent_id"]))

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        conn = self.conn
        # Measure before taking the write lock: walking a big layer takes a while,
        # and the active snapshot must not change during its commit anyway.
        first = self._get(conn, key)
        size, inodes = _disk_usage(self._fs(first["id"])) if first["kind"] == "active" else (0, 0)
        with db.transaction(conn):
            row = self._get(conn, key)
            if row["kind"] != "active":
                raise SnapshotInvalid(
                    f"cannot commit snapshot {key!r}: it is {row['kind']}, not active"
                )
            if row["id"] != first["id"]:  # removed and re-created meanwhile
                size, inodes = _disk_usage(self._fs(row["id"]))
            if name != key and self._find(conn, name) is not None:
                raise SnapshotExists(
                    f"cannot commit {key!r} as {name!r}: a snapshot named {name!r} already exists"
                )
            new_labels = dict(labels) if labels is not None else json.loads(row["labels"])
            conn.execute(
                "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, updated = ?, "
                "size = ?, inodes = ? WHERE id = ?",
                (name, json.dumps(new_labels, sort_keys=True), db.now(), size, inodes, row["id"]),
            )

    def remove(self, key: str) -> None:
        conn = self.conn
        with db.transaction(conn):
            row = self._get(conn, key)
            children = [
                r[0]
                for r in conn.execute(
                    "SELECT key FROM snapshots WHERE parent_id = ? ORDER BY key LIMIT 5",
                    (row["id"],),
                )
            ]
            if children:
                raise SnapshotInUse(
                    f"cannot remove snapshot {key!r}: it is the parent of "
                    f"{', '.join(repr(c) for c in children)}; remove those first"
                )
            conn.execute("DELETE FROM snapshots WHERE id = ?", (row["id"],))
        # the row is gone for good: now the directory (a crash here leaves an orphan)
        self._delete_dir(str(row["id"]))

    def stat(self, key: str) -> SnapshotInfo:
        conn = self.conn
        return self._info(conn, self._get(conn, key))

    def update_labels(self, key: str, labels: Mapping[str, str]) -> SnapshotInfo:
        conn = self.conn
        with db.transaction(conn):
            row = self._get(conn, key)
            conn.execute(
                "UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?",
                (json.dumps(dict(labels), sort_keys=True), db.now(), row["id"]),
            )
            return self._info(conn, self._get(conn, key))

    def walk(self) -> Iterator[SnapshotInfo]:
        rows = self.conn.execute(
            "SELECT s.*, p.key AS parent_key FROM snapshots s "
            "LEFT JOIN snapshots p ON p.id = s.parent_id ORDER BY s.id"
        ).fetchall()
        for row in rows:
            yield _row_info(row, row["parent_key"])

    def usage(self, key: str) -> tuple[int, int]:
        row = self._get(self.conn, key)
        if row["kind"] == "committed" and row["size"] is not None:
            return int(row["size"]), int(row["inodes"])
        return _disk_usage(self._fs(row["id"]))

    # --- crash recovery ----------------------------------------------------------

    def check(self) -> list[str]:
        problems: list[str] = []
        conn = self.conn
        # Under the write lock, so a snapshot half-created by another process (its
        # directory renamed into place, its row not yet committed) is not reported.
        with db.transaction(conn):
            rows = conn.execute("SELECT id, key, kind FROM snapshots ORDER BY id").fetchall()
            entries = self._entries()
        ids = {str(r["id"]) for r in rows}
        for r in rows:
            d = os.path.join(self.dir, str(r["id"]))
            if not os.path.isdir(os.path.join(d, "diff")):
                problems.append(f"{r['kind']} snapshot {r['key']!r}: directory {d}/diff is missing")
        for entry in entries:
            if entry not in ids:
                problems.append(
                    f"orphan directory {os.path.join(self.dir, entry)} (no snapshot row)"
                )
        return problems

    def cleanup(self) -> list[str]:
        """Delete directories that no row names (left by a crash); returns their paths.

        Rows whose directory is missing are reported by `check()` but kept: only
        `remove(key)` deletes metadata, and it works for them.
        """
        conn = self.conn
        doomed: list[str] = []
        with db.transaction(conn):  # the write lock: no create can be half-done now
            ids = {str(r[0]) for r in conn.execute("SELECT id FROM snapshots")}
            for entry in self._entries():
                if entry in ids:
                    continue
                src = os.path.join(self.dir, entry)
                if entry.startswith("rm-"):
                    doomed.append(src)
                    continue
                dst = os.path.join(self.dir, f"rm-{entry}-{os.urandom(4).hex()}")
                os.rename(src, dst)
                doomed.append(dst)
        removed = []
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    # --- internals ------------------------------------------------------------

    def _create(
        self, kind: Kind, key: str, parent: str | None, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        if not key:
            raise SnapshotInvalid("a snapshot key must not be empty")
        conn = self.conn
        with db.transaction(conn):
            if self._find(conn, key) is not None:
                raise SnapshotExists(f"snapshot {key!r} already exists")
            parent_id: int | None = None
            if parent:
                prow = self._find(conn, parent)
                if prow is None:
                    raise SnapshotNotFound(f"parent snapshot {parent!r} does not exist")
                if prow["kind"] != "committed":
                    raise SnapshotInvalid(
                        f"parent {parent!r} is {prow['kind']}; only a committed snapshot "
                        "can be a parent"
                    )
                parent_id = int(prow["id"])
            t = db.now()
            cur = conn.execute(
                "INSERT INTO snapshots (key, kind, parent_id, labels, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, kind, parent_id, json.dumps(dict(labels or {}), sort_keys=True), t, t),
            )
            sid: int = cur.lastrowid  # type: ignore[assignment]  # set after an INSERT
            final = os.path.join(self.dir, str(sid))
            self._make_dir(final)
            try:
                row = self._get(conn, key)
                mounts = self._mounts(row, self._ancestors(conn, parent_id))
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
        return mounts

    def _make_dir(self, final: str) -> None:
        """Build `new-<rand>/{fs,work}` and rename it to `final` (inside the caller's tx)."""
        tmp = os.path.join(self.dir, f"new-{os.urandom(8).hex()}")
        os.mkdir(tmp, 0o700)
        try:
            os.mkdir(os.path.join(tmp, "diff"), 0o755)
            os.mkdir(os.path.join(tmp, "work"), 0o700)
            if os.path.lexists(final):
                # Left by a crash whose row was rolled back (the id came back to
                # us): an orphan, and we hold the write lock, so it is ours to drop.
                self._delete_dir(os.path.basename(final))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.dir)

    def _delete_dir(self, entry: str) -> None:
        src = os.path.join(self.dir, entry)
        dst = os.path.join(self.dir, f"rm-{entry}-{os.urandom(4).hex()}")
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return
        shutil.rmtree(dst, ignore_errors=True)

    def _entries(self) -> list[str]:
        try:
            return sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []

    def layer_dirs(self, key: str) -> list[str]:
        """The directories whose union is snapshot `key`, its own first (for reading a file
        of an image without mounting it)."""
        conn = self.conn
        row = self._get(conn, key)
        return [self._fs(sid) for sid in self._ancestors(conn, int(row["id"]))]

    def _fs(self, sid: int) -> str:
        return os.path.join(self.dir, str(sid), "diff")

    def _find(self, conn: sqlite3.Connection, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM snapshots WHERE key = ?", (key,)
        ).fetchone()
        return row

    def _get(self, conn: sqlite3.Connection, key: str) -> sqlite3.Row:
        row = self._find(conn, key)
        if row is None:
            raise SnapshotNotFound(f"snapshot {key!r} does not exist")
        return row

    def _ancestors(self, conn: sqlite3.Connection, parent_id: int | None) -> list[int]:
        """Ids of `parent_id` and all its ancestors, nearest first."""
        if parent_id is None:
            return []
        rows = conn.execute(
            "WITH RECURSIVE chain(id, parent_id, depth) AS ("
            "  SELECT id, parent_id, 0 FROM snapshots WHERE id = ?"
            "  UNION ALL"
            "  SELECT s.id, s.parent_id, c.depth + 1 FROM snapshots s"
            "  JOIN chain c ON s.id = c.parent_id"
            ") SELECT id FROM chain ORDER BY depth",
            (parent_id,),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def _info(self, conn: sqlite3.Connection, row: sqlite3.Row) -> SnapshotInfo:
        parent = None
        if row["parent_id"] is not None:
            p = conn.execute(
                "SELECT key FROM snapshots WHERE id = ?", (row["parent_id"],)
            ).fetchone()
            parent = p[0] if p else None
        return _row_info(row, parent)

    def _mounts(self, row: sqlite3.Row, ancestors: list[int]) -> list[Mount]:
        sid = int(row["id"])
        if not ancestors:
            ro = "ro" if row["kind"] == "view" else "rw"
            return [Mount("bind", self._fs(sid), ["bind", ro])]
        if row["kind"] == "view" and len(ancestors) == 1:
            return [Mount("bind", self._fs(ancestors[0]), ["bind", "ro"])]
        options: list[str] = ["ro"] if row["kind"] == "view" else []
        if self._overlay_index_off():
            options.append("index=off")
        if row["kind"] == "active":
            options += [
                f"workdir={os.path.join(self.dir, str(sid), 'work')}",
                f"upperdir={self._fs(sid)}",
            ]
        options.append("lowerdir=" + ":".join(self._fs(a) for a in ancestors))
        return [Mount("overlay", "overlay", options)]

    def _overlay_index_off(self) -> bool:
        # Like containerd: with index=on (a kernel default on some distros) a lower
        # dir shared by several overlays can make a mount fail with EBUSY.
        if self._index_off is None:
            self._index_off = os.path.exists(_INDEX_PARAM)
        return self._index_off


def _row_info(row: sqlite3.Row, parent: str | None) -> SnapshotInfo:
    return SnapshotInfo(
        kind=row["kind"],
        name=row["key"],
        parent=parent,
        labels=json.loads(row["labels"]),
        created=row["created"],
        updated=row["updated"],
    )


def _disk_usage(path: str) -> tuple[int, int]:
    """(bytes, inodes) under `path`: apparent sizes, each inode counted once.

    Apparent size (st_size, like Docker's SizeRw) rather than allocated blocks
    keeps numbers the same across filesystems.
    """
    if not os.path.isdir(path):
        raise SnapshotError(f"snapshot directory {path} is missing (run check/cleanup)")
    seen: set[tuple[int, int]] = set()
    size = 0
    stack = [path]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                ino = (st.st_dev, st.st_ino)
                if ino in seen:
                    continue
                seen.add(ino)
                if stat_mod.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                else:
                    size += st.st_size
    return size, len(seen)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
