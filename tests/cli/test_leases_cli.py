"""Leases through the CLI: an import holds one; a killed import's lease is repaired."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import tarfile
import time

from tests.cli.dockyard_helper import DOCKYARD, Dockyard


def _leases(dy: Dockyard) -> list[tuple[str, int]]:
    conn = sqlite3.connect(dy.root / "dockyard.db", timeout=10)
    try:
        return [(row[0], row[1]) for row in conn.execute("SELECT id, pid FROM leases")]
    finally:
        conn.close()


def test_killed_import_leaves_a_stale_lease_that_repair_drops(dy: Dockyard) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = 64 << 20
        tar.addfile(info)  # the header only: the body follows slowly below
    proc = subprocess.Popen(
        [DOCKYARD, "--root", str(dy.root), "import", "-", "big"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(buf.getvalue()[:512] + os.urandom(1 << 20))
        proc.stdin.flush()
        held: list[tuple[str, int]] = []
        for _ in range(100):  # mid-import: its lease is there
            held = _leases(dy)
            if held:
                break
            time.sleep(0.05)
        assert [pid for _, pid in held] == [proc.pid]
        assert "leases:" not in dy("system", "check", check=False).stdout  # alive: not stale
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stdin is not None
        proc.stdin.close()
    out = dy("system", "check", check=False)
    assert out.returncode == 1
    assert f"leases: {held[0][0][:12]} (pid {proc.pid}): owner pid {proc.pid} is gone" in (
        out.stdout
    )
    out = dy("system", "check", "--repair", check=False)
    assert (
        f"leases: {held[0][0][:12]} (pid {proc.pid}): owner pid {proc.pid} is gone (repaired)"
        in (out.stdout)
    )
    assert _leases(dy) == []
    assert "leases:" not in dy("system", "check", check=False).stdout


def test_finished_import_and_load_leave_no_lease(dy: Dockyard) -> None:
    saved = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), "save", "busybox"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    dy("rmi", "busybox")
    out = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), "load"],
        input=saved,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert b"Loaded image: busybox:latest" in out.stdout
    dy("create", "--name", "c", "busybox", "true")
    assert _leases(dy) == []
    dy("rm", "c")
