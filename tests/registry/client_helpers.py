"""Helpers for the registry client tests: the reference registry (distribution's
`docker-registry`) in a subprocess, a small fake registry in a thread whose
misbehaviour a test chooses, and images built in memory.

Every server listens on 127.0.0.1 with a port of its own, has a timeout on its
waits, and is stopped (the subprocess killed by its pid) by the fixture that made it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REGISTRY_BINARY = "/usr/bin/docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "plain": "application/vnd.oci.image.layer.v1.tar",
    "docker": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ images in memory


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(raw: bytes, kind: str) -> bytes:
    if kind in ("gzip", "docker"):
        return gzip.compress(raw, 1, mtime=0)
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(raw)
    return raw


@dataclass
class Image:
    """One image's blobs and manifest, as a registry would hold them."""

    manifest: bytes
    manifest_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def layers(self) -> list[str]:
        return [str(layer["digest"]) for layer in json.loads(self.manifest)["layers"]]

    @property
    def config_digest(self) -> str:
        return str(json.loads(self.manifest)["config"]["digest"])


def make_image(
    layers: list[bytes],
    kinds: list[str] | None = None,
    arch: str = "amd64",
    variant: str = "",
    docker: bool = False,
    cmd: list[str] | None = None,
) -> Image:
    """An image of these uncompressed layer tars (each compressed as `kinds` say)."""
    kinds = kinds or ["gzip"] * len(layers)
    blobs: dict[str, bytes] = {}
    descriptors = []
    for raw, kind in zip(layers, kinds, strict=True):
        data = compress(raw, kind)
        blobs[sha256(data)] = data
        media = LAYER_TYPES["docker" if docker and kind == "gzip" else kind]
        descriptors.append({"mediaType": media, "digest": sha256(data), "size": len(data)})
    config: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": cmd or ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(raw) for raw in layers]},
        "history": [{"created_by": "test"} for _ in layers],
    }
    if variant:
        config["variant"] = variant
    config_bytes = json.dumps(config).encode()
    blobs[sha256(config_bytes)] = config_bytes
    media = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "digest": sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": descriptors,
    }
    return Image(json.dumps(manifest, indent=2).encode(), media, blobs, config)


def make_index(images: list[Image], docker: bool = False) -> tuple[bytes, str]:
    entries = []
    for image in images:
        platform = {"architecture": image.config["architecture"], "os": "linux"}
        if image.config.get("variant"):
            platform["variant"] = image.config["variant"]
        entries.append(
            {
                "mediaType": image.manifest_type,
                "digest": image.digest,
                "size": len(image.manifest),
                "platform": platform,
            }
        )
    media = DOCKER_LIST if docker else OCI_INDEX
    return json.dumps(
        {"schemaVersion": 2, "mediaType": media, "manifests": entries}
    ).encode(), media


def write_layout(
    path: Path, manifests: dict[str, tuple[bytes, str]], blobs: dict[str, bytes]
) -> None:
    """An OCI image layout: `manifests` tag -> (bytes, media type) (what skopeo copies)."""
    (path / "blobs" / "sha256").mkdir(parents=True)
    every = dict(blobs)
    entries = []
    for tag, (data, media) in manifests.items():
        every[sha256(data)] = data
        entries.append(
            {
                "mediaType": media,
                "digest": sha256(data),
                "size": len(data),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        )
    for digest, data in every.items():
        (path / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


# ------------------------------------------------------------------ the reference registry


class ReferenceRegistry:
    """`docker-registry serve` on 127.0.0.1:<free port>, storage under `base`."""

    def __init__(self, base: Path, htpasswd: Path | None = None, host: str = "127.0.0.1") -> None:
        self.base = base
        self.port = free_port()
        self.host = f"{host}:{self.port}"
        base.mkdir(parents=True, exist_ok=True)
        auth = ""
        if htpasswd is not None:
            auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {htpasswd}\n"
        config = base / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n"
            f"  delete:\n    enabled: true\nhttp:\n  addr: {self.host}\n{auth}"
        )
        self.log_path = base / "registry.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # REGISTRY_* variables override its configuration (REGISTRY_AUTH_FILE among them)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.proc = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            env=env,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # 401 with auth on: it answers
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"docker-registry did not start: {self.log_path.read_text()}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


def htpasswd_file(path: Path, user: str, password: str) -> Path:
    out = subprocess.run(
        ["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True, timeout=30
    )
    path.write_text(out.stdout)
    return path


# ------------------------------------------------------------------ a fake registry


@dataclass
class Behaviour:
    """How the fake registry misbehaves (a test sets these)."""

    cut_once: set[str] = field(default_factory=set)  # blobs whose first GET is cut mid-way
    cut_always: set[str] = field(default_factory=set)  # blobs never sent whole
    corrupt: set[str] = field(default_factory=set)  # blobs whose bytes are wrong
    ignore_range: bool = False
    token_auth: bool = False  # Bearer tokens from /token (Docker Hub's flow)
    basic_auth: bool = False
    users: dict[str, str] = field(default_factory=dict)  # for either auth
    anonymous_pull: bool = True  # tokens without credentials may pull


class FakeRegistry:
    """A registry in a thread that serves `manifests` and `blobs` of any repository."""

    TOKEN = "good-token"

    def __init__(self) -> None:
        self.manifests: dict[str, tuple[bytes, str]] = {}  # "repo:ref" -> (bytes, type)
        self.blobs: dict[str, bytes] = {}
        self.behaviour = Behaviour()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.cut_done: set[str] = set()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                registry.handle(self, "GET")

            def do_HEAD(self) -> None:
                registry.handle(self, "HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def add(self, repo: str, tag: str, image: Image) -> None:
        self.manifests[f"{repo}:{tag}"] = (image.manifest, image.manifest_type)
        self.manifests[f"{repo}:{image.digest}"] = (image.manifest, image.manifest_type)
        self.blobs.update(image.blobs)

    def add_index(self, repo: str, tag: str, images: list[Image], docker: bool = False) -> str:
        data, media = make_index(images, docker)
        self.manifests[f"{repo}:{tag}"] = (data, media)
        for image in images:
            self.manifests[f"{repo}:{image.digest}"] = (image.manifest, image.manifest_type)
            self.blobs.update(image.blobs)
        return sha256(data)

    # -- serving

    def _reply(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        method: str = "GET",
    ) -> None:
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(body)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        headers = {"Content-Type": "application/json"}
        if status == 401:
            b = self.behaviour
            if b.token_auth:
                realm = f"http://{self.host}/token"
                headers["WWW-Authenticate"] = f'Bearer realm="{realm}",service="fake"'
            else:
                headers["WWW-Authenticate"] = 'Basic realm="fake"'
        self._reply(h, status, body, headers)

    def _authorized(self, h: BaseHTTPRequestHandler) -> bool:
        b = self.behaviour
        given = h.headers.get("Authorization", "")
        if b.token_auth:
            return given == f"Bearer {self.TOKEN}"
        if b.basic_auth:
            return given in {
                "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()
                for u, p in b.users.items()
            }
        return True

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?")[0]
        self.requests.append((method, h.path, {k.lower(): v for k, v in h.headers.items()}))
        if path == "/token":
            return self._token(h)
        if not self._authorized(h):
            return self._error(h, 401, "UNAUTHORIZED", "authentication required")
        if path == "/v2/":
            return self._reply(h, 200, b"{}", method=method)
        if "/manifests/" in path:
            repo, ref = path[len("/v2/") :].split("/manifests/")
            found = self.manifests.get(f"{repo}:{ref}")
            if found is None:
                return self._error(h, 404, "MANIFEST_UNKNOWN", "manifest unknown")
            data, media = found
            headers = {"Content-Type": media, "Docker-Content-Digest": sha256(data)}
            return self._reply(h, 200, data, headers, method)
        if "/blobs/" in path:
            digest = path.rsplit("/", 1)[1]
            if digest not in self.blobs:
                return self._error(h, 404, "BLOB_UNKNOWN", "blob unknown to registry")
            return self._blob(h, method, digest)
        return self._error(h, 404, "NAME_UNKNOWN", "repository name not known to registry")

    def _token(self, h: BaseHTTPRequestHandler) -> None:
        b = self.behaviour
        given = h.headers.get("Authorization", "")
        if given:
            user, _, password = base64.b64decode(given.split(" ", 1)[1]).decode().partition(":")
            if b.users.get(user) != password:
                return self._reply(h, 401, b'{"details":"incorrect username or password"}')
        elif not b.anonymous_pull:
            return self._reply(h, 401, b'{"details":"authentication required"}')
        body = json.dumps({"token": self.TOKEN, "expires_in": 300}).encode()
        return self._reply(h, 200, body, {"Content-Type": "application/json"})

    def _blob(self, h: BaseHTTPRequestHandler, method: str, digest: str) -> None:
        b = self.behaviour
        data = self.blobs[digest]
        if digest in b.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        ranged = h.headers.get("Range", "")
        if ranged.startswith("bytes=") and not b.ignore_range:
            start = int(ranged[len("bytes=") :].split("-")[0])
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Docker-Content-Digest", digest)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if method == "HEAD":
            return
        if digest in b.cut_always:  # never a byte past the middle of the blob
            h.wfile.write(body[: max(0, len(data) // 2 - start)])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if digest in b.cut_once and digest not in self.cut_done:
            self.cut_done.add(digest)
            h.wfile.write(body[: max(1, len(body) // 2)])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(body)

    def ranges(self, digest: str) -> list[str]:
        """The Range headers of the GETs of blob `digest`, in order ("" for none)."""
        return [
            headers.get("range", "")
            for method, path, headers in self.requests
            if method == "GET" and path.endswith(f"/blobs/{digest}")
        ]


def busybox_layer(rootfs_tar: Path) -> bytes:
    return rootfs_tar.read_bytes()


def env_without_registry_settings() -> dict[str, str]:
    """The environment for a CLI run that reads only the files a test gives it."""
    env = dict(os.environ)
    for name in ("REGISTRY_AUTH_FILE", "DOCKYARD_REGISTRIES_CONF", "XDG_RUNTIME_DIR"):
        env.pop(name, None)
    return env


def isolate_registry_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own registries.conf (empty until written), auth.json and HOME."""
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    monkeypatch.setenv("DOCKYARD_REGISTRIES_CONF", str(conf))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return conf
