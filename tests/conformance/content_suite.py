"""The conformance suite every `ContentStore` implementation must pass.

Modelled on containerd's `core/content/testsuite`. To run it against an
implementation, subclass `ContentStoreSuite` in a `test_*.py` module, name the
subclass `Test...` and override `make_store`:

    class TestLocalContentStore(ContentStoreSuite):
        def make_store(self, root):
            return LocalContentStore(str(root))

`make_store(root)` must return a store over the state in `root`; it is called more
than once for the same root (fresh instances, forked processes) and every instance
must see the same blobs. `corrupt` may be overridden for stores whose `path()` is
not the stored file itself.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.oci import digest as dg
from dockyard.oci.digest import DigestError
from dockyard.storage.content import (
    BlobNotFound,
    ContentError,
    ContentStore,
    DigestMismatch,
    SizeMismatch,
)

MiB = 1 << 20

StoreFactory = Callable[[], ContentStore]

BAD_DIGESTS = [
    "",
    "sha256",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "md5:d41d8cd98f00b204e9800998ecf8427e",
    "SHA256:" + "a" * 64,
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "g" * 64,
    "sha256:" + "A" * 64,
    "sha256:../../../../etc/passwd" + "a" * 38,
    "sha512:" + "a" * 64,
    " sha256:" + "a" * 64,
    "sha256:" + "a" * 63 + "\n",
]


def sha(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def fork(fn: Callable[[], object]) -> int:
    """Run `fn` in a forked child that exits 0 on success, 1 on any exception."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait_ok(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child {pid} failed"


class ChunkedStream(io.RawIOBase):
    """A generated stream that records the sizes it was asked for."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self.remaining = size
        self.rng = random.Random(seed)
        self.hasher = hashlib.sha256()
        self.requests: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.requests.append(n)
        if n is None or n < 0:
            n = self.remaining
        n = min(n, self.remaining, 300_000)  # short reads, like a socket
        self.remaining -= n
        data = self.rng.randbytes(n)
        self.hasher.update(data)
        return data


class ContentStoreSuite:
    """Tests any ContentStore must pass; subclass as `Test...` and override `make_store`."""

    def make_store(self, root: Path) -> ContentStore:
        raise NotImplementedError

    def corrupt(self, store: ContentStore, digest: str) -> None:
        """Flip one byte of the stored blob behind the store's back."""
        path = store.path(digest)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 0xFF]))

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        root = tmp_path / "state"
        root.mkdir()
        return lambda: self.make_store(root)

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> ContentStore:
        return store_factory()

    # -- basics ---------------------------------------------------------------------------

    def test_put_read_has_size_open(self, store: ContentStore) -> None:
        data = b"hello, dockyard\n"
        d = store.put(data)
        assert d == sha(data)
        assert store.has(d)
        assert store.size(d) == len(data)
        assert store.read(d) == data
        with store.open(d) as f:
            assert f.read() == data
        with open(store.path(d), "rb") as f:
            assert f.read() == data
        assert store.verify(d)

    def test_empty_blob(self, store: ContentStore) -> None:
        d = store.put(b"")
        assert d == sha(b"")
        assert store.size(d) == 0 and store.read(d) == b""

    def test_put_with_expected_and_twice(self, store: ContentStore) -> None:
        data = blob(1000)
        assert store.put(data, expected=sha(data)) == sha(data)
        assert store.put(data) == sha(data)
        assert list(store.digests()) == [sha(data)]

    def test_new_instance_sees_blobs(self, store_factory: StoreFactory) -> None:
        d = store_factory().put(b"shared")
        assert store_factory().read(d) == b"shared"

    def test_missing_blob(self, store: ContentStore) -> None:
        d = sha(b"never stored")
        assert not store.has(d)
        for call in (store.size, store.path, store.open, store.read, store.delete, store.verify):
            with pytest.raises(BlobNotFound) as info:
                call(d)
            assert d in str(info.value) and "\n" not in str(info.value)
        assert issubclass(BlobNotFound, ContentError)

    # -- verification before visibility ---------------------------------------------------

    def test_digest_mismatch_leaves_nothing(self, store: ContentStore) -> None:
        data, wrong = b"real data", sha(b"other data")
        with pytest.raises(DigestMismatch) as info:
            store.put(data, expected=wrong)
        msg = str(info.value)
        assert wrong in msg and sha(data) in msg and "\n" not in msg
        with pytest.raises(DigestMismatch), store.writer(expected=wrong) as w:
            w.write(data[:4])
            w.write(data[4:])
            w.commit()
        with pytest.raises(DigestMismatch):
            store.ingest(io.BytesIO(data), expected=wrong)
        assert not store.has(wrong) and not store.has(sha(data))
        assert list(store.digests()) == []
        assert store.stale_ingests(0) == []

    def test_size_mismatch_leaves_nothing(self, store: ContentStore) -> None:
        data = blob(4096)
        d = sha(data)
        for size in (len(data) - 1, len(data) + 1, 0):
            with pytest.raises(SizeMismatch) as info:
                store.ingest(io.BytesIO(data), expected=d, size=size)
            assert "\n" not in str(info.value)
        with pytest.raises(SizeMismatch):
            store.ingest(io.BytesIO(data), size=10)
        assert not store.has(d)
        assert list(store.digests()) == []
        assert store.stale_ingests(0) == []

    def test_bad_digests_raise_digest_error(self, store: ContentStore) -> None:
        calls: list[Callable[[str], object]] = [
            store.has,
            store.size,
            store.path,
            store.open,
            store.read,
            store.delete,
            store.verify,
            lambda bad: store.put(b"x", expected=bad),
            lambda bad: store.ingest(io.BytesIO(b"x"), expected=bad),
            lambda bad: store.writer(expected=bad),
            lambda bad: store.writer(expected=bad, resume=True),
        ]
        for bad in BAD_DIGESTS:
            for call in calls:
                with pytest.raises(DigestError) as info:
                    call(bad)
                assert isinstance(info.value, ContentError), bad
                assert "\n" not in str(info.value)
        with pytest.raises(DigestError):
            store.put(b"x", algorithm="md5")
        assert list(store.digests()) == []

    # -- streaming ------------------------------------------------------------------------

    def test_ingest_large_stream_in_chunks(self, store: ContentStore) -> None:
        stream = ChunkedStream(8 * MiB + 17)
        d = store.ingest(stream, size=8 * MiB + 17)  # type: ignore[arg-type]
        assert d == "sha256:" + stream.hasher.hexdigest()
        assert all(n is not None and 0 < n <= 16 * MiB for n in stream.requests)
        assert len(stream.requests) > 1
        assert store.size(d) == 8 * MiB + 17
        assert store.verify(d)
        check = hashlib.sha256()
        with store.open(d) as f:
            while chunk := f.read(MiB):
                check.update(chunk)
        assert check.hexdigest() == stream.hasher.hexdigest()

    def test_writer_offset(self, store: ContentStore) -> None:
        data = blob(10_000)
        with store.writer(expected=sha(data), size=len(data)) as w:
            assert w.offset == 0
            for i in range(0, len(data), 999):
                w.write(data[i : i + 999])
                assert w.offset == min(i + 999, len(data))
            assert w.commit() == sha(data)
        with pytest.raises(ContentError):
            w.write(b"more")
        assert store.read(sha(data)) == data

    def test_abort_removes_temp(self, store: ContentStore) -> None:
        data = blob(5000)
        with pytest.raises(RuntimeError), store.writer(expected=sha(data)) as w:
            w.write(data[:100])
            raise RuntimeError("download failed")
        with store.writer() as w:
            w.write(data)  # left without commit: also aborted
        assert store.stale_ingests(0) == []
        assert not store.has(sha(data))

    # -- resume ---------------------------------------------------------------------------

    def test_resume_after_partial_write(self, store_factory: StoreFactory) -> None:
        store = store_factory()
        data = blob(3 * MiB + 5)
        d, half = sha(data), len(data) // 2
        with pytest.raises(ConnectionError), store.writer(d, len(data), resume=True) as w:
            w.write(data[:half])
            raise ConnectionError("connection reset")
        assert not store.has(d)
        store = store_factory()  # a later process picks it up
        with store.writer(expected=d, size=len(data), resume=True) as w:
            assert w.offset == half
            w.write(data[w.offset :])
            assert w.commit() == d
        assert store.read(d) == data
        assert store.stale_ingests(0) == []

    def test_resume_of_bad_partial_fails_then_restarts(self, store: ContentStore) -> None:
        data = blob(2000)
        d = sha(data)
        with store.writer(expected=d, resume=True) as w:
            w.write(b"\0" * 1000)  # corrupt first half, then dropped
        with pytest.raises(DigestMismatch), store.writer(expected=d, resume=True) as w:
            assert w.offset == 1000
            w.write(data[1000:])
            w.commit()
        assert not store.has(d)
        with store.writer(expected=d, resume=True) as w:
            assert w.offset == 0
            w.write(data)
            assert w.commit() == d

    def test_resume_needs_expected(self, store: ContentStore) -> None:
        with pytest.raises(ContentError):
            store.writer(resume=True)

    def test_resume_while_partial_is_in_use(self, store: ContentStore) -> None:
        data = blob(4000)
        d = sha(data)
        first = store.writer(expected=d, resume=True)
        first.write(data[:2000])
        with store.writer(expected=d, resume=True) as second:
            assert second.offset == 0  # cannot share the live partial; starts afresh
            second.write(data)
            assert second.commit() == d
        first.write(data[2000:])
        assert first.commit() == d
        assert list(store.digests()) == [d]
        assert store.stale_ingests(0) == []

    # -- concurrency ----------------------------------------------------------------------

    def test_concurrent_writers_threads(self, store: ContentStore) -> None:
        data = blob(2 * MiB)
        d = sha(data)
        barrier = threading.Barrier(8)
        results: list[str] = []
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                expected = d if i % 2 else None
                with store.writer(expected=expected, size=len(data)) as w:
                    barrier.wait()
                    for j in range(0, len(data), 64 * 1024):
                        w.write(data[j : j + 64 * 1024])
                    results.append(w.commit())
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert results == [d] * 8
        assert list(store.digests()) == [d]
        assert store.read(d) == data and store.verify(d)
        assert store.stale_ingests(0) == []

    def test_concurrent_writers_of_different_blobs(self, store: ContentStore) -> None:
        blobs = [blob(512 * 1024, seed=100 + i) for i in range(8)]
        barrier = threading.Barrier(8)
        results: dict[int, str] = {}
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                with store.writer(size=len(blobs[i])) as w:
                    barrier.wait()
                    for j in range(0, len(blobs[i]), 32 * 1024):
                        w.write(blobs[i][j : j + 32 * 1024])
                    results[i] = w.commit()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert results == {i: sha(b) for i, b in enumerate(blobs)}
        assert all(store.read(sha(b)) == b for b in blobs)

    def test_concurrent_writers_processes(self, store_factory: StoreFactory) -> None:
        data = blob(2 * MiB, seed=7)
        d = sha(data)
        gate_r, gate_w = os.pipe()

        def child() -> None:
            os.close(gate_w)
            store = store_factory()
            os.read(gate_r, 1)  # returns b"" once every process closed the write end
            assert store.ingest(io.BytesIO(data), expected=d, size=len(data)) == d

        pids = [fork(child) for _ in range(8)]
        os.close(gate_w)
        os.close(gate_r)
        for pid in pids:
            wait_ok(pid)
        store = store_factory()
        assert list(store.digests()) == [d]
        assert store.read(d) == data
        assert store.stale_ingests(0) == []

    # -- delete, listing, verify ----------------------------------------------------------

    def test_delete(self, store: ContentStore) -> None:
        d = store.put(b"to delete")
        keep = store.put(b"to keep")
        store.delete(d)
        assert not store.has(d) and store.has(keep)
        with pytest.raises(BlobNotFound):
            store.delete(d)
        assert list(store.digests()) == [keep]
        assert store.put(b"to delete") == d and store.has(d)

    def test_digests_listing(self, store: ContentStore) -> None:
        assert list(store.digests()) == []
        expected = set()
        for i in range(5):
            expected.add(store.put(blob(100 + i, seed=i)))
            expected.add(store.put(blob(50 + i, seed=i), algorithm="sha512"))
        with store.writer() as w:
            w.write(b"uncommitted")  # not listed
            listed = list(store.digests())
        assert len(listed) == len(expected) and set(listed) == expected

    def test_verify_detects_corruption(self, store: ContentStore) -> None:
        good = store.put(blob(70_000, seed=3))
        d = store.put(blob(70_000, seed=4))
        assert store.verify(d)
        self.corrupt(store, d)
        assert not store.verify(d)
        assert store.verify(good)
        store.delete(d)  # repair: drop it, store it again
        assert store.put(blob(70_000, seed=4)) == d and store.verify(d)

    # -- stale ingests and crashes --------------------------------------------------------

    def test_stale_ingest_cleanup(self, store: ContentStore) -> None:
        old, new = blob(3000, seed=1), blob(3000, seed=2)
        for data in (old, new):
            with store.writer(expected=sha(data), resume=True) as w:
                w.write(data[:1000])  # dropped: kept for resume
        stale = store.stale_ingests(0)
        assert len(stale) == 2
        with store.writer(expected=sha(old), resume=True) as probe:
            assert probe.offset == 1000  # find the old one's path: the one in use now
            in_use = set(stale) - set(store.stale_ingests(0))
        assert len(in_use) == 1
        long_ago = time.time() - 7200
        for path in in_use:
            os.utime(path, (long_ago, long_ago))
        live = store.writer()  # a live writer is never stale
        live.write(b"in progress")
        assert store.stale_ingests(3600) == sorted(in_use)
        assert store.remove_stale_ingests(3600) == sorted(in_use)
        assert store.stale_ingests(3600) == []
        with store.writer(expected=sha(old), resume=True) as w:
            assert w.offset == 0  # the old partial is gone
        with store.writer(expected=sha(new), resume=True) as w:
            assert w.offset == 1000  # the recent one was kept
        assert len(store.stale_ingests(0)) == 2  # both resumable partials, closed
        store.remove_stale_ingests(0)
        assert store.stale_ingests(0) == []
        assert live.commit() == sha(b"in progress")

    @pytest.mark.parametrize("resume", [False, True])
    def test_crash_between_write_and_commit(
        self, store_factory: StoreFactory, resume: bool
    ) -> None:
        data = blob(4 * MiB, seed=9)
        d = sha(data)
        ready_r, ready_w = os.pipe()

        def child() -> None:
            store = store_factory()
            w = store.writer(expected=d, size=len(data), resume=resume)
            w.write(data[: len(data) // 2])
            w.flush()
            os.write(ready_w, b"x")
            time.sleep(60)

        pid = fork(child)
        os.close(ready_w)
        try:
            assert os.read(ready_r, 1) == b"x"
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(ready_r)
        store = store_factory()
        assert not store.has(d)
        assert list(store.digests()) == []
        stale = store.stale_ingests(0)
        assert len(stale) == 1
        if resume:  # the crashed download continues where it stopped
            with store.writer(expected=d, size=len(data), resume=True) as w:
                assert w.offset == len(data) // 2
                w.write(data[w.offset :])
                assert w.commit() == d
            assert store.read(d) == data
        else:
            assert store.remove_stale_ingests(0) == stale
            assert not store.has(d)
        assert store.stale_ingests(0) == []

    # -- algorithms -----------------------------------------------------------------------

    def test_sha512(self, store: ContentStore) -> None:
        data = blob(12345)
        d = store.put(data, algorithm="sha512")
        assert d == sha(data, "sha512") == dg.from_bytes(data, "sha512")
        assert store.has(d) and not store.has(sha(data))
        assert store.read(d) == data and store.size(d) == len(data) and store.verify(d)
        d2 = sha(blob(100), "sha512")
        assert store.ingest(io.BytesIO(blob(100)), expected=d2) == d2  # algorithm from expected
        wrong = d[:-1] + ("0" if d[-1] != "0" else "1")
        with pytest.raises(DigestMismatch):
            store.put(data, expected=wrong)
        store.delete(d)
        assert not store.has(d)
