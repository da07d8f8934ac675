"""The metadata database: one SQLite file, `<root>/dockyard.db`, shared by every process.

Many dockyard processes run at once and there is no daemon, so the database is
the meeting point. The rules that keep it safe:

- WAL mode: readers never block the writer and the writer never blocks readers.
- `busy_timeout` of 10 s: a process waiting for the write lock sleeps and retries
  inside SQLite instead of failing with "database is locked".
- Every read-modify-write runs in `transaction(conn)`, which starts with
  `BEGIN IMMEDIATE`: the write lock is taken up front, so two processes can never
  both read "name is free" and both insert it, and a deferred transaction can
  never fail half-way when it upgrades to a writer (SQLITE_BUSY_SNAPSHOT).
- `synchronous=NORMAL`: with WAL a crash (even SIGKILL, even a power cut) never
  corrupts the database; a power cut may lose the last committed transactions,
  a killed process loses nothing it committed.
- The schema is a list of migration scripts; `PRAGMA user_version` says how
  many have been applied. Each step runs in its own `BEGIN IMMEDIATE`
  transaction and re-reads the version under the lock, so many processes opening
  a fresh root at once apply each step exactly once.

Connections are opened with `isolation_level=None` (the sqlite3 module never
opens transactions behind our back) and `sqlite3.Row` rows (index by position
or by column name). JSON columns hold text produced by `json.dumps`.
Timestamps (`created`) are RFC 3339 UTC strings, as the Docker API shows them.
"""

from __future__ import annotations

import os
import sqlite3
import time

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType
    from typing import TypeVar

    T = TypeVar("T")

DB_NAME = "dockyard.db"
BUSY_TIMEOUT_MS = 10_000
# How long `transaction` keeps retrying BEGIN IMMEDIATE (on top of SQLite's own
# busy handler) before it gives up: long, because giving up loses work.
TRANSACTION_RETRY_SECONDS = 60.0

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

# Each entry is one step of the schema, applied in order and never edited once
# released: change the schema by appending a step.
MIGRATIONS: list[str] = [
    # 1: images, tags, containers, volumes, blob references, snapshots
    """
    CREATE TABLE images (
        id              TEXT PRIMARY KEY,          -- config digest, "sha256:<hex>"
        manifest_digest TEXT,
        created         TEXT NOT NULL,
        size            INTEGER NOT NULL DEFAULT 0,
        config          TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE tags (
        name     TEXT PRIMARY KEY,                 -- "docker.io/library/busybox:latest"
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE INDEX tags_image ON tags(image_id);
    CREATE TABLE containers (
        id       TEXT PRIMARY KEY,                 -- 64 hex digits
        name     TEXT NOT NULL UNIQUE,
        image_id TEXT REFERENCES images(id),
        created  TEXT NOT NULL,
        state    TEXT NOT NULL DEFAULT '{}',
        config   TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX containers_image ON containers(image_id);
    CREATE TABLE volumes (
        name    TEXT PRIMARY KEY,
        created TEXT NOT NULL,
        driver  TEXT NOT NULL DEFAULT 'local',
        labels  TEXT NOT NULL DEFAULT '{}',
        options TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE blob_refs (
        digest      TEXT NOT NULL,
        holder_kind TEXT NOT NULL,                 -- "image", "build-cache", "upload", ...
        holder_id   TEXT NOT NULL,
        PRIMARY KEY (digest, holder_kind, holder_id)
    ) WITHOUT ROWID;
    CREATE INDEX blob_refs_holder ON blob_refs(holder_kind, holder_id);
    -- AUTOINCREMENT: a deleted snapshot's id (its directory name) is never reused,
    -- so a directory left behind by a crash can't be mistaken for a new snapshot.
    CREATE TABLE snapshots (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        key       TEXT NOT NULL UNIQUE,            -- active/view key, or committed name
        kind      TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
        parent_id INTEGER REFERENCES snapshots(id),
        labels    TEXT NOT NULL DEFAULT '{}',
        created   TEXT NOT NULL,
        updated   TEXT NOT NULL,
        size      INTEGER,                         -- bytes, recorded at commit
        inodes    INTEGER
    );
    CREATE INDEX snapshots_parent ON snapshots(parent_id);
    """,
    # 2: which containers use which volumes (`volume rm` refuses one in use)
    """
    CREATE TABLE container_volumes (
        container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
        volume       TEXT NOT NULL REFERENCES volumes(name),
        destination  TEXT NOT NULL,
        PRIMARY KEY (container_id, destination)
    );
    CREATE INDEX container_volumes_volume ON container_volumes(volume);
    """,
    # 3: leases: blobs and snapshots an ingest in progress makes, kept from gc (leases.py)
    """
    CREATE TABLE leases (
        id        TEXT PRIMARY KEY,
        pid       INTEGER NOT NULL,                -- the owner; dead owner, dead lease
        pid_start INTEGER,                         -- its start time: pids are reused
        created   TEXT NOT NULL,
        expires   REAL NOT NULL                    -- Unix time
    );
    CREATE TABLE lease_resources (
        lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
        kind     TEXT NOT NULL CHECK (kind IN ('content', 'snapshot')),
        name     TEXT NOT NULL,                    -- a digest, or a snapshot's name
        PRIMARY KEY (lease_id, kind, name)
    ) WITHOUT ROWID;
    CREATE INDEX lease_resources_name ON lease_resources(kind, name);
    """,
    # 4: networks (network/store.py): bridges, the addresses handed out while
    # containers run (endpoints), and the host ports published to them
    """
    CREATE TABLE networks (
        id       TEXT PRIMARY KEY,                 -- 64 hex digits
        name     TEXT NOT NULL UNIQUE,
        driver   TEXT NOT NULL DEFAULT 'bridge',
        bridge   TEXT NOT NULL UNIQUE,             -- the Linux bridge's name
        subnet   TEXT NOT NULL,                    -- "10.88.0.0/16"
        gateway  TEXT NOT NULL,                    -- "10.88.0.1" (the bridge's address)
        ip_range TEXT,                             -- addresses handed out come from here
        internal INTEGER NOT NULL DEFAULT 0,
        options  TEXT NOT NULL DEFAULT '{}',
        labels   TEXT NOT NULL DEFAULT '{}',
        created  TEXT NOT NULL
    );
    CREATE TABLE endpoints (
        network_id   TEXT NOT NULL REFERENCES networks(id),
        container_id TEXT NOT NULL,
        ip           TEXT NOT NULL,
        mac          TEXT NOT NULL,
        aliases      TEXT NOT NULL DEFAULT '[]',   -- names it answers to on this network
        host_ifname  TEXT NOT NULL,                -- the host end of its veth pair
        created      TEXT NOT NULL,
        PRIMARY KEY (network_id, container_id),
        UNIQUE (network_id, ip)                    -- no address is ever handed out twice
    ) WITHOUT ROWID;
    CREATE INDEX endpoints_container ON endpoints(container_id);
    CREATE TABLE port_mappings (
        container_id   TEXT NOT NULL,
        proto          TEXT NOT NULL CHECK (proto IN ('tcp', 'udp', 'sctp')),
        host_ip        TEXT NOT NULL,              -- "" for every address
        host_port      INTEGER NOT NULL,
        container_port INTEGER NOT NULL,
        container_ip   TEXT NOT NULL,
        bridge         TEXT NOT NULL,
        PRIMARY KEY (proto, host_ip, host_port)
    ) WITHOUT ROWID;
    CREATE INDEX port_mappings_container ON port_mappings(container_id);
    """,
    # 5: the registry client (image/pull.py, image/push.py): the digests an image was
    # pulled or pushed by (RepoDigests), and where blobs were seen, so a push can mount
    # a blob from another repository of the same registry instead of uploading it
    """
    CREATE TABLE repo_digests (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        name     TEXT NOT NULL,                    -- "docker.io/library/nginx@sha256:<hex>"
        created  TEXT NOT NULL,
        PRIMARY KEY (image_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX repo_digests_name ON repo_digests(name);
    CREATE TABLE blob_sources (
        digest     TEXT NOT NULL,
        registry   TEXT NOT NULL,                  -- the host talked to: "127.0.0.1:5000"
        repository TEXT NOT NULL,                  -- "library/nginx"
        updated    TEXT NOT NULL,
        PRIMARY KEY (digest, registry, repository)
    ) WITHOUT ROWID;
    """,
    # 6: the classic builder's cache (build/cache.py): a step's key (parent image,
    # expanded instruction, source digests) → the image it made. The images stay as
    # untagged intermediates until `builder prune` drops the entries.
    """
    CREATE TABLE build_cache (
        key      TEXT PRIMARY KEY,                 -- "sha256:<hex>" of the step
        parent   TEXT NOT NULL,                    -- the image the step ran on
        image_id TEXT NOT NULL,
        created  TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX build_cache_image ON build_cache(image_id);
    """,
]


class DatabaseError(Exception):
    """The metadata database could not be opened or used; the message says why."""


def new_id() -> str:
    """A fresh random id: 64 lowercase hex digits, like Docker's container ids."""
    return os.urandom(32).hex()


def now() -> str:
    """The current time as an RFC 3339 UTC string with nanosecond-style precision."""
    seconds, ns = divmod(time.time_ns(), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}000Z"


def is_busy(exc: BaseException) -> bool:
    """True when `exc` is SQLite saying another connection holds a lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED)
    msg = str(exc)
    return "locked" in msg or "busy" in msg


def retry_busy(fn: Callable[[], T], seconds: float = TRANSACTION_RETRY_SECONDS) -> T:
    """Call `fn` again while it fails with SQLITE_BUSY, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay + int.from_bytes(os.urandom(2), "big") % 1000 / 1_000_000)
        delay = min(delay * 2, 0.05)


def open_db(
    root: str, name: str = DB_NAME, migrations: list[str] | None = None
) -> sqlite3.Connection:
    """Open (creating and migrating if needed) `<root>/dockyard.db`.

    Another database with the same rules (the registry's) passes its own file
    `name` and `migrations` list.
    """
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, name)
    try:
        conn = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open {path}: {exc}") from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Switching a fresh file to WAL needs an exclusive lock for a moment; a
        # concurrent first open can see SQLITE_BUSY here without the busy handler.
        mode = retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            raise DatabaseError(f"{path}: cannot switch to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, MIGRATIONS if migrations is None else migrations)
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _statements(script: str) -> Iterator[str]:
    """Split a script into complete statements (executescript would COMMIT first)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        raise DatabaseError(f"incomplete SQL statement in migration: {buf.strip()[:80]}")


def _migrate(conn: sqlite3.Connection, migrations: list[str]) -> None:
    target = len(migrations)
    if schema_version(conn) == target:  # the common case: no lock needed
        return
    while True:
        with transaction(conn):
            version = schema_version(conn)
            if version > target:
                raise DatabaseError(
                    f"database schema version {version} is newer than this dockyard "
                    f"understands ({target}); upgrade dockyard"
                )
            if version == target:
                return
            for stmt in _statements(migrations[version]):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {version + 1}")


def transaction(
    conn: sqlite3.Connection, retry_seconds: float = TRANSACTION_RETRY_SECONDS
) -> _Transaction:
    """`with transaction(conn):` — a write transaction taken with BEGIN IMMEDIATE.

    The write lock is held from the first statement, so read-modify-write inside
    is race-free across processes. Commits on success, rolls back on any
    exception. Waiting for the lock is bounded: SQLite's busy handler waits up to
    `busy_timeout`, and BEGIN is retried until `retry_seconds` have passed.
    Nested use becomes a SAVEPOINT inside the outer transaction.
    """
    return _Transaction(conn, retry_seconds)


class _Transaction:
    """The context manager `transaction` returns (a class: contextlib costs import time)."""

    def __init__(self, conn: sqlite3.Connection, retry_seconds: float) -> None:
        self.conn = conn
        self.retry_seconds = retry_seconds
        self.savepoint = ""

    def __enter__(self) -> sqlite3.Connection:
        conn = self.conn
        if conn.in_transaction:
            self.savepoint = f"sp_{os.urandom(4).hex()}"
            conn.execute(f"SAVEPOINT {self.savepoint}")
        else:
            retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"), self.retry_seconds)
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self.conn
        if self.savepoint:
            if exc_type is not None:
                conn.execute(f"ROLLBACK TO {self.savepoint}")
            conn.execute(f"RELEASE {self.savepoint}")
            return
        if exc_type is not None:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return
        try:
            retry_busy(lambda: conn.execute("COMMIT"), self.retry_seconds)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
