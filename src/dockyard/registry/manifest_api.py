"""Manifest, tag, catalog and referrers endpoints.

GET|HEAD  /v2/<name>/manifests/<ref>      stored bytes, media type and digest
PUT       /v2/<name>/manifests/<ref>      201; every blob / child manifest must exist;
                                          `OCI-Subject` when it has a subject;
                                          `?tag=` adds tags to a push by digest
DELETE    /v2/<name>/manifests/<ref>      202: a tag, or a manifest and its tags
GET       /v2/<name>/tags/list            ?n=&last=, `Link: <…>; rel="next"`
GET       /v2/_catalog                    ?n=&last= (100 a page by default)
GET       /v2/<name>/referrers/<digest>   an OCI index; ?artifactType= filters
"""

from __future__ import annotations

import json
import urllib.parse

from aiohttp import web

from dockyard.registry import manifests, names
from dockyard.registry.errors import RegistryError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.registry.metadata import ManifestRow
    from dockyard.registry.server import Registry

CATALOG_PAGE = 100
CATALOG_MAX = 1000


async def get_manifest(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    reference = params["reference"]
    storage = reg.storage
    row = await _resolve(reg, name, reference) if reg.upstream else storage.resolve(name, reference)
    headers = {
        "Docker-Content-Digest": row.digest,
        "Content-Type": row.media_type,
        "ETag": f'"{row.digest}"',
    }
    if request.method == "HEAD":
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = row.size
        await response.prepare(request)
        return response
    try:
        with open(storage.manifest_path(row), "rb") as f:
            body = f.read()
    except FileNotFoundError:
        raise RegistryError("MANIFEST_UNKNOWN", detail={"reference": reference}) from None
    return web.Response(body=body, headers=headers)


async def _resolve(reg: Registry, name: str, reference: str) -> ManifestRow:
    """A pull-through cache's manifest: a tag as the upstream has it now (the cached
    one when the upstream can't say), a digest from storage or else the upstream."""
    assert reg.upstream is not None
    storage = reg.storage
    names.check_reference(reference)
    failed: RegistryError | None = None
    if not names.is_digest(reference):
        try:
            await reg.upstream.fetch_manifest(storage, name, reference)
        except RegistryError as err:
            failed = err
    try:
        return storage.resolve(name, reference)
    except RegistryError as err:
        if err.code not in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"):
            raise
        if failed is not None:
            raise failed from None
        if not names.is_digest(reference):
            raise RegistryError("MANIFEST_UNKNOWN", detail={"reference": reference}) from None
    if not await reg.upstream.fetch_manifest(storage, name, reference):
        raise RegistryError("MANIFEST_UNKNOWN", detail={"reference": reference})
    return storage.resolve(name, reference)


async def _read_manifest(request: web.Request) -> bytes:
    limit = manifests.MAX_MANIFEST_SIZE
    if request.content_length is not None and request.content_length > limit:
        raise RegistryError("SIZE_INVALID", f"manifest is larger than {limit} bytes", status=413)
    parts = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise RegistryError(
                "SIZE_INVALID", f"manifest is larger than {limit} bytes", status=413
            )
        parts.append(chunk)
    return b"".join(parts)


async def put_manifest(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    body = await _read_manifest(request)
    digest, parsed = await reg.storage.put_manifest(
        name,
        params["reference"],
        body,
        request.headers.get("Content-Type"),
        request.query.getall("tag", []),
    )
    headers = {
        "Location": f"/v2/{name}/manifests/{digest}",
        "Docker-Content-Digest": digest,
    }
    if parsed.subject:
        headers["OCI-Subject"] = parsed.subject
    return web.Response(status=201, headers=headers)


async def delete_manifest(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    if not reg.config.delete:
        raise RegistryError("UNSUPPORTED", "deletes are disabled (serve with --delete)")
    reg.storage.delete_manifest(name, params["reference"])
    return web.Response(status=202)


# -- listings ------------------------------------------------------------------------------


def _page_size(request: web.Request, default: int | None, most: int | None) -> int | None:
    value = request.query.get("n")
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise RegistryError("PAGINATION_NUMBER_INVALID", f"invalid n={value[:20]!r}")
    return min(n, most) if most is not None else n


def _next_link(path: str, n: int, last: str) -> str:
    query = urllib.parse.urlencode({"n": n, "last": last})
    return f'<{path}?{query}>; rel="next"'


async def list_tags(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    n = _page_size(request, None, None)
    last = request.query.get("last", "")
    upstream = await reg.upstream.tags(name) if reg.upstream else None
    if n == 0:
        if upstream is None:
            reg.storage.tags(name, last, 0)  # NAME_UNKNOWN still applies
        return web.json_response({"name": name, "tags": []})
    if upstream is not None:  # a pull-through cache lists the upstream's tags
        found = sorted(t for t in upstream if t > last)[: None if n is None else n + 1]
    else:
        found = reg.storage.tags(name, last, -1 if n is None else n + 1)
    headers = {}
    if n is not None and len(found) > n:
        found = found[:n]
        headers["Link"] = _next_link(f"/v2/{name}/tags/list", n, found[-1])
    return web.json_response({"name": name, "tags": found}, headers=headers)


async def catalog(reg: Registry, request: web.Request) -> web.StreamResponse:
    n = _page_size(request, CATALOG_PAGE, CATALOG_MAX)
    assert n is not None
    last = request.query.get("last", "")
    if n == 0:
        return web.json_response({"repositories": []})
    found = reg.storage.meta.repositories(last, n + 1)
    headers = {}
    if len(found) > n:
        found = found[:n]
        headers["Link"] = _next_link("/v2/_catalog", n, found[-1])
    return web.json_response({"repositories": found}, headers=headers)


def _descriptor(row: ManifestRow) -> dict[str, object]:
    entry: dict[str, object] = {
        "mediaType": row.media_type,
        "digest": row.digest,
        "size": row.size,
    }
    if row.artifact_type:
        entry["artifactType"] = row.artifact_type
    if row.annotations:
        entry["annotations"] = json.loads(row.annotations)
    return entry


async def referrers(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    artifact_type = request.query.get("artifactType")
    rows = reg.storage.referrers(name, params["digest"], artifact_type)
    index = {
        "schemaVersion": 2,
        "mediaType": manifests.OCI_INDEX,
        "manifests": [_descriptor(r) for r in rows],
    }
    headers = {}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    return web.Response(
        body=json.dumps(index).encode(),
        headers={"Content-Type": manifests.OCI_INDEX, **headers},
    )
