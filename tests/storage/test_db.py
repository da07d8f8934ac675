"""The metadata database under many processes at once, and after a crash."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from dockyard.storage import db

_fork = multiprocessing.get_context("fork")


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def test_open_creates_schema_and_pragmas(tmp_path: Path) -> None:
    conn = db.open_db(str(tmp_path / "root"))
    assert (tmp_path / "root" / "dockyard.db").exists()
    assert {"images", "tags", "containers", "volumes", "blob_refs", "snapshots"} <= _tables(conn)
    assert db.schema_version(conn) == len(db.MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    conn.close()


def test_schema_created_once(tmp_path: Path) -> None:
    conn = db.open_db(str(tmp_path))
    conn.execute(
        "INSERT INTO volumes (name, created) VALUES ('v', ?)",
        (db.now(),),
    )
    conn.close()
    again = db.open_db(str(tmp_path))
    assert db.schema_version(again) == len(db.MIGRATIONS)
    assert again.execute("SELECT name FROM volumes").fetchall()[0]["name"] == "v"
    again.close()


def test_foreign_keys_enforced(tmp_path: Path) -> None:
    conn = db.open_db(str(tmp_path))
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO tags (name, image_id) VALUES ('x:latest', 'sha256:nope')")
    conn.execute(
        "INSERT INTO images (id, created, config) VALUES ('sha256:a', ?, '{}')", (db.now(),)
    )
    conn.execute("INSERT INTO tags (name, image_id) VALUES ('x:latest', 'sha256:a')")
    conn.execute("DELETE FROM images WHERE id = 'sha256:a'")
    assert conn.execute("SELECT count(*) FROM tags").fetchone()[0] == 0
    conn.close()


def test_new_id() -> None:
    ids = {db.new_id() for _ in range(100)}
    assert len(ids) == 100
    for i in ids:
        assert len(i) == 64
        int(i, 16)


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    conn = db.open_db(str(tmp_path))
    with pytest.raises(RuntimeError), db.transaction(conn):
        conn.execute("INSERT INTO volumes (name, created) VALUES ('a', 'x')")
        raise RuntimeError("boom")
    assert conn.execute("SELECT count(*) FROM volumes").fetchone()[0] == 0
    assert not conn.in_transaction
    with db.transaction(conn):
        conn.execute("INSERT INTO volumes (name, created) VALUES ('b', 'x')")
        with pytest.raises(RuntimeError), db.transaction(conn):  # nested: a savepoint
            conn.execute("INSERT INTO volumes (name, created) VALUES ('c', 'x')")
            raise RuntimeError("inner")
    names = [r[0] for r in conn.execute("SELECT name FROM volumes")]
    assert names == ["b"]
    conn.close()


# --- many processes -----------------------------------------------------------


def _open_fresh(root: str, start: float, q: multiprocessing.Queue[str]) -> None:
    while time.time() < start:
        pass
    try:
        conn = db.open_db(root)
        q.put(f"ok {db.schema_version(conn)}")
        conn.close()
    except Exception as exc:  # report, don't hide
        q.put(f"error {exc!r}")


def test_concurrent_first_open(tmp_path: Path) -> None:
    for attempt in range(3):
        root = str(tmp_path / f"root{attempt}")
        q: multiprocessing.Queue[str] = _fork.Queue()
        start = time.time() + 0.3
        procs = [_fork.Process(target=_open_fresh, args=(root, start, q)) for _ in range(4)]
        for p in procs:
            p.start()
        results = [q.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert results == [f"ok {len(db.MIGRATIONS)}"] * 4, results


def _writer(root: str, proc: int, start: float, q: multiprocessing.Queue[str]) -> None:
    while time.time() < start:
        pass
    errors: list[str] = []
    won = False
    try:
        conn = db.open_db(root)
        for i in range(50):
            try:
                conn.execute(
                    "INSERT INTO containers (id, name, created, state, config) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (db.new_id(), f"c-{proc}-{i}", db.now(), json.dumps({"n": i}), "{}"),
                )
            except sqlite3.Error as exc:
                errors.append(repr(exc))
            if i == 25:
                # "pick a name if free": read-modify-write, race-free under BEGIN IMMEDIATE
                with db.transaction(conn):
                    row = conn.execute("SELECT 1 FROM containers WHERE name = 'shared'").fetchone()
                    if row is None:
                        conn.execute(
                            "INSERT INTO containers (id, name, created) VALUES (?, 'shared', ?)",
                            (db.new_id(), db.now()),
                        )
                        won = True
        conn.close()
    except Exception as exc:
        errors.append(repr(exc))
    q.put(json.dumps({"proc": proc, "won": won, "errors": errors}))


def test_many_writers(tmp_path: Path) -> None:
    root = str(tmp_path)
    db.open_db(root).close()  # schema exists; the fresh-open race is tested above
    q: multiprocessing.Queue[str] = _fork.Queue()
    start = time.time() + 0.5
    procs = [_fork.Process(target=_writer, args=(root, n, start, q)) for n in range(20)]
    for p in procs:
        p.start()
    results = [json.loads(q.get(timeout=120)) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    errors = [e for r in results for e in r["errors"]]
    assert errors == []
    assert sum(r["won"] for r in results) == 1
    conn = db.open_db(root)
    names = {r[0] for r in conn.execute("SELECT name FROM containers")}
    expected = {f"c-{p}-{i}" for p in range(20) for i in range(50)} | {"shared"}
    assert names == expected
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


# --- crash safety ---------------------------------------------------------------


def _crasher(root: str, w: int, mode: str) -> None:
    conn = db.open_db(root)
    for i in range(10):
        with db.transaction(conn):
            conn.execute("INSERT INTO volumes (name, created) VALUES (?, 'x')", (f"kept-{i}",))
    if mode == "open-transaction":
        conn.execute("BEGIN IMMEDIATE")
        for i in range(1000):
            conn.execute("INSERT INTO volumes (name, created) VALUES (?, 'x')", (f"lost-{i}",))
        os.write(w, b"r")
        time.sleep(60)
    else:  # commit as fast as possible until killed, reporting each commit
        i = 0
        os.write(w, b"r")
        while True:
            with db.transaction(conn):
                for j in range(20):
                    conn.execute(
                        "INSERT INTO volumes (name, created) VALUES (?, 'x')", (f"b-{i}-{j}",)
                    )
            os.write(w, b"c")
            i += 1


@pytest.mark.parametrize("mode", ["open-transaction", "busy-committing"])
def test_sigkill_mid_transaction(tmp_path: Path, mode: str) -> None:
    root = str(tmp_path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            _crasher(root, w, mode)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"r"
    if mode == "busy-committing":
        time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    reported = b""
    while chunk := os.read(r, 65536):
        reported += chunk
    os.close(r)
    conn = db.open_db(root)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    names = {row[0] for row in conn.execute("SELECT name FROM volumes")}
    assert {f"kept-{i}" for i in range(10)} <= names
    assert not any(n.startswith("lost-") for n in names)
    if mode == "busy-committing":
        commits = reported.count(b"c")
        assert commits > 0
        batches = {n.rsplit("-", 1)[0] for n in names if n.startswith("b-")}
        # every reported commit survived; at most one more (killed before reporting)
        assert len(batches) in (commits, commits + 1)
        for b in batches:  # and no batch is torn
            assert all(f"{b}-{j}" in names for j in range(20))
    # and the database is writable again
    with db.transaction(conn):
        conn.execute("INSERT INTO volumes (name, created) VALUES ('after', 'x')")
    conn.close()
