"""The push half of the distribution API, over a `RegistryClient`.

A blob goes up as the spec allows: `POST …/blobs/uploads/` (with `?mount=&from=`
it may instead be mounted from another repository of the same registry: 201),
then either one `PUT <location>?digest=` carrying the whole blob (monolithic) or
`PATCH` chunks with `Content-Range` and an empty closing `PUT`. The registry
verifies the digest. A manifest is `PUT` last, under its tag.
"""

from __future__ import annotations

from dockyard.registry.client_errors import RegistryProtocolError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.registry.client import RegistryClient
    from dockyard.registry.client_http import Body


def _scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def put_manifest(
    client: RegistryClient, repository: str, reference: str, data: bytes, media_type: str
) -> str:
    """PUT a manifest under a tag (or digest); returns its digest."""
    resp = client.request(
        "PUT",
        f"/v2/{repository}/manifests/{reference}",
        _scope(repository),
        {"Content-Type": media_type, "Content-Length": str(len(data))},
        data,
    )
    if resp.status not in (200, 201, 202):
        raise client.fail(resp, f"pushing the manifest of {client.host}/{repository}:{reference}")
    resp.release()
    from dockyard.oci.digest import from_bytes

    return resp.header("Docker-Content-Digest") or from_bytes(data)


def start_upload(
    client: RegistryClient, repository: str, digest: str = "", mount_from: str = ""
) -> tuple[bool, str]:
    """POST an upload: (True, "") when the blob was mounted from `mount_from`,
    else (False, the upload's location)."""
    from urllib.parse import urlencode, urljoin

    path = f"/v2/{repository}/blobs/uploads/"
    scope = _scope(repository)
    if mount_from:
        path += "?" + urlencode({"mount": digest, "from": mount_from})
        scope += f" repository:{mount_from}:pull"
    resp = client.request("POST", path, scope, {"Content-Length": "0"}, b"")
    if resp.status == 201 and mount_from:
        resp.release()
        return True, ""
    if resp.status != 202:
        raise client.fail(resp, f"starting an upload to {client.host}/{repository}")
    resp.release()
    location = resp.header("Location")
    if not location:
        raise RegistryProtocolError(f"{client.host} started an upload without a Location")
    return False, urljoin(resp.url, location)


def upload_chunk(
    client: RegistryClient, repository: str, location: str, body: Body, start: int, length: int
) -> str:
    """PATCH one chunk (Content-Range start-end); returns the next location."""
    from urllib.parse import urljoin

    resp = client.request(
        "PATCH",
        location,
        _scope(repository),
        {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            "Content-Range": f"{start}-{start + length - 1}",
        },
        body,
    )
    if resp.status != 202:
        raise client.fail(resp, f"uploading to {client.host}/{repository}")
    resp.release()
    return urljoin(resp.url, resp.header("Location") or location)


def finish_upload(
    client: RegistryClient,
    repository: str,
    location: str,
    digest: str,
    body: Body = b"",
    length: int = 0,
) -> None:
    """PUT …?digest=: the last (or only, monolithic) piece; the registry verifies it."""
    sep = "&" if "?" in location else "?"
    resp = client.request(
        "PUT",
        f"{location}{sep}digest={digest}",
        _scope(repository),
        {"Content-Type": "application/octet-stream", "Content-Length": str(length)},
        body,
    )
    if resp.status not in (201, 204):
        raise client.fail(resp, f"uploading blob {digest} to {client.host}/{repository}")
    resp.release()
