"""The registry server's base and blob endpoints over raw HTTP: reads, uploads, mounts."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

from tests.registry.helpers import Server, push_blob, sha256, sha512


def test_base_endpoint(server: Server) -> None:
    r = server("GET", "/v2/")
    assert r.status == 200
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert r.json() == {}
    assert server("HEAD", "/v2/").status == 200
    assert server("GET", "/v2").status == 200


def test_blob_get_head_and_range(server: Server) -> None:
    data = os.urandom(100_000)
    digest = push_blob(server, "library/nginx", data)
    r = server("GET", f"/v2/library/nginx/blobs/{digest}")
    assert r.status == 200
    assert r.body == data
    assert r.header("Docker-Content-Digest") == digest
    assert r.header("Content-Length") == str(len(data))
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    h = server("HEAD", f"/v2/library/nginx/blobs/{digest}")
    assert (h.status, h.body, h.header("Content-Length")) == (200, b"", str(len(data)))
    assert h.header("Docker-Content-Digest") == digest
    part = server("GET", f"/v2/library/nginx/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert part.status == 206
    assert part.body == data[10:20]
    assert part.header("Content-Range") == f"bytes 10-19/{len(data)}"
    tail = server("GET", f"/v2/library/nginx/blobs/{digest}", headers={"Range": "bytes=99990-"})
    assert (tail.status, tail.body) == (206, data[99990:])
    bad = server("GET", f"/v2/library/nginx/blobs/{digest}", headers={"Range": "bytes=200000-"})
    assert bad.status == 416


def test_blob_unknown_and_not_linked(server: Server) -> None:
    digest = push_blob(server, "a/b/c", b"only in a/b/c")
    assert server("GET", f"/v2/a/b/c/blobs/{digest}").body == b"only in a/b/c"
    for repo, blob in (("a/b/c", sha256(b"never pushed")), ("elsewhere", digest)):
        r = server("GET", f"/v2/{repo}/blobs/{blob}")
        assert (r.status, r.codes()) == (404, ["BLOB_UNKNOWN"])
        assert server("HEAD", f"/v2/{repo}/blobs/{blob}").status == 404


def test_invalid_name_and_digest(server: Server) -> None:
    r = server("GET", f"/v2/Upper/Case/blobs/{sha256(b'x')}")
    assert (r.status, r.codes()) == (400, ["NAME_INVALID"])
    r = server("GET", "/v2/repo/blobs/sha256:abc")
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])
    r = server("GET", "/v2/repo/blobs/md5:" + "0" * 32)
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])


def test_monolithic_post_digest_mismatch(server: Server) -> None:
    wrong = sha256(b"something else")
    r = server("POST", f"/v2/mono/blobs/uploads/?digest={wrong}", b"payload")
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])
    assert server("HEAD", f"/v2/mono/blobs/{wrong}").status == 404
    assert server("HEAD", f"/v2/mono/blobs/{sha256(b'payload')}").status == 404


def test_post_then_put(server: Server) -> None:
    r = server("POST", "/v2/postput/blobs/uploads/")
    assert r.status == 202
    location = r.header("Location")
    assert location is not None and location.startswith("/v2/postput/blobs/uploads/")
    assert r.header("Docker-Upload-UUID") == location.rsplit("/", 1)[1]
    assert r.header("Range") == "0-0"
    data = os.urandom(5000)
    r = server("PUT", f"{location}?digest={sha256(data)}", data)
    assert r.status == 201, r.body
    assert r.header("Location") == f"/v2/postput/blobs/{sha256(data)}"
    assert r.header("Docker-Content-Digest") == sha256(data)
    assert server("GET", f"/v2/postput/blobs/{sha256(data)}").body == data
    # the upload is gone once committed
    again = server("PUT", f"{location}?digest={sha256(data)}", b"")
    assert (again.status, again.codes()) == (404, ["BLOB_UPLOAD_UNKNOWN"])


def test_chunked_upload_with_content_range(server: Server) -> None:
    data = os.urandom(300_000)
    chunks = [data[:100_000], data[100_000:250_000], data[250_000:]]
    location = server("POST", "/v2/chunked/blobs/uploads/").header("Location")
    assert location is not None
    offset = 0
    for chunk in chunks[:2]:
        end = offset + len(chunk) - 1
        r = server(
            "PATCH",
            location,
            chunk,
            {"Content-Range": f"{offset}-{end}", "Content-Type": "application/octet-stream"},
        )
        assert r.status == 202, r.body
        assert r.header("Range") == f"0-{end}"
        assert r.header("Content-Length") == "0"
        location = r.header("Location") or location
        offset = end + 1
    status = server("GET", location)
    assert (status.status, status.header("Range")) == (204, f"0-{offset - 1}")
    # out of order: a chunk that does not continue the upload
    r = server("PATCH", location, b"xx", {"Content-Range": "5-6"})
    assert r.status == 416
    assert r.header("Range") == f"0-{offset - 1}"
    assert r.codes() == ["RANGE_INVALID"]
    # a Content-Range that does not match the bytes sent
    r = server("PATCH", location, b"xyz", {"Content-Range": f"{offset}-{offset + 9}"})
    assert r.status == 416
    # the last chunk comes with the PUT
    last = chunks[2]
    r = server(
        "PUT",
        f"{location}?digest={sha256(data)}",
        last,
        {"Content-Range": f"{offset}-{offset + len(last) - 1}"},
    )
    assert r.status == 201, r.body
    assert server("GET", f"/v2/chunked/blobs/{sha256(data)}").body == data


def test_streamed_patch_without_range(server: Server) -> None:
    """docker/skopeo style: one PATCH with a chunked body, then PUT ?digest=."""
    data = os.urandom(2_000_000)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(data), 65_536):
            yield data[i : i + 65_536]

    location = server("POST", "/v2/streamed/blobs/uploads/").header("Location")
    assert location is not None
    r = server("PATCH", location, pieces())
    assert (r.status, r.header("Range")) == (202, f"0-{len(data) - 1}")
    r = server("PUT", f"{location}?digest={sha256(data)}")
    assert r.status == 201, r.body
    assert server("GET", f"/v2/streamed/blobs/{sha256(data)}").body == data


def test_upload_digest_mismatch_and_missing_digest(server: Server) -> None:
    location = server("POST", "/v2/mismatch/blobs/uploads/").header("Location")
    assert location is not None
    assert server("PATCH", location, b"abc").status == 202
    r = server("PUT", location)
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])
    r = server("PUT", f"{location}?digest={sha256(b'abd')}")
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])
    assert server("HEAD", f"/v2/mismatch/blobs/{sha256(b'abc')}").status == 404


def test_upload_status_cancel_unknown(server: Server) -> None:
    location = server("POST", "/v2/cancel/blobs/uploads/").header("Location")
    assert location is not None
    assert server("DELETE", location).status == 204
    for method in ("GET", "PATCH", "DELETE"):
        r = server(method, location, b"" if method == "PATCH" else None)
        assert (r.status, r.codes()) == (404, ["BLOB_UPLOAD_UNKNOWN"]), method
    r = server("GET", "/v2/cancel/blobs/uploads/not-a-uuid")
    assert (r.status, r.codes()) == (404, ["BLOB_UPLOAD_UNKNOWN"])
    # an upload belongs to its repository
    other = server("POST", "/v2/cancel/blobs/uploads/").header("Location")
    assert other is not None
    r = server("GET", other.replace("/v2/cancel/", "/v2/someone-else/"))
    assert r.status == 404


def test_cross_repository_mount(server: Server) -> None:
    data = os.urandom(1000)
    digest = push_blob(server, "mount/source", data)
    r = server("POST", f"/v2/mount/target/blobs/uploads/?mount={digest}&from=mount/source")
    assert r.status == 201
    assert r.header("Location") == f"/v2/mount/target/blobs/{digest}"
    assert r.header("Docker-Content-Digest") == digest
    assert server("GET", f"/v2/mount/target/blobs/{digest}").body == data
    # automatic mount: no `from`, the blob exists somewhere
    r = server("POST", f"/v2/mount/auto/blobs/uploads/?mount={digest}")
    assert r.status == 201
    assert server("GET", f"/v2/mount/auto/blobs/{digest}").body == data
    # from a repository that doesn't have it: an upload starts instead
    r = server("POST", f"/v2/mount/other/blobs/uploads/?mount={digest}&from=mount/nothing")
    assert r.status == 202
    assert r.header("Docker-Upload-UUID")
    unknown = sha256(b"nowhere")
    r = server("POST", f"/v2/mount/other/blobs/uploads/?mount={unknown}")
    assert r.status == 202


def test_sha512_blobs(server: Server) -> None:
    data = os.urandom(70_000)
    digest = sha512(data)
    r = server("POST", f"/v2/sha512/blobs/uploads/?digest={digest}", data)
    assert r.status == 201, r.body
    got = server("GET", f"/v2/sha512/blobs/{digest}")
    assert (got.body, got.header("Docker-Content-Digest")) == (data, digest)
    location = server("POST", "/v2/sha512/blobs/uploads/").header("Location")
    assert location is not None
    assert server("PATCH", location, data[:30_000]).status == 202
    r = server("PUT", f"{location}?digest={digest}", data[30_000:])
    assert r.status == 201, r.body
    assert (server.storage / "blobs" / "sha512" / digest.split(":")[1]).is_file()


def test_delete_blob_enabled(server: Server) -> None:
    digest = push_blob(server, "del/blob", b"to delete")
    assert server("DELETE", f"/v2/del/blob/blobs/{digest}").status == 202
    r = server("GET", f"/v2/del/blob/blobs/{digest}")
    assert (r.status, r.codes()) == (404, ["BLOB_UNKNOWN"])
    r = server("DELETE", f"/v2/del/blob/blobs/{digest}")
    assert (r.status, r.codes()) == (404, ["BLOB_UNKNOWN"])


def test_delete_disabled_by_default(make_server: Callable[..., Server]) -> None:
    srv = make_server()
    digest = push_blob(srv, "nodelete", b"kept")
    r = srv("DELETE", f"/v2/nodelete/blobs/{digest}")
    assert (r.status, r.codes()) == (405, ["UNSUPPORTED"])
    assert srv("GET", f"/v2/nodelete/blobs/{digest}").body == b"kept"


def test_method_not_allowed(server: Server) -> None:
    r = server("POST", f"/v2/repo/blobs/{sha256(b'x')}")
    assert (r.status, r.codes()) == (405, ["UNSUPPORTED"])
    assert "GET" in (r.header("Allow") or "")


def test_resume_upload_after_restart(make_server: Callable[..., Server]) -> None:
    """An upload survives a server restart: state is on disk, the hash is picked up."""
    srv = make_server()
    data = os.urandom(500_000)
    location = srv("POST", "/v2/resume/blobs/uploads/").header("Location")
    assert location is not None
    assert srv("PATCH", location, data[:200_000]).status == 202
    assert srv.stop() == 0
    again = make_server(storage=srv.storage)
    assert again("GET", location).header("Range") == "0-199999"
    r = again("PATCH", location, data[200_000:], {"Content-Range": f"200000-{len(data) - 1}"})
    assert r.status == 202
    assert again("PUT", f"{location}?digest={sha256(data)}").status == 201
    assert again("GET", f"/v2/resume/blobs/{sha256(data)}").body == data


def test_client_gone_mid_upload_changes_nothing(make_server: Callable[..., Server]) -> None:
    srv = make_server()
    location = srv("POST", "/v2/cut/blobs/uploads/").header("Location")
    assert location is not None
    assert srv("PATCH", location, b"kept").status == 202
    host, port = srv.host.split(":")
    requests = [
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
        + b"x" * 10,
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + b"5\r\nhello\r\n",
        f"POST /v2/cut/blobs/uploads/?digest={sha256(b'y' * 100)} HTTP/1.1\r\n".encode()
        + b"Host: x\r\nContent-Length: 100\r\n\r\nyyyyy",
    ]
    for raw in requests:
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(raw)
            time.sleep(0.2)
    deadline = time.monotonic() + 10
    while srv("GET", location).header("Range") != "0-3" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv("GET", location).header("Range") == "0-3"
    assert list((srv.storage / "blobs" / ".ingest").iterdir()) == []
    r = srv("PUT", f"{location}?digest={sha256(b'kept')}")
    assert r.status == 201
    assert "Traceback" not in srv.log.read_text()


def test_too_many_uploads(make_server: Callable[..., Server]) -> None:
    srv = make_server("--max-uploads", "1")
    location = srv("POST", "/v2/busy/blobs/uploads/").header("Location")
    assert location is not None
    release = threading.Event()

    def slow() -> Iterator[bytes]:
        yield b"first"
        release.wait(timeout=20)
        yield b"second"

    results = []
    sender = threading.Thread(target=lambda: results.append(srv("PATCH", location, slow())))
    sender.start()
    try:
        deadline = time.monotonic() + 10
        r = srv("POST", "/v2/busy/blobs/uploads/")
        while r.status != 429 and time.monotonic() < deadline:
            time.sleep(0.05)
            r = srv("POST", "/v2/busy/blobs/uploads/")
        assert (r.status, r.codes()) == (429, ["TOOMANYREQUESTS"])
        assert r.header("Retry-After") == "1"
        assert srv("GET", location).status == 204  # reads are not limited
    finally:
        release.set()
        sender.join(timeout=30)
    assert results[0].status == 202
    assert srv("POST", "/v2/busy/blobs/uploads/").status == 202
