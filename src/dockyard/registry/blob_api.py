"""Blob endpoints: GET/HEAD/DELETE a blob, and uploads (monolithic, chunked, mount).

GET|HEAD  /v2/<name>/blobs/<digest>             200 (206 with Range), sendfile
DELETE    /v2/<name>/blobs/<digest>             202 (405 unless deletes are enabled)
POST      /v2/<name>/blobs/uploads/             202 start; ?digest= monolithic 201;
                                                ?mount=&from= 201 (202 when it can't)
GET       /v2/<name>/blobs/uploads/<id>         204 with Range
PATCH     /v2/<name>/blobs/uploads/<id>         202; Content-Range must continue it (416)
PUT       /v2/<name>/blobs/uploads/<id>?digest= 201 (last chunk may come with it)
DELETE    /v2/<name>/blobs/uploads/<id>         204
"""

from __future__ import annotations

from aiohttp import web

from dockyard.registry.auth import Access
from dockyard.registry.errors import RegistryError
from dockyard.registry.uploads import Upload, range_header

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from dockyard.registry.server import Registry

BLOB_TYPE = "application/octet-stream"


async def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives."""
    async for chunk in request.content.iter_any():
        yield chunk


def _has_body(request: web.Request) -> bool:
    length = request.content_length
    return bool(length) or (length is None and request.body_exists)


def _created(name: str, digest: str) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
        },
    )


def _upload_headers(upload: Upload, offset: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{upload.repo}/blobs/uploads/{upload.id}",
        "Range": range_header(offset),
        "Docker-Upload-UUID": upload.id,
    }


# -- blobs ---------------------------------------------------------------------------------


async def get_blob(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    digest = params["digest"]
    storage = reg.storage
    headers = {
        "Docker-Content-Digest": digest,
        "Content-Type": BLOB_TYPE,
        "Cache-Control": "max-age=31536000",
        "Accept-Ranges": "bytes",
    }
    try:
        path, st = storage.blob(name, digest)
    except RegistryError as err:
        if err.code != "BLOB_UNKNOWN" or reg.upstream is None:
            raise
        response = await reg.upstream.serve_blob(storage, request, name, digest, dict(headers))
        if response is not None:
            return response
        path, st = storage.blob(name, digest)
    if request.method == "HEAD":
        await storage.keep(path, st)  # a pusher is told it exists: keep it from gc
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = st.st_size
        await response.prepare(request)
        return response
    return web.FileResponse(path, headers=headers)


async def delete_blob(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    if not reg.config.delete:
        raise RegistryError("UNSUPPORTED", "deletes are disabled (serve with --delete)")
    reg.storage.delete_blob(name, params["digest"])
    return web.Response(status=202)


# -- uploads -------------------------------------------------------------------------------


async def start_upload(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    storage = reg.storage
    query = request.query
    mount = query.get("mount")
    if mount is not None:
        source = query.get("from")
        allowed = source is None or await reg.allowed(
            request, [Access("repository", source, ("pull",))]
        )
        if allowed and await storage.mount(name, mount, source):
            return _created(name, mount)
    digest = query.get("digest")
    if digest is not None and mount is None:
        await storage.put_blob(name, digest, body_chunks(request), request.content_length)
        return _created(name, digest)
    upload = storage.uploads.start(name)
    return web.Response(status=202, headers=_upload_headers(upload, 0))


def _content_range(value: str) -> tuple[int, int]:
    """`<start>-<end>` (also `bytes <start>-<end>[/<size>]`) of a chunk."""
    text = value.strip()
    if text.startswith("bytes"):
        text = text[5:].lstrip(" =")
    text = text.split("/", 1)[0]
    start, sep, end = text.partition("-")
    try:
        first, last = int(start), int(end)
    except ValueError:
        first, last = -1, -1
    if not sep or first < 0 or last < first:
        raise RegistryError("RANGE_INVALID", f"invalid Content-Range {value[:100]!r}", status=416)
    return first, last


async def _append(reg: Registry, request: web.Request, upload: Upload) -> int:
    """Append the request body to `upload`, checking its Content-Range; the new offset."""
    start: int | None = None
    length = request.content_length
    header = request.headers.get("Content-Range")
    if header:
        start, end = _content_range(header)
        if length is not None and length != end - start + 1:
            raise RegistryError(
                "RANGE_INVALID",
                f"Content-Range {header[:100]!r} is not the {length} bytes sent",
                status=416,
                headers={"Range": range_header(upload.size())},
            )
        length = end - start + 1
    try:
        return await reg.storage.uploads.append(upload, body_chunks(request), start, length)
    except RegistryError as err:
        if err.status == 416:
            err.headers.update(_upload_headers(upload, upload.size()))
        raise


async def patch_upload(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    upload = reg.storage.uploads.get(name, params["uuid"])
    offset = await _append(reg, request, upload)
    return web.Response(status=202, headers=_upload_headers(upload, offset))


async def finish_upload(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    upload = reg.storage.uploads.get(name, params["uuid"])
    digest = request.query.get("digest")
    if not digest:
        raise RegistryError("DIGEST_INVALID", "the upload's PUT needs ?digest=")
    if _has_body(request):
        await _append(reg, request, upload)
    await reg.storage.finish_upload(upload, digest)
    return _created(name, digest)


async def upload_status(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    upload = reg.storage.uploads.get(name, params["uuid"])
    return web.Response(status=204, headers=_upload_headers(upload, upload.size()))


async def cancel_upload(
    reg: Registry, request: web.Request, name: str, params: dict[str, str]
) -> web.StreamResponse:
    upload = reg.storage.uploads.get(name, params["uuid"])
    reg.storage.uploads.remove(upload)
    return web.Response(status=204)
