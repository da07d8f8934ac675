"""The registry server's pure parts and its CLI: manifests, names, tokens, uploads, serve."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from dockyard.registry import manifests, names
from dockyard.registry.auth import Access, Htpasswd, TokenAuth, basic_credentials, parse_scope
from dockyard.registry.errors import RegistryError, error_body, parse_error_body
from dockyard.registry.storage import RegistryStorage
from tests.registry.helpers import (
    DOCKER_MANIFEST,
    DOCKYARD,
    OCI_INDEX,
    OCI_MANIFEST,
    image_manifest,
    run,
    sha256,
    start_server,
)


def _code(fn: object, *args: object) -> str:
    with pytest.raises(RegistryError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.code


def test_names() -> None:
    for good in ("a", "library/nginx", "a/b/c", "my-app_1.0/x__y", "a" * 255):
        assert names.check_name(good) == good
    for bad in ("", "A", "a//b", "/a", "a/", "a..b", "-a", "a" * 256, "a/../b"):
        assert _code(names.check_name, bad) == "NAME_INVALID"
    assert names.check_reference("v1.0_rc-2") == "v1.0_rc-2"
    assert _code(names.check_reference, ".hidden") == "TAG_INVALID"
    assert _code(names.check_reference, "x" * 129) == "TAG_INVALID"
    assert _code(names.check_reference, "sha256:00") == "DIGEST_INVALID"


def test_parse_manifests() -> None:
    body = image_manifest(b"cfg", [b"l1", b"l2", b"l1"])
    parsed = manifests.parse(body, OCI_MANIFEST)
    assert parsed.media_type == OCI_MANIFEST
    assert parsed.blobs == [sha256(b"cfg"), sha256(b"l1"), sha256(b"l2")]
    assert parsed.artifact_type == "application/vnd.oci.image.config.v1+json"
    assert parsed.subject is None
    # no mediaType field: the Content-Type, else the shape, says what it is
    doc = json.loads(body)
    del doc["mediaType"]
    bare = json.dumps(doc).encode()
    assert manifests.parse(bare, DOCKER_MANIFEST).media_type == DOCKER_MANIFEST
    assert manifests.parse(bare, "application/json").media_type == OCI_MANIFEST
    index = json.dumps(
        {"schemaVersion": 2, "manifests": [{"digest": sha256(b"m"), "size": 1, "mediaType": "x"}]}
    ).encode()
    parsed = manifests.parse(index, None)
    assert (parsed.media_type, parsed.manifests, parsed.blobs) == (OCI_INDEX, [sha256(b"m")], [])
    # foreign layers (with urls) are not required
    doc = json.loads(body)
    doc["layers"][1]["urls"] = ["https://example.invalid/layer"]
    assert sha256(b"l2") not in manifests.parse(json.dumps(doc).encode(), None).blobs
    too_big = b" " * (manifests.MAX_MANIFEST_SIZE + 1)
    with pytest.raises(RegistryError) as info:
        manifests.parse(too_big, None)
    assert (info.value.code, info.value.status) == ("SIZE_INVALID", 413)
    for bad in (b"{}", b'{"schemaVersion": 2, "layers": "x", "config": {}}', b"null"):
        assert _code(manifests.parse, bad, None) == "MANIFEST_INVALID"


def test_error_body_round_trip() -> None:
    err = RegistryError("BLOB_UNKNOWN", detail={"digest": "sha256:x"})
    assert err.status == 404
    body = error_body([err])
    assert json.loads(body) == {
        "errors": [
            {
                "code": "BLOB_UNKNOWN",
                "message": "blob unknown to registry",
                "detail": {"digest": "sha256:x"},
            }
        ]
    }
    back = parse_error_body(body, 404)
    assert [(e.code, e.status) for e in back] == [("BLOB_UNKNOWN", 404)]
    assert parse_error_body(b"<html>oops</html>", 502)[0].code == "UNKNOWN"


def test_scopes_and_tokens(tmp_path: Path) -> None:
    assert parse_scope("repository:a/b:pull,push") == Access("repository", "a/b", ("pull", "push"))
    assert parse_scope("repository(plugin):x:pull") == Access("repository", "x", ("pull",))
    assert parse_scope("registry:catalog:*") == Access("registry", "catalog", ("*",))
    assert parse_scope("nonsense") is None
    assert basic_credentials("Basic YWxpY2U6cDpx") == ("alice", "p:q")
    assert basic_credentials("Basic !!!") is None
    htpasswd = tmp_path / "htpasswd"
    assert run(["htpasswd", "-Bbc", str(htpasswd), "alice", "pw"]).returncode == 0
    auth = TokenAuth(Htpasswd(str(htpasswd)), b"k" * 32, "svc")
    granted = auth.grant([Access("repository", "r", ("pull", "push", "bogus"))])
    token = auth.issue("alice", granted)["token"]
    claims = auth.verify(token)
    assert claims is not None
    assert claims["access"] == [{"type": "repository", "name": "r", "actions": ["pull", "push"]}]
    assert TokenAuth(Htpasswd(str(htpasswd)), b"x" * 32, "svc").verify(token) is None
    assert TokenAuth(Htpasswd(str(htpasswd)), b"k" * 32, "other").verify(token) is None
    expired = auth.sign({"aud": "svc", "exp": 1, "access": []})
    assert auth.verify(expired) is None


def test_htpasswd_checks_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    assert run(["htpasswd", "-Bbc", str(path), "alice", "one"]).returncode == 0
    users = Htpasswd(str(path))
    assert asyncio.run(users.check("alice", "one"))
    assert asyncio.run(users.check("alice", "one"))  # the remembered pair
    assert not asyncio.run(users.check("alice", "two"))
    assert run(["htpasswd", "-Bb", str(path), "alice", "two"]).returncode == 0
    users._looked = 0.0  # as if a second had passed: check() looks at the file again
    assert asyncio.run(users.check("alice", "two"))
    assert not asyncio.run(users.check("alice", "one"))


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_upload_hash_carries_across_processes(tmp_path: Path) -> None:
    """A second storage object (another worker) finishes an upload the first one fed."""

    async def scenario() -> None:
        first = RegistryStorage(str(tmp_path))
        upload = first.uploads.start("repo")
        await first.uploads.append(upload, _chunks(b"hello ", b"world"))
        second = RegistryStorage(str(tmp_path))
        same = second.uploads.get("repo", upload.id)
        # the digest so far comes from the `hash` file, not from reading the data again
        assert await second.uploads.digest_of(same, "sha256") == (sha256(b"hello world"), 11)
        await second.uploads.append(same, _chunks(b"!"), start=11, length=1)
        await second.finish_upload(same, sha256(b"hello world!"))
        path, _st = first.blob("repo", sha256(b"hello world!"))
        assert Path(path).read_bytes() == b"hello world!"
        with pytest.raises(RegistryError) as info:
            await first.uploads.append(first.uploads.start("repo"), _chunks(b"x"), start=5)
        assert info.value.status == 416
        first.close()
        second.close()

    asyncio.run(scenario())


def test_failed_chunk_leaves_upload_unchanged(tmp_path: Path) -> None:
    async def scenario() -> None:
        storage = RegistryStorage(str(tmp_path))
        upload = storage.uploads.start("repo")
        await storage.uploads.append(upload, _chunks(b"abc"))
        with pytest.raises(RegistryError):
            await storage.uploads.append(upload, _chunks(b"de", b"fgh"), start=3, length=4)
        assert upload.size() == 3
        await storage.uploads.append(upload, _chunks(b"d"))
        await storage.finish_upload(upload, sha256(b"abcd"))
        storage.close()

    asyncio.run(scenario())


def test_version_does_not_import_aiohttp() -> None:
    code = (
        "import sys; from dockyard.cli import main; main.main(['--version']);"
        " print(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'dockyard.registry'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip().endswith("[]"), out


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        cases = [
            ["serve", "--listen", "nonsense", "--storage", str(tmp_path)],
            ["serve", "--listen", f"127.0.0.1:{port}", "--storage", str(tmp_path)],
            ["serve", "--listen", "127.0.0.1:0", "--storage", str(tmp_path), "--auth", "token"],
            ["serve", "--listen", "127.0.0.1:0", "--storage", str(tmp_path), "--tls-cert", "x"],
        ]
        for args in cases:
            res = run([DOCKYARD, "registry", *args], timeout=30)
            assert res.returncode == 1, (args, res.stdout, res.stderr)
            assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, res.stderr
    finally:
        taken.close()


def test_serve_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "storage")
    assert srv("GET", "/v2/").status == 200
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(timeout=15) == 0
    assert "Traceback" not in srv.log.read_text()


class _FakeUpstream:
    """Has one blob and one manifest; stores them the way a pull-through cache would."""

    def __init__(self, blob: bytes, config: bytes) -> None:
        self.blob = blob
        self.config = config
        self.asked: list[str] = []

    async def _store_blob(self, storage: RegistryStorage, repo: str, digest: str) -> bool:
        for data in (self.blob, self.config):
            if sha256(data) == digest:
                await storage.put_blob(repo, digest, _chunks(data), len(data))
                return True
        return False

    async def serve_blob(
        self,
        storage: RegistryStorage,
        request: web.Request,
        repo: str,
        digest: str,
        headers: dict[str, str],
    ) -> web.StreamResponse | None:
        self.asked.append(digest)
        if not await self._store_blob(storage, repo, digest):
            raise RegistryError("BLOB_UNKNOWN")
        return None

    async def fetch_manifest(self, storage: RegistryStorage, repo: str, reference: str) -> bool:
        self.asked.append(reference)
        if reference != "cached":
            return False
        for data in (self.blob, self.config):
            await self._store_blob(storage, repo, sha256(data))
        body = image_manifest(self.config, [self.blob])
        await storage.put_manifest(repo, reference, body, OCI_MANIFEST)
        return True

    async def tags(self, repo: str) -> list[str] | None:
        return None

    async def close(self) -> None:
        pass


def test_upstream_hook_fills_misses(tmp_path: Path) -> None:
    from dockyard.registry.server import Config, make_app
    from tests.registry.helpers import request

    upstream = _FakeUpstream(b"upstream layer", b'{"os":"linux"}')

    async def scenario() -> None:
        app = make_app(Config(str(tmp_path / "s"), upstream=upstream))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}/v2/proxied"
        try:
            r = await asyncio.to_thread(request, "GET", f"{base}/manifests/cached")
            assert r.status == 200, r.body
            assert r.body == image_manifest(upstream.config, [upstream.blob])
            blob = await asyncio.to_thread(request, "GET", f"{base}/blobs/{sha256(upstream.blob)}")
            assert blob.body == upstream.blob
            missing = await asyncio.to_thread(request, "GET", f"{base}/manifests/absent")
            assert missing.status == 404
            digest = sha256(image_manifest(upstream.config, [upstream.blob]))
            by_digest = await asyncio.to_thread(request, "GET", f"{base}/manifests/{digest}")
            assert by_digest.status == 200
            assert digest not in upstream.asked  # stored: the upstream isn't asked
            again = await asyncio.to_thread(request, "GET", f"{base}/blobs/{sha256(upstream.blob)}")
            assert again.body == upstream.blob
            assert sha256(upstream.blob) not in upstream.asked  # stored with the manifest
            tags = await asyncio.to_thread(request, "GET", f"{base}/tags/list")
            assert tags.json() == {"name": "proxied", "tags": ["cached"]}
            pushed = await asyncio.to_thread(request, "POST", f"{base}/blobs/uploads/")
            assert pushed.status == 405 and pushed.codes() == ["UNSUPPORTED"]
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_gc_needs_a_storage(tmp_path: Path) -> None:
    res = run([DOCKYARD, "registry", "gc", "--storage", str(tmp_path / "nothing")], timeout=30)
    assert res.returncode == 1
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "nothing").exists()
