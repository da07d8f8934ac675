"""Many pushers at once lose nothing; gc removes only what no manifest needs, even mid-push."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.registry.helpers import (
    DOCKYARD,
    OCI_MANIFEST,
    Server,
    image_manifest,
    push_blob,
    push_image,
    run,
    sha256,
)

SHARED = [os.urandom(300_000 + i * 1000) for i in range(6)]


def _upload(server: Server, repo: str, data: bytes, style: int) -> None:
    """Push one blob the way client `style` would: monolithic, POST+PUT, chunked PATCHes."""
    digest = sha256(data)
    if server("HEAD", f"/v2/{repo}/blobs/{digest}").status == 200:
        return
    if style == 0:
        push_blob(server, repo, data)
        return
    r = server("POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status == 202, r.body
    location = r.header("Location")
    assert location is not None
    if style == 1:
        r = server("PUT", f"{location}?digest={digest}", data)
    else:
        step = 100_000
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            r = server(
                "PATCH", location, chunk, {"Content-Range": f"{start}-{start + len(chunk) - 1}"}
            )
            assert r.status == 202, r.body
            location = r.header("Location") or location
        r = server("PUT", f"{location}?digest={digest}")
    assert r.status == 201, r.body


def _push(server: Server, n: int) -> tuple[str, str, bytes]:
    repo = f"pushers/p{n % 5}"  # four pushers share each repository
    layers = [SHARED[(n + i) % len(SHARED)] for i in range(3)] + [os.urandom(50_000)]
    config = json.dumps({"os": "linux", "architecture": "amd64", "n": n}).encode()
    for i, blob in enumerate([config, *layers]):
        _upload(server, repo, blob, (n + i) % 3)
    manifest = image_manifest(config, layers)
    r = server("PUT", f"/v2/{repo}/manifests/t{n}", manifest, {"Content-Type": OCI_MANIFEST})
    assert r.status == 201, r.body
    return repo, f"t{n}", manifest


def _pull_check(server: Server, repo: str, tag: str, manifest: bytes) -> None:
    r = server("GET", f"/v2/{repo}/manifests/{tag}")
    assert (r.status, r.body) == (200, manifest)
    assert r.header("Docker-Content-Digest") == sha256(manifest)
    doc = json.loads(manifest)
    for desc in [doc["config"], *doc["layers"]]:
        blob = server("GET", f"/v2/{repo}/blobs/{desc['digest']}")
        assert blob.status == 200, (repo, desc["digest"], blob.body[:200])
        assert sha256(blob.body) == desc["digest"]
        assert len(blob.body) == desc["size"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_twenty_concurrent_pushers(make_server: Callable[..., Server], workers: str) -> None:
    server = make_server("--workers", workers)
    with ThreadPoolExecutor(max_workers=20) as pool:
        pushed = list(pool.map(lambda n: _push(server, n), range(20)))
    for repo, tag, manifest in pushed:
        _pull_check(server, repo, tag, manifest)
    blobs = {p.name for p in (server.storage / "blobs" / "sha256").iterdir()}
    for blob in SHARED:
        assert sha256(blob).split(":")[1] in blobs
    assert list((server.storage / "uploads").iterdir()) == []
    assert list((server.storage / "blobs" / ".ingest").iterdir()) == []


def _gc(storage: Path, *flags: str) -> str:
    res = run([DOCKYARD, "registry", "gc", "--storage", str(storage), *flags], timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _blob_file(storage: Path, data: bytes) -> Path:
    return storage / "blobs" / "sha256" / sha256(data).split(":")[1]


def test_gc_dry_run_then_real(make_server: Callable[..., Server]) -> None:
    server = make_server("--delete")
    shared, only_a, only_b, orphan = b"shared", b"only in a", b"only in b", b"orphan"
    a = push_image(server, "gc/repo", "a", [shared, only_a])
    b = push_image(server, "gc/repo", "b", [shared, only_b])
    push_blob(server, "gc/repo", orphan)
    assert server("DELETE", f"/v2/gc/repo/manifests/{b}").status == 202
    storage = server.storage
    # young blobs are kept by the default grace period
    out = _gc(storage, "--dry-run")
    assert "would remove 0 blobs" in out
    assert f"kept blob {sha256(orphan)}" in out
    out = _gc(storage, "--dry-run", "--grace", "0")
    doomed = {sha256(only_b), sha256(orphan), b}
    for digest in doomed:
        assert f"would remove blob {digest}" in out
    assert "would remove 4 blobs" in out  # b's config too
    assert _blob_file(storage, orphan).exists()
    out = _gc(storage, "--grace", "0")
    assert "removed 4 blobs" in out
    for data in (only_b, orphan):
        assert not _blob_file(storage, data).exists()
        r = server("HEAD", f"/v2/gc/repo/blobs/{sha256(data)}")
        assert r.status == 404
    for data in (shared, only_a):
        assert _blob_file(storage, data).exists()
    r = server("GET", "/v2/gc/repo/manifests/a")
    assert r.header("Docker-Content-Digest") == a
    _pull_check(server, "gc/repo", "a", r.body)
    assert "removed 0 blobs" in _gc(storage, "--grace", "0")


def test_gc_removes_stale_uploads(make_server: Callable[..., Server]) -> None:
    server = make_server()
    location = server("POST", "/v2/stale/blobs/uploads/").header("Location")
    assert location is not None
    assert server("PATCH", location, b"abandoned").status == 202
    upload_dir = server.storage / "uploads" / location.rsplit("/", 1)[1]
    assert "removed 0 blobs (0 bytes), 0 uploads" in _gc(server.storage, "--grace", "0")
    old = time.time() - 3 * 24 * 3600
    for path in (upload_dir, *upload_dir.iterdir()):
        os.utime(path, (old, old))
    assert "would remove upload" in _gc(server.storage, "--dry-run")
    assert upload_dir.exists()
    assert "1 uploads" in _gc(server.storage)
    assert not upload_dir.exists()
    assert server("GET", location).status == 404


def test_gc_during_pushes_loses_nothing(make_server: Callable[..., Server]) -> None:
    """Pushes that reuse old unreferenced blobs (HEAD says they exist) race a gc loop."""
    server = make_server("--delete")
    storage = server.storage
    # old layers left behind by a deleted image: unreferenced and past the grace period
    old_layers = [os.urandom(200_000) for _ in range(4)]
    gone = push_image(server, "race/old", "gone", old_layers)
    assert server("DELETE", f"/v2/race/old/manifests/{gone}").status == 202
    long_ago = time.time() - 7200
    for layer in old_layers:
        os.utime(_blob_file(storage, layer), (long_ago, long_ago))
    stop = threading.Event()
    collections = []

    def collector() -> None:
        for _ in range(200):  # bounded
            if stop.is_set():
                break
            proc = subprocess.run(
                [DOCKYARD, "registry", "gc", "--storage", str(storage), "--grace", "30"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            collections.append(proc.stdout)

    def pusher(n: int) -> tuple[str, str, bytes]:
        repo = "race/old"  # the old blobs are linked here: HEAD finds them
        layers = [old_layers[n % 4], old_layers[(n + 1) % 4], os.urandom(10_000)]
        config = json.dumps({"n": n}).encode()
        for i, blob in enumerate([config, *layers]):
            _upload(server, repo, blob, i % 3)
            time.sleep(0.1 * (n % 5))  # a slow client: gc runs between HEAD and manifest
        manifest = image_manifest(config, layers)
        r = server("PUT", f"/v2/{repo}/manifests/n{n}", manifest, {"Content-Type": OCI_MANIFEST})
        assert r.status == 201, r.body
        return repo, f"n{n}", manifest

    thread = threading.Thread(target=collector)
    thread.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            pushed = list(pool.map(pusher, range(16)))
    finally:
        stop.set()
        thread.join(timeout=120)
    assert collections
    for repo, tag, manifest in pushed:
        _pull_check(server, repo, tag, manifest)
    # once nothing references them, old blobs do go
    for _, _, manifest in pushed:
        r = server("DELETE", f"/v2/race/old/manifests/{sha256(manifest)}")
        assert r.status == 202
    assert "removed 0 blobs" not in _gc(storage, "--grace", "0")
    for layer in old_layers:
        assert not _blob_file(storage, layer).exists()


def test_head_keeps_an_old_blob_from_gc(make_server: Callable[..., Server]) -> None:
    """A blob a client was told exists (HEAD) counts as young again: gc keeps it."""
    server = make_server()
    layer, config = os.urandom(1000), b'{"os":"linux"}'
    push_blob(server, "keep/me", layer)
    push_blob(server, "keep/me", config)
    long_ago = time.time() - 7200
    for data in (layer, config):
        os.utime(_blob_file(server.storage, data), (long_ago, long_ago))
    assert "would remove 2 blobs" in _gc(server.storage, "--dry-run", "--grace", "30")
    for data in (layer, config):
        assert server("HEAD", f"/v2/keep/me/blobs/{sha256(data)}").status == 200
    assert "removed 0 blobs" in _gc(server.storage, "--grace", "30")
    manifest = image_manifest(config, [layer])
    r = server("PUT", "/v2/keep/me/manifests/v1", manifest, {"Content-Type": OCI_MANIFEST})
    assert r.status == 201, r.body
    _pull_check(server, "keep/me", "v1", manifest)
