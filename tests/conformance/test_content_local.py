"""LocalContentStore against the content conformance suite, plus its on-disk layout."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dockyard.storage.content import (
    ContentStore,
    InvalidDigest,
    LocalContentStore,
)
from tests.conformance.content_suite import ContentStoreSuite, blob, sha


class TestLocalContentStore(ContentStoreSuite):
    def make_store(self, root: Path) -> ContentStore:
        return LocalContentStore(str(root))


def test_layout_and_mode(tmp_path: Path) -> None:
    store = LocalContentStore(str(tmp_path))
    d = store.put(b"layout")
    hex_ = d.split(":", 1)[1]
    path = tmp_path / "blobs" / "sha256" / hex_
    assert store.path(d) == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    d512 = store.put(b"layout", algorithm="sha512")
    assert Path(store.path(d512)) == tmp_path / "blobs" / "sha512" / d512.split(":", 1)[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs"]
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == [
        ".ingest",
        "sha256",
        "sha512",
    ]
    assert list((tmp_path / "blobs" / ".ingest").iterdir()) == []


def test_ingest_goes_under_ingest_dir(tmp_path: Path) -> None:
    store = LocalContentStore(str(tmp_path))
    data = blob(1000)
    with store.writer(expected=sha(data)) as w:
        w.write(data)
        w.flush()
        temps = list((tmp_path / "blobs" / ".ingest").iterdir())
        assert len(temps) == 1 and temps[0].stat().st_size == len(data)
        assert not (tmp_path / "blobs" / "sha256").exists()
        w.commit()
    assert list((tmp_path / "blobs" / ".ingest").iterdir()) == []


def test_no_side_effects_until_written(tmp_path: Path) -> None:
    store = LocalContentStore(str(tmp_path / "missing"))
    assert not store.has(sha(b"x"))
    assert list(store.digests()) == []
    assert store.stale_ingests(0) == []
    assert not (tmp_path / "missing").exists()


def test_existing_blob_kept_on_rewrite(tmp_path: Path) -> None:
    store = LocalContentStore(str(tmp_path))
    d = store.put(b"same")
    inode = os.stat(store.path(d)).st_ino
    store.put(b"same")
    assert os.stat(store.path(d)).st_ino == inode


def test_junk_in_blob_dir_is_not_listed(tmp_path: Path) -> None:
    store = LocalContentStore(str(tmp_path))
    d = store.put(b"real")
    (tmp_path / "blobs" / "sha256" / "not-a-digest").write_bytes(b"junk")
    (tmp_path / "blobs" / "sha256" / ("ab" * 32 + ".tmp")).write_bytes(b"junk")
    assert list(store.digests()) == [d]


def test_invalid_digest_is_both_error_kinds() -> None:
    from dockyard.oci.digest import DigestError
    from dockyard.storage.content import ContentError

    assert issubclass(InvalidDigest, DigestError) and issubclass(InvalidDigest, ContentError)
    with pytest.raises(InvalidDigest, match="unknown algorithm"):
        LocalContentStore("/nonexistent").has("md5:" + "0" * 32)


def test_import_is_light() -> None:
    code = (
        "import sys, dockyard.storage.content; "
        "heavy = {'hashlib', 'tempfile', 'shutil', 'threading', 'asyncio'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_unwritable_root_is_a_content_error(tmp_path: Path) -> None:
    from dockyard.storage.content import IngestIOError

    (tmp_path / "file").write_bytes(b"not a directory")
    store = LocalContentStore(str(tmp_path / "file"))
    with pytest.raises(IngestIOError, match="cannot start a blob ingest"):
        store.put(b"data")
