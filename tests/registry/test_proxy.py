"""The pull-through cache (`registry serve --proxy URL`) in front of real upstreams.

The upstream is the reference registry (distribution's docker-registry, its access
log counting what the proxy asked it) holding busybox pushed with skopeo, or a
fake one in a thread that holds each blob's second half back until a test lets
it go. Clients are skopeo, `dockyard pull` (through a registries.conf mirror)
and raw HTTP.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from scripts import test_images

from tests.cli.dockyard_helper import Dockyard
from tests.registry.client_helpers import (
    FakeRegistry,
    ReferenceRegistry,
    free_port,
    htpasswd_file,
    isolate_registry_settings,
    make_image,
    tar_of,
)
from tests.registry.helpers import (
    DOCKYARD,
    OCI_INDEX,
    OCI_MANIFEST,
    Server,
    oci_layout,
    run,
    sha256,
)
from tests.runtime.peers import require

pytestmark = pytest.mark.peer
WAIT = 30.0


class Layout:
    """An OCI layout of one image (tag `v1`): its manifest digest and blobs."""

    def __init__(self, path: Path, digest: str) -> None:
        self.path = path
        self.digest = digest
        manifest = json.loads(self.blob(digest))
        self.blobs = [manifest["config"]["digest"]] + [d["digest"] for d in manifest["layers"]]

    def blob(self, digest: str) -> bytes:
        return (self.path / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def _tar_with(name: str, data: bytes) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def layouts(
    tmp_path_factory: pytest.TempPathFactory, busybox_image: test_images.BusyboxImage
) -> tuple[Layout, Layout]:
    """busybox plus a small layer; and the same with another small layer."""
    require("skopeo")
    base = tmp_path_factory.mktemp("layouts")
    rootfs = busybox_image.tar.read_bytes()
    made = []
    for name in ("first", "second"):
        layer = _tar_with("etc/motd", f"the {name} image\n".encode())
        made.append(Layout(base / name, oci_layout(base / name, [rootfs, layer], tag="v1")))
    return made[0], made[1]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's registries.conf (empty until written) and auth.json."""
    return isolate_registry_settings(tmp_path, monkeypatch)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[ReferenceRegistry]:
    require("docker-registry")
    reg = ReferenceRegistry(tmp_path / "upstream")
    try:
        yield reg
    finally:
        reg.stop()


def skopeo(*args: str) -> str:
    res = run(["skopeo", *args], timeout=120)
    assert res.returncode == 0, f"skopeo {' '.join(args)}:\n{res.stderr}"
    return res.stdout


def push(reg: ReferenceRegistry, layout: Layout, ref: str, *creds: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", *creds, f"oci:{layout.path}:v1", f"docker://{ref}")


def upstream_gets(reg: ReferenceRegistry, path: str) -> int:
    """GETs of `path` the reference registry answered (its access log)."""
    needle = f'"GET {path} HTTP/1.1" 200 '
    return sum(needle in line for line in reg.log_path.read_text().splitlines())


def mirror_conf(prefix: str, proxy: Server) -> str:
    return (
        f'[[registry]]\nprefix = "{prefix}"\nlocation = "{prefix}"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "{proxy.host}"\ninsecure = true\n'
    )


def copy_out(proxy: Server, ref: str, dest: Path) -> str:
    """skopeo copy docker://PROXY/ref oci:dest; the manifest digest it wrote."""
    skopeo("copy", "--src-tls-verify=false", f"docker://{proxy.host}/{ref}", f"oci:{dest}:v1")
    return str(json.loads((dest / "index.json").read_text())["manifests"][0]["digest"])


def test_pull_through_then_offline(
    upstream: ReferenceRegistry,
    layouts: tuple[Layout, Layout],
    make_server: Callable[..., Server],
    settings: Path,
    tmp_path: Path,
) -> None:
    image = layouts[0]
    push(upstream, image, f"{upstream.host}/team/app:v1")
    push(upstream, image, f"{upstream.host}/library/busybox:v1")
    proxy = make_server("--proxy", f"http://{upstream.host}")

    # skopeo through the proxy: the same manifest and blobs, each fetched once
    out = tmp_path / "out"
    assert copy_out(proxy, "team/app:v1", out) == image.digest
    for digest in image.blobs:
        assert (out / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == image.blob(digest)
        assert upstream_gets(upstream, f"/v2/team/app/blobs/{digest}") == 1
    assert upstream_gets(upstream, "/v2/team/app/manifests/v1") == 1

    # dockyard pull through a registries.conf mirror: served from the cache (the
    # upstream only answers the proxy's HEAD of the tag)
    settings.write_text(mirror_conf(upstream.host, proxy))
    first = Dockyard(tmp_path / "first")
    pulled = first("pull", f"{upstream.host}/team/app:v1").stdout
    assert f"Digest: {image.digest}" in pulled.splitlines()
    assert first("images", "--digests", "--format", "{{.Digest}}").stdout == f"{image.digest}\n"
    assert upstream_gets(upstream, "/v2/team/app/manifests/v1") == 1
    for digest in image.blobs:
        assert upstream_gets(upstream, f"/v2/team/app/blobs/{digest}") == 1

    # docker.io: the mirror is asked for library/busybox and asks the upstream the same;
    # the blobs cached for team/app are linked (its manifest needs them), not fetched
    settings.write_text(
        'unqualified-search-registries = ["docker.io"]\n'
        '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
        f'[[registry.mirror]]\nlocation = "{proxy.host}"\ninsecure = true\n'
    )
    hub = Dockyard(tmp_path / "hub")
    assert f"Digest: {image.digest}" in hub("pull", "busybox:v1").stdout.splitlines()
    assert upstream_gets(upstream, "/v2/library/busybox/manifests/v1") == 1
    for digest in image.blobs:
        assert upstream_gets(upstream, f"/v2/library/busybox/blobs/{digest}") == 0
    assert "library/library" not in upstream.log_path.read_text()

    # the upstream goes away: what is cached is still served, by tag and by digest
    upstream.stop()
    assert copy_out(proxy, "team/app:v1", tmp_path / "offline") == image.digest
    settings.write_text(mirror_conf(upstream.host, proxy))
    offline = Dockyard(tmp_path / "offline-root")
    assert f"Digest: {image.digest}" in offline("pull", f"{upstream.host}/team/app:v1").stdout
    r = proxy("GET", f"/v2/library/busybox/manifests/{image.digest}")
    assert r.status == 200 and sha256(r.body) == image.digest
    # and what isn't cached is a clear 503
    r = proxy("GET", "/v2/team/app/manifests/v2")
    assert r.status == 503 and r.codes() == ["UNAVAILABLE"], r.body
    message = r.json()["errors"][0]["message"]
    assert "not cached here" in message and "unreachable" in message and "\n" not in message
    r = proxy("GET", f"/v2/team/app/blobs/{sha256(b'never pushed')}")
    assert r.status == 503 and r.codes() == ["UNAVAILABLE"], r.body
    assert "Traceback" not in proxy.log.read_text()


def test_misses_refusals_and_moved_tags(
    upstream: ReferenceRegistry,
    layouts: tuple[Layout, Layout],
    make_server: Callable[..., Server],
    tmp_path: Path,
) -> None:
    first, second = layouts
    push(upstream, first, f"{upstream.host}/app:v1")
    proxy = make_server("--proxy", f"http://{upstream.host}")
    for path in ("/v2/app/manifests/nope", "/v2/nothere/manifests/v1"):
        r = proxy("GET", path)
        assert r.status == 404 and r.codes() == ["MANIFEST_UNKNOWN"], (path, r.body)
    r = proxy("GET", f"/v2/app/blobs/{sha256(b'none')}")
    assert r.status == 404 and r.codes() == ["BLOB_UNKNOWN"]
    r = proxy("HEAD", "/v2/app/manifests/v1")
    assert r.status == 200 and r.header("Docker-Content-Digest") == first.digest

    # a blob's HEAD asks the upstream's HEAD: nothing is downloaded or stored
    layer = first.blobs[-1]
    r = proxy("HEAD", f"/v2/app/blobs/{layer}")
    assert r.status == 200 and r.header("Content-Length") == str(len(first.blob(layer)))
    assert not (proxy.storage / "blobs" / "sha256" / layer.split(":")[1]).exists()
    assert upstream_gets(upstream, f"/v2/app/blobs/{layer}") == 0
    r = proxy("GET", f"/v2/app/blobs/{layer}")
    assert r.status == 200 and r.body == first.blob(layer)
    assert r.header("Docker-Content-Digest") == layer
    r = proxy("GET", f"/v2/app/blobs/{layer}", headers={"Range": "bytes=10-"})
    assert r.status == 206 and r.body == first.blob(layer)[10:]  # stored: a file now
    config = first.blobs[0]  # a Range on a blob not cached yet: answered once it is
    r = proxy("GET", f"/v2/app/blobs/{config}", headers={"Range": "bytes=5-"})
    assert r.status == 206 and r.body == first.blob(config)[5:]

    # pushes and deletes are refused, as distribution's proxy does
    for method, path in (
        ("POST", "/v2/app/blobs/uploads/"),
        ("PUT", "/v2/app/manifests/v9"),
        ("DELETE", f"/v2/app/manifests/{first.digest}"),
        ("DELETE", f"/v2/app/blobs/{layer}"),
    ):
        r = proxy(method, path, b"{}", {"Content-Type": OCI_MANIFEST})
        assert r.status == 405 and r.codes() == ["UNSUPPORTED"], (method, path, r.body)
    refused = run(
        ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{first.path}:v1",
         f"docker://{proxy.host}/app:pushed"],
        timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0

    # the tag moves upstream: the proxy follows; the old manifest stays by digest
    push(upstream, second, f"{upstream.host}/app:v1")
    push(upstream, second, f"{upstream.host}/app:v2")
    r = proxy("GET", "/v2/app/manifests/v1")
    assert r.status == 200 and sha256(r.body) == second.digest
    assert proxy("GET", f"/v2/app/manifests/{first.digest}").status == 200
    assert proxy("GET", "/v2/app/tags/list").json() == {"name": "app", "tags": ["v1", "v2"]}
    page = proxy("GET", "/v2/app/tags/list?n=1")
    assert page.json()["tags"] == ["v1"] and "last=v1" in (page.header("Link") or "")
    assert copy_out(proxy, "app:v1", tmp_path / "moved") == second.digest


def test_upstream_with_basic_auth(
    layouts: tuple[Layout, Layout],
    make_server: Callable[..., Server],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require("docker-registry")
    require("htpasswd")
    image = layouts[0]
    users = htpasswd_file(tmp_path / "htpasswd", "mirror", "s3cret")
    reg = ReferenceRegistry(tmp_path / "upstream", htpasswd=users)
    try:
        push(reg, image, f"{reg.host}/private/app:v1", "--dest-creds", "mirror:s3cret")
        url = f"http://{reg.host}"
        proxy = make_server(
            "--proxy", url, "--proxy-username", "mirror", "--proxy-password", "s3cret"
        )
        assert copy_out(proxy, "private/app:v1", tmp_path / "out") == image.digest
        monkeypatch.setenv("DOCKYARD_PROXY_PASSWORD", "s3cret")  # the password kept off argv
        from_env = make_server("--proxy", url, "--proxy-username", "mirror")
        r = from_env("GET", "/v2/private/app/manifests/v1")
        assert r.status == 200 and sha256(r.body) == image.digest
        for flags in ((), ("--proxy-username", "mirror", "--proxy-password", "wrong")):
            refused = make_server("--proxy", url, *flags)
            r = refused("GET", "/v2/private/app/manifests/v1")
            assert r.status == 403 and r.codes() == ["DENIED"], (flags, r.body)
            message = r.json()["errors"][0]["message"]
            assert "refused this mirror" in message and "unauthorized" in message, message
            r = refused("GET", f"/v2/private/app/blobs/{image.blobs[0]}")
            assert r.status == 403 and r.codes() == ["DENIED"], (flags, r.body)
    finally:
        reg.stop()


def test_bearer_upstream_and_an_index(make_server: Callable[..., Server]) -> None:
    fake = FakeRegistry()
    fake.behaviour.token_auth = True
    fake.behaviour.anonymous_pull = False
    fake.behaviour.users = {"bot": "pw"}
    try:
        amd = make_image([tar_of({"amd": b"amd64\n"})], arch="amd64")
        arm = make_image([tar_of({"arm": b"arm64\n"})], arch="arm64", variant="v8")
        index = fake.add_index("team/multi", "latest", [amd, arm])
        proxy = make_server(
            "--proxy", f"http://{fake.host}", "--proxy-username", "bot", "--proxy-password", "pw"
        )
        r = proxy("GET", "/v2/team/multi/manifests/latest")
        assert r.status == 200 and sha256(r.body) == index
        assert r.header("Content-Type") == OCI_INDEX
        for image in (amd, arm):  # children by digest, then their blobs
            r = proxy("GET", f"/v2/team/multi/manifests/{image.digest}")
            assert r.status == 200 and r.body == image.manifest
            for digest in [image.config_digest, *image.layers]:
                r = proxy("GET", f"/v2/team/multi/blobs/{digest}")
                assert r.status == 200 and r.body == image.blobs[digest]
        tokens = [h for m, p, h in fake.requests if p.startswith("/token")]
        assert tokens and all(h.get("authorization", "").startswith("Basic ") for h in tokens)
        anonymous = make_server("--proxy", f"http://{fake.host}")
        r = anonymous("GET", "/v2/team/multi/manifests/latest")
        assert r.status == 403 and r.codes() == ["DENIED"], r.body
    finally:
        fake.stop()


# -- one fetch for many readers ---------------------------------------------------------------


class GatedRegistry(FakeRegistry):
    """Sends each blob's first half, then the rest once `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def _blob(self, h: BaseHTTPRequestHandler, method: str, digest: str) -> None:
        data = self.blobs[digest]
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Docker-Content-Digest", digest)
        h.end_headers()
        if method == "HEAD":
            return
        half = len(data) // 2
        h.wfile.write(data[:half])
        h.wfile.flush()
        self.gate.wait(timeout=WAIT)
        if digest in self.behaviour.corrupt:
            data = data[:half] + bytes([data[half] ^ 0xFF]) + data[half + 1 :]
        h.wfile.write(data[half:])

    def gets(self, digest: str) -> int:
        return sum(m == "GET" and p.endswith(f"/blobs/{digest}") for m, p, _ in self.requests)


class Reader(threading.Thread):
    """GETs a blob from the proxy: `started` once the first bytes came, then the rest."""

    def __init__(self, proxy: Server, path: str) -> None:
        super().__init__(daemon=True)
        self.proxy = proxy
        self.path = path
        self.started = threading.Event()
        self.status = 0
        self.length = ""
        self.body = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.proxy.host, timeout=WAIT)
        try:
            conn.request("GET", self.path)
            resp = conn.getresponse()
            self.status, self.length = resp.status, resp.getheader("Content-Length") or ""
            self.body = resp.read(1000)
            self.started.set()
            self.body += resp.read()
        except BaseException as err:
            self.error = err
        finally:
            self.started.set()
            conn.close()


def test_concurrent_requests_share_one_streamed_fetch(
    make_server: Callable[..., Server],
) -> None:
    fake = GatedRegistry()
    try:
        blob = os.urandom(3 << 20)
        digest = sha256(blob)
        fake.blobs[digest] = blob
        proxy = make_server("--proxy", f"http://{fake.host}")
        path = f"/v2/some/repo/blobs/{digest}"
        readers = [Reader(proxy, path) for _ in range(4)]
        for reader in readers:
            reader.start()
        # every reader gets bytes while the upstream still holds the second half back
        for reader in readers:
            assert reader.started.wait(WAIT)
            assert reader.error is None and reader.status == 200, reader.error
            assert reader.length == str(len(blob))
        time.sleep(0.2)
        assert all(reader.is_alive() for reader in readers)
        fake.gate.set()
        for reader in readers:
            reader.join(WAIT)
            assert not reader.is_alive() and reader.error is None, reader.error
            assert reader.body == blob
        assert fake.gets(digest) == 1
        again = proxy("GET", path)
        assert again.status == 200 and again.body == blob
        assert fake.gets(digest) == 1  # stored: served from the cache

        # data that doesn't match its digest: the client's body is cut short, nothing is
        # stored, and the next request fetches it again
        bad = os.urandom(1 << 20)
        fake.blobs[sha256(bad)] = bad
        fake.behaviour.corrupt.add(sha256(bad))
        for attempt in (1, 2):
            with pytest.raises(http.client.IncompleteRead):
                proxy("GET", f"/v2/some/repo/blobs/{sha256(bad)}")
            assert fake.gets(sha256(bad)) == attempt
        assert not (proxy.storage / "blobs" / "sha256" / sha256(bad)[7:]).exists()

        # the server stops while a fetch is held up: promptly, the reader cut short
        fake.gate.clear()
        slow = os.urandom(1 << 20)
        fake.blobs[sha256(slow)] = slow
        reader = Reader(proxy, f"/v2/some/repo/blobs/{sha256(slow)}")
        reader.start()
        assert reader.started.wait(WAIT) and reader.status == 200
        began = time.monotonic()
        assert proxy.stop() == 0
        assert time.monotonic() - began < 15
        reader.join(WAIT)
        assert isinstance(reader.error, http.client.IncompleteRead), reader.error
        assert "Traceback" not in proxy.log.read_text()
    finally:
        fake.gate.set()
        fake.stop()


# -- configuration ----------------------------------------------------------------------------


def test_unreachable_upstream_and_names(make_server: Callable[..., Server]) -> None:
    from dockyard.registry.proxy import ProxyUpstream, parse_url

    proxy = make_server("--proxy", f"http://127.0.0.1:{free_port()}")
    r = proxy("GET", "/v2/library/busybox/manifests/latest")
    assert r.status == 503 and r.codes() == ["UNAVAILABLE"], r.body
    assert "connection refused" in r.json()["errors"][0]["message"]
    r = proxy("GET", f"/v2/library/busybox/blobs/{sha256(b'x')}")
    assert r.status == 503 and r.codes() == ["UNAVAILABLE"], r.body
    assert proxy("GET", "/v2/library/busybox/tags/list").codes() == ["NAME_UNKNOWN"]

    hub = ProxyUpstream("https://registry-1.docker.io")
    assert hub.remote("nginx") == "library/nginx"
    assert hub.remote("library/nginx") == "library/nginx"
    assert hub.remote("team/app") == "team/app"
    assert ProxyUpstream("docker.io").client.netloc == "registry-1.docker.io"
    assert ProxyUpstream("127.0.0.1:5000").remote("nginx") == "nginx"
    assert parse_url("http://127.0.0.1:5000/") == ("http", "127.0.0.1:5000")
    assert parse_url("quay.io") == (None, "quay.io")
    for bad in ("ftp://x", "https://", "https://host/path", "http://u@host"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_serve_flag_errors(tmp_path: Path) -> None:
    base = [DOCKYARD, "registry", "serve", "--listen", "127.0.0.1:0", "--storage", str(tmp_path)]
    for flags in (
        ["--proxy", "ftp://registry.example"],
        ["--proxy", "https://registry.example/v2/"],
        ["--proxy", "https://registry.example", "--proxy-username", "u"],
        ["--proxy-username", "u", "--proxy-password", "p"],
    ):
        res = run([*base, *flags], timeout=30)
        assert res.returncode == 1, (flags, res.stdout, res.stderr)
        assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, res.stderr
