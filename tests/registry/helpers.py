"""Helpers for the registry server tests: a server in a subprocess, raw HTTP, OCI layouts.

Every server is started with `--listen 127.0.0.1:0` on a temp storage directory,
found by the address it prints, and stopped with SIGTERM (then SIGKILL) by its pid.
Every HTTP call has a timeout.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import select
import signal
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
DOCKYARD = str(VENV_BIN / "dockyard")
TIMEOUT = 30.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


# -- HTTP ------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)

    def codes(self) -> list[str]:
        """The spec error codes of an error body."""
        return [e["code"] for e in self.json()["errors"]]


def request(
    method: str,
    url: str,
    body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = TIMEOUT,
) -> Response:
    """One HTTP request on a fresh connection; an iterator body goes chunked."""
    parts = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, bytes | bytearray):
            conn.request(method, path, body=body, headers=hdrs, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


# -- a server in a subprocess ---------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    storage: Path
    log: Path
    context: ssl.SSLContext | None = None
    host: str = field(init=False)

    def __post_init__(self) -> None:
        self.host = urllib.parse.urlsplit(self.url).netloc

    def __call__(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        target = path if path.startswith("http") else self.url + path
        return request(method, target, body, headers, self.context)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        return self.proc.returncode


def start_server(storage: Path, *flags: str, context: ssl.SSLContext | None = None) -> Server:
    """`dockyard registry serve --listen 127.0.0.1:0 --storage STORAGE FLAGS…`, ready."""
    log = storage.parent / f"{storage.name}-server.log"
    err = open(log, "wb")  # noqa: SIM115 - the child keeps it; closed below
    proc = subprocess.Popen(
        [
            DOCKYARD,
            "registry",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--storage",
            str(storage),
            *list(flags),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=err,
    )
    err.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + TIMEOUT
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
        elif proc.poll() is not None:
            break
    match = re.search(rb"listening on (https?://[0-9.]+:[0-9]+)", line)
    if match is None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=15)
        raise AssertionError(f"server did not start: {line!r}\n{log.read_text()}")
    return Server(proc, match.group(1).decode(), storage, log, context)


# -- pushing by hand --------------------------------------------------------------------------


def push_blob(server: Server, repo: str, data: bytes) -> str:
    digest = sha256(data)
    r = server("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data)
    assert r.status == 201, (r.status, r.body)
    return digest


def image_manifest(
    config: bytes, layers: list[bytes], media_type: str = OCI_MANIFEST, **extra: Any
) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    doc.update(extra)
    return json.dumps(doc).encode()


def push_image(
    server: Server, repo: str, tag: str, layers: list[bytes], config: bytes | None = None
) -> str:
    """Push blobs and a manifest; the manifest's digest."""
    config = config or json.dumps({"os": "linux", "architecture": "amd64", "tag": tag}).encode()
    for blob in [config, *layers]:
        push_blob(server, repo, blob)
    manifest = image_manifest(config, layers)
    r = server("PUT", f"/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST})
    assert r.status == 201, (r.status, r.body)
    return sha256(manifest)


# -- OCI layouts ------------------------------------------------------------------------------


def oci_layout(dest: Path, layers: list[bytes], tag: str = "latest") -> str:
    """An OCI image layout at `dest` with gzipped `layers` (tar bytes); its manifest digest."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> tuple[str, int]:
        digest = sha256(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest, len(data)

    descriptors = []
    diff_ids = []
    for raw in layers:
        digest, size = put(gzip.compress(raw, mtime=0))
        descriptors.append({"mediaType": OCI_LAYER, "digest": digest, "size": size})
        diff_ids.append(sha256(raw))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_digest, config_size = put(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": descriptors,
        }
    ).encode()
    manifest_digest, manifest_size = put(manifest)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    return manifest_digest


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a peer tool; output captured as text, never longer than `timeout`."""
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
