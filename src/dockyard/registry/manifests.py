"""Manifests as a registry sees them: which kind, what they need, what they refer to. Pure.

A pushed manifest is parsed once: its media type (the `mediaType` field, else the
`Content-Type` it came with, else its shape), the blobs it needs (config and
layers), the manifests it needs (an index's children), its `subject` and its
artifact type (for the referrers API).
"""

from __future__ import annotations

import json

from dockyard.oci import digest as _digest
from dockyard.registry.errors import RegistryError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (*IMAGE_TYPES, *INDEX_TYPES)

MAX_MANIFEST_SIZE = 4 << 20
"""The largest manifest accepted (the spec asks registries to take at least 4 MiB)."""


class Parsed:
    """What the registry keeps of a manifest."""

    __slots__ = ("annotations", "artifact_type", "blobs", "manifests", "media_type", "subject")

    def __init__(
        self,
        media_type: str,
        blobs: list[str],
        manifests: list[str],
        subject: str | None,
        artifact_type: str | None,
        annotations: dict[str, str] | None,
    ) -> None:
        self.media_type = media_type
        self.blobs = blobs
        self.manifests = manifests
        self.subject = subject
        self.artifact_type = artifact_type
        self.annotations = annotations

    def refs(self) -> list[tuple[str, str]]:
        """(digest, kind) of everything it needs, kind `blob` or `manifest`."""
        return [(d, "blob") for d in self.blobs] + [(d, "manifest") for d in self.manifests]


def _invalid(message: str) -> RegistryError:
    return RegistryError("MANIFEST_INVALID", message, {"reason": message})


def _descriptor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not a descriptor object")
    digest = value.get("digest")
    if not isinstance(digest, str) or not _digest.is_valid(digest):
        raise _invalid(f"{where} has an invalid digest {str(digest)[:200]!r}")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where} has an invalid size {size!r}")
    media_type = value.get("mediaType")
    if media_type is not None and not isinstance(media_type, str):
        raise _invalid(f"{where} has an invalid mediaType")
    return value


def _descriptors(doc: dict[str, Any], key: str, required: bool) -> list[dict[str, Any]]:
    value = doc.get(key)
    if value is None:
        if required:
            raise _invalid(f"the manifest has no {key!r} list")
        return []
    if not isinstance(value, list):
        raise _invalid(f"{key!r} is not a list")
    return [_descriptor(v, f"{key}[{i}]") for i, v in enumerate(value)]


def _media_type(doc: dict[str, Any], content_type: str | None) -> str:
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType is not a string")
    header = (content_type or "").split(";", 1)[0].strip().lower()
    if declared in SCHEMA1 or header in SCHEMA1 or doc.get("schemaVersion") == 1:
        raise _invalid("schema 1 manifests are not supported: push a schema 2 or OCI manifest")
    if declared and header in MANIFEST_TYPES and header != declared:
        raise _invalid(f"mediaType {declared!r} does not match the Content-Type {header!r}")
    if declared:
        return declared
    if header in MANIFEST_TYPES:
        return header
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc or "layers" in doc:
        return OCI_MANIFEST
    raise _invalid("cannot tell what kind of manifest this is: give it a mediaType")


def parse(body: bytes, content_type: str | None) -> Parsed:
    """Parse and check a pushed manifest; MANIFEST_INVALID says what is wrong."""
    if len(body) > MAX_MANIFEST_SIZE:
        raise RegistryError(
            "SIZE_INVALID", f"manifest is larger than {MAX_MANIFEST_SIZE} bytes", status=413
        )
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise _invalid(f"the manifest is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _invalid("the manifest is not a JSON object")
    media_type = _media_type(doc, content_type)
    if doc.get("schemaVersion") != 2:
        raise _invalid(f"schemaVersion must be 2, not {doc.get('schemaVersion')!r}")
    subject = None
    if doc.get("subject") is not None:
        subject = _descriptor(doc["subject"], "subject")["digest"]
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType is not a string")
    annotations = doc.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    ):
        raise _invalid("annotations must map strings to strings")
    if media_type in INDEX_TYPES or ("manifests" in doc and media_type not in IMAGE_TYPES):
        children = _descriptors(doc, "manifests", required=True)
        return Parsed(
            media_type,
            [],
            _unique(c["digest"] for c in children),
            subject,
            artifact_type,
            annotations,
        )
    config = _descriptor(doc.get("config"), "config")
    layers = _descriptors(doc, "layers", required=media_type == DOCKER_MANIFEST)
    blobs = [config["digest"]]
    # Foreign layers (with `urls`) are fetched from elsewhere and never pushed.
    blobs += [layer["digest"] for layer in layers if not layer.get("urls")]
    if artifact_type is None:
        artifact_type = config.get("mediaType")
    return Parsed(media_type, _unique(blobs), [], subject, artifact_type, annotations)


def _unique(digests: Any) -> list[str]:
    return list(dict.fromkeys(digests))
