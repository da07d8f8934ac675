"""Leases: what an ingest in progress is making, kept safe from the garbage collector.

containerd's model, without a daemon. An `import`, `load`, `commit` or layer
unpack writes blobs and snapshots before any image row references them; a
concurrent `rmi`/`image prune` in another process would see them as garbage.
So the ingest first takes a lease (a row in `leases`: owner pid and its start
time, an expiry) and names in it (`lease_resources`) every digest and chain ID
it creates or relies on; the collector skips whatever a live lease names. A
lease whose owner is gone (pid dead, or reused by another process) or whose
expiry has passed counts for nothing, and is dropped by the collector and by
`system check --repair`.

Naming a resource and checking it exists must not interleave with a
collection, or a blob could be deleted between "it is there" and "it is
leased" (or between a writer's commit and the lease row). `<root>/gc.lock`
orders them: the collector holds it exclusively while it decides and deletes;
`Lease.add` and `Lease.guard()` (commit a blob, then name it) hold it shared
for a moment. Ingests never wait for each other, only for a collection.
"""

from __future__ import annotations

import fcntl
import os
import time

from dockyard.storage import db

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Iterable
    from types import TracebackType

CONTENT = "content"
SNAPSHOT = "snapshot"
DEFAULT_EXPIRY = 24 * 3600.0
"""Seconds a lease lasts (renewed by each `add`); a dead owner ends it sooner."""
LOCK_NAME = "gc.lock"


class LeaseError(Exception):
    """A lease operation failed; the message says why."""


class LeaseInfo:
    """One lease row: id, owner pid (and its start time), created, expires (Unix time)."""

    def __init__(
        self, id: str, pid: int, pid_start: int | None, created: str, expires: float
    ) -> None:
        self.id = id
        self.pid = pid
        self.pid_start = pid_start
        self.created = created
        self.expires = expires

    def __repr__(self) -> str:
        return f"LeaseInfo(id={self.id!r}, pid={self.pid}, expires={self.expires})"

    def stale_reason(self, now: float | None = None) -> str | None:
        """Why the lease no longer counts ("expired", "owner … is gone"), or None."""
        from dockyard.runtime.state import pid_start_time

        if (time.time() if now is None else now) >= self.expires:
            return "expired"
        start = pid_start_time(self.pid)
        if start is None or (self.pid_start is not None and start != self.pid_start):
            return f"owner pid {self.pid} is gone"
        return None


class _Lock:
    """flock on `<root>/gc.lock` while the `with` block runs (shared or exclusive)."""

    def __init__(self, root: str, exclusive: bool) -> None:
        self.path = os.path.join(root, LOCK_NAME)
        self.operation = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, self.operation)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        os.close(self.fd)  # closing the only fd releases the flock
        self.fd = -1


class _Guard:
    """`with lease.guard():` the shared lock, once, however deeply nested."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.lock: _Lock | None = None

    def __enter__(self) -> None:
        if self.lease._guards == 0:
            self.lock = _Lock(self.lease.manager.root, exclusive=False)
            self.lock.__enter__()
        self.lease._guards += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lease._guards -= 1
        if self.lock is not None:
            self.lock.__exit__(exc_type, exc, tb)


class Lease:
    """A lease this process holds; `with` releases it at the end."""

    def __init__(self, manager: Leases, id: str, expiry: float) -> None:
        self.manager = manager
        self.id = id
        self.expiry = expiry
        self.released = False
        self._guards = 0

    def __repr__(self) -> str:
        return f"Lease({self.id!r})"

    def guard(self) -> _Guard:
        """Hold off collections: `with lease.guard(): digest = w.commit(); lease.add(...)`."""
        return _Guard(self)

    def add(self, kind: str, *names: str) -> None:
        """Name resources this lease keeps (renewing its expiry); before relying on them."""
        self.add_all([(kind, name) for name in names])

    def add_all(self, resources: Iterable[tuple[str, str]]) -> None:
        """`add` for (kind, name) pairs of any kinds, in one transaction."""
        if self.released:
            raise LeaseError(f"lease {self.id} was released")
        with self.guard(), db.transaction(self.manager.conn()) as conn:
            updated = conn.execute(
                "UPDATE leases SET expires = ? WHERE id = ?", (time.time() + self.expiry, self.id)
            ).rowcount
            if not updated:  # dropped as stale: this process was taken for dead
                raise LeaseError(f"lease {self.id} is gone (dropped as stale)")
            conn.executemany(
                "INSERT OR IGNORE INTO lease_resources (lease_id, kind, name) VALUES (?, ?, ?)",
                [(self.id, kind, name) for kind, name in resources],
            )

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        with db.transaction(self.manager.conn()) as conn:
            conn.execute("DELETE FROM leases WHERE id = ?", (self.id,))

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Leases:
    """The leases under one state root."""

    def __init__(self, root: str, conn: Callable[[], sqlite3.Connection]) -> None:
        self.root = root
        self.conn = conn

    def create(self, expiry: float = DEFAULT_EXPIRY) -> Lease:
        from dockyard.runtime.state import pid_start_time

        lease_id = db.new_id()
        pid = os.getpid()
        with db.transaction(self.conn()) as conn:
            conn.execute(
                "INSERT INTO leases (id, pid, pid_start, created, expires) VALUES (?, ?, ?, ?, ?)",
                (lease_id, pid, pid_start_time(pid), db.now(), time.time() + expiry),
            )
        return Lease(self, lease_id, expiry)

    def list_leases(self) -> list[LeaseInfo]:
        rows = self.conn().execute("SELECT * FROM leases ORDER BY created").fetchall()
        return [
            LeaseInfo(r["id"], r["pid"], r["pid_start"], r["created"], r["expires"]) for r in rows
        ]

    def resources(self, lease_id: str) -> list[tuple[str, str]]:
        rows = self.conn().execute(
            "SELECT kind, name FROM lease_resources WHERE lease_id = ? ORDER BY kind, name",
            (lease_id,),
        )
        return [(r["kind"], r["name"]) for r in rows]

    def stale(self) -> list[tuple[LeaseInfo, str]]:
        """Leases that no longer count, with the reason."""
        now = time.time()
        found = []
        for info in self.list_leases():
            reason = info.stale_reason(now)
            if reason is not None:
                found.append((info, reason))
        return found

    def drop(self, ids: Iterable[str]) -> None:
        with db.transaction(self.conn()) as conn:
            conn.executemany("DELETE FROM leases WHERE id = ?", [(i,) for i in ids])

    def drop_stale(self) -> list[tuple[LeaseInfo, str]]:
        stale = self.stale()
        if stale:
            self.drop(info.id for info, _ in stale)
        return stale

    def held(self) -> dict[str, set[str]]:
        """kind -> names live leases keep (stale leases are dropped on the way)."""
        self.drop_stale()
        found: dict[str, set[str]] = {CONTENT: set(), SNAPSHOT: set()}
        for row in self.conn().execute("SELECT kind, name FROM lease_resources"):
            found.setdefault(row["kind"], set()).add(row["name"])
        return found

    def collecting(self) -> _Lock:
        """`with leases.collecting():` the exclusive lock a collection holds."""
        os.makedirs(self.root, exist_ok=True)
        return _Lock(self.root, exclusive=True)
