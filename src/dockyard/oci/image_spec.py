"""The OCI image specification: media types, chain IDs, config and manifest documents.

Pure functions over plain JSON dicts (what goes into the content store is
exactly what other tools read back: skopeo, podman, docker).
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# GOARCH names, as image configs and platform matching use them.
_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "ppc64le": "ppc64le",
}


def host_architecture() -> str:
    import os

    machine = os.uname().machine
    return _ARCH.get(machine, machine)


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes stored for a JSON document (its digest names it)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def digest_of(data: bytes) -> str:
    import hashlib  # on first use: OpenSSL's costs start-up time

    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(diff_id if not chains else digest_of(f"{chains[-1]} {diff_id}".encode()))
    return chains


def descriptor(media_type: str, data_digest: str, size: int, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"mediaType": media_type, "digest": data_digest, "size": size}
    doc.update(extra)
    return doc


def new_config(
    diff_ids: list[str],
    created: str,
    container_config: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "created": created,
        "architecture": host_architecture(),
        "os": "linux",
        "config": container_config or {},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": history or [],
    }


def new_manifest(
    config: dict[str, Any], layers: list[dict[str, Any]], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config,
        "layers": layers,
    }
    if annotations:
        doc["annotations"] = annotations
    return doc


def rfc3339(ts: float) -> str:
    import time

    frac = f"{ts % 1:.9f}"[1:].rstrip("0").rstrip(".")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + frac + "Z"
