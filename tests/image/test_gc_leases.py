"""Leases: garbage collection keeps what an ingest in progress (any process) makes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from dockyard.image import archive
from dockyard.image.store import Image, ImageStore
from dockyard.storage.leases import CONTENT, SNAPSHOT, LeaseError
from dockyard.storage.snapshots import SnapshotNotFound

ROOT = Path(__file__).resolve().parents[2]


def rootfs_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path / "root"))


def _second(store: ImageStore) -> ImageStore:
    """Another process's view of the same root: its own connection."""
    return ImageStore(store.root)


def test_gc_keeps_a_leased_blob_until_the_lease_is_released(store: ImageStore) -> None:
    lease = store.leases.create()
    digest = store.content.put(b"written, not yet referenced")
    lease.add(CONTENT, digest)
    assert _second(store).collect_garbage() == []
    assert store.content.has(digest)
    lease.release()
    assert store.leases.list_leases() == []
    assert _second(store).collect_garbage() == [digest]
    assert not store.content.has(digest)


def test_gc_keeps_a_leased_layer_snapshot(store: ImageStore) -> None:
    image = store.import_tar(io.BytesIO(rootfs_tar({"a": b"1"})), "one")
    with store.leases.create() as lease:
        top = store.unpack(image, lease)
        assert top == image.chain_ids[-1]
        layer = store._layer_blobs(image)[0]
        assert store.leases.resources(lease.id) == sorted(
            [(CONTENT, image.manifest_digest), (CONTENT, layer), (SNAPSHOT, top)]
        )
        store.remove("one")  # rmi collects: the layer and its snapshot are leased
        assert store.snapshots.stat(top).kind == "committed"
        assert store.content.has(layer) and store.content.has(image.manifest_digest)
        assert not store.content.has(image.id)  # the config blob was not leased
    assert sorted(store.collect_garbage()) == sorted([layer, image.manifest_digest])
    with pytest.raises(SnapshotNotFound):
        store.snapshots.stat(top)
    assert list(store.content.digests()) == []


def test_import_survives_a_collection_before_its_image_is_recorded(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the layer blob is written, another process collects, then the image
    row is written. The lease keeps the blob."""
    collected: list[list[str]] = []
    real = ImageStore.add_image

    def add_image_after_gc(self: ImageStore, *args: object, **kwargs: object) -> Image:
        collected.append(_second(self).collect_garbage())
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageStore, "add_image", add_image_after_gc)
    image = store.import_tar(io.BytesIO(rootfs_tar({"f": b"data"})), "raced")
    assert collected == [[]]
    assert store.get("raced").id == image.id
    for digest in (image.id, image.manifest_digest, *store._layer_blobs(image)):
        assert store.content.has(digest)
    assert store.leases.list_leases() == []  # released when the import was done


def test_load_survives_a_collection_before_its_image_is_recorded(
    store: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = ImageStore(str(tmp_path / "source"))
    source.import_tar(io.BytesIO(rootfs_tar({"f": b"loaded"})), "loaded:v1")
    saved = io.BytesIO()
    archive.save(source, ["loaded:v1"], saved)
    collected: list[list[str]] = []
    real = ImageStore.add_image

    def add_image_after_gc(self: ImageStore, *args: object, **kwargs: object) -> Image:
        collected.append(_second(self).collect_garbage())
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageStore, "add_image", add_image_after_gc)
    assert archive.load(store, io.BytesIO(saved.getvalue())) == ["Loaded image: loaded:v1"]
    assert collected == [[]]
    image = store.get("loaded:v1")
    assert store.content.has(store._layer_blobs(image)[0])
    assert store.leases.list_leases() == []


def test_collection_waits_for_a_commit_in_progress(store: ImageStore) -> None:
    """Between a writer's rename and its lease row, a collection must not run."""
    lease = store.leases.create()
    done = threading.Event()
    removed: list[list[str]] = []

    def collect() -> None:
        removed.append(_second(store).collect_garbage())
        done.set()

    with lease.guard():
        digest = store.content.put(b"renamed into place, lease row not yet written")
        thread = threading.Thread(target=collect)
        thread.start()
        assert not done.wait(0.3)  # held off by the guard
        lease.add(CONTENT, digest)
    assert done.wait(10)
    thread.join(10)
    assert removed == [[]] and store.content.has(digest)
    lease.release()
    assert store.collect_garbage() == [digest]


_CHILD = """
import sys
from dockyard.image.store import ImageStore
from dockyard.storage.leases import CONTENT

store = ImageStore(sys.argv[1])
lease = store.leases.create()
digest = store.content.put(b"a child's blob")
lease.add(CONTENT, digest)
print(digest, flush=True)
sys.stdin.readline()  # pauses mid-ingest until told (or killed)
lease.release()
"""


def test_a_lease_of_another_live_process_holds_and_of_a_dead_one_does_not(
    store: ImageStore,
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, store.root],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        digest = child.stdout.readline().strip()
        assert digest.startswith("sha256:")
        assert store.collect_garbage() == []
        assert store.content.has(digest)
        [info] = store.leases.list_leases()
        assert info.pid == child.pid and info.stale_reason() is None
    finally:
        child.kill()
        child.wait(10)
    [(info, reason)] = store.leases.stale()
    assert reason == f"owner pid {child.pid} is gone"
    assert store.collect_garbage() == [digest]  # the dead owner's lease is ignored
    assert store.leases.list_leases() == []  # and dropped


def test_an_expired_lease_is_ignored(store: ImageStore) -> None:
    lease = store.leases.create(expiry=0.05)
    digest = store.content.put(b"expiring")
    lease.add(CONTENT, digest)
    time.sleep(0.1)
    assert store.leases.stale()[0][1] == "expired"
    assert store.collect_garbage() == [digest]
    with pytest.raises(LeaseError, match="dropped as stale"):
        lease.add(CONTENT, digest)


def test_a_lease_whose_pid_was_reused_is_ignored(store: ImageStore) -> None:
    lease = store.leases.create()
    digest = store.content.put(b"pid reused")
    lease.add(CONTENT, digest)
    # Same pid, another start time: the pid now belongs to another process.
    store.conn.execute("UPDATE leases SET pid_start = pid_start + 1 WHERE id = ?", (lease.id,))
    assert store.leases.stale()[0][1] == f"owner pid {os.getpid()} is gone"
    assert store.collect_garbage() == [digest]
