"""`dockyard system check [--repair]` after damage and after killed processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.cli.dockyard_helper import DOCKYARD, Dockyard

OLD = time.time() - 7200  # older than every grace period of the check


def test_clean_store_is_ok(dy: Dockyard) -> None:
    out = dy("system", "check")
    assert "ok: blobs, images, snapshots and containers are consistent" in out.stdout


def test_corrupt_blob_is_reported(dy: Dockyard) -> None:
    blob = next((dy.root / "blobs" / "sha256").iterdir())
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    out = dy("system", "check", check=False)
    assert out.returncode == 1
    assert f"sha256:{blob.name} does not match its digest (corrupt)" in out.stdout


def test_repair_removes_crash_leftovers(dy: Dockyard) -> None:
    ingest = dy.root / "blobs" / ".ingest"
    ingest.mkdir(exist_ok=True)
    stale = ingest / "sha256-deadbeef.partial"
    stale.write_bytes(b"half a blob")
    os.utime(stale, (OLD, OLD))
    orphan = dy.root / "containers" / ("f" * 64)
    orphan.mkdir(parents=True)
    os.utime(orphan, (OLD, OLD))
    out = dy("system", "check", check=False)
    assert out.returncode == 1
    assert "unfinished write" in out.stdout and "orphan directory" in out.stdout
    out = dy("system", "check", "--repair")
    assert "(repaired)" in out.stdout
    assert not stale.exists() and not orphan.exists()
    assert "ok:" in dy("system", "check").stdout


def test_killed_import_leaves_a_repairable_store(dy: Dockyard) -> None:
    import io
    import tarfile

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
    assert proc.stdin is not None
    proc.stdin.write(buf.getvalue()[:512] + os.urandom(4 << 20))
    proc.stdin.flush()
    time.sleep(0.5)  # mid-import: header and part of the body are in
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdin.close()
    for path in (dy.root / "blobs" / ".ingest").glob("*"):
        os.utime(path, (OLD, OLD))
    dy("system", "check", "--repair", check=False)
    assert "ok:" in dy("system", "check").stdout
    assert "big" not in dy("images").stdout


def test_import_refuses_what_is_not_a_tar(dy: Dockyard, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    out = dy("import", str(junk), "junk", check=False)
    assert out.returncode == 1 and "not a tar archive" in out.stderr
    assert "junk" not in dy("images").stdout
    assert "ok:" in dy("system", "check").stdout


def test_killed_monitor_keeps_the_container_and_ps_tells_the_truth(dy: Dockyard) -> None:
    cid = dy("run", "-d", "busybox", "sleep", "60").stdout.strip()
    monitor = int((dy.root / "containers" / cid / "monitor.pid").read_text())
    os.kill(monitor, signal.SIGKILL)
    time.sleep(0.2)
    assert "Up " in dy("ps").stdout  # the container runs on without its monitor
    assert "ok:" in dy("system", "check").stdout
    dy("rm", "-f", cid)
    assert dy("ps", "-aq").stdout == ""
    assert "ok:" in dy("system", "check").stdout


def test_a_container_that_exits_by_itself_releases_its_rootfs(dy: Dockyard) -> None:
    cid = dy("run", "-d", "busybox", "true").stdout.strip()
    assert dy("wait", cid).stdout.strip() == "0"
    deadline = time.monotonic() + 5
    rootfs = str(dy.root / "containers" / cid / "rootfs")
    while os.path.ismount(rootfs) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.ismount(rootfs)
    assert "ok:" in dy("system", "check").stdout
    dy("start", cid)  # and it can start again: the mount comes back
    assert dy("wait", cid).stdout.strip() == "0"
    dy("rm", cid)
