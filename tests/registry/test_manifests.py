"""Manifests, tags, catalog, referrers and deletes over raw HTTP."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Callable

from tests.registry.helpers import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Server,
    image_manifest,
    push_blob,
    push_image,
    sha256,
    sha512,
)


def test_manifest_by_tag_and_digest(server: Server) -> None:
    digest = push_image(server, "library/busybox", "v1", [b"layer one", b"layer two"])
    for ref in ("v1", digest):
        r = server("GET", f"/v2/library/busybox/manifests/{ref}")
        assert r.status == 200
        assert r.header("Docker-Content-Digest") == digest
        assert r.header("Content-Type") == OCI_MANIFEST
        assert r.header("Content-Length") == str(len(r.body))
        assert sha256(r.body) == digest
        h = server("HEAD", f"/v2/library/busybox/manifests/{ref}")
        assert (h.status, h.body) == (200, b"")
        assert h.header("Content-Length") == str(len(r.body))
        assert h.header("Docker-Content-Digest") == digest
        assert h.header("Content-Type") == OCI_MANIFEST
    # a manifest is a blob too
    assert sha256(server("GET", f"/v2/library/busybox/blobs/{digest}").body) == digest


def test_manifest_put_response(server: Server) -> None:
    config, layer = b'{"os":"linux"}', b"layer"
    push_blob(server, "put/resp", config)
    push_blob(server, "put/resp", layer)
    body = image_manifest(config, [layer], DOCKER_MANIFEST)
    r = server("PUT", "/v2/put/resp/manifests/latest", body, {"Content-Type": DOCKER_MANIFEST})
    assert r.status == 201
    assert r.header("Location") == f"/v2/put/resp/manifests/{sha256(body)}"
    assert r.header("Docker-Content-Digest") == sha256(body)
    got = server("GET", "/v2/put/resp/manifests/latest")
    assert (got.body, got.header("Content-Type")) == (body, DOCKER_MANIFEST)


def test_manifest_unknown_and_name_unknown(server: Server) -> None:
    push_image(server, "known", "v1", [b"x"])
    r = server("GET", "/v2/known/manifests/nope")
    assert (r.status, r.codes()) == (404, ["MANIFEST_UNKNOWN"])
    r = server("GET", f"/v2/known/manifests/{sha256(b'nope')}")
    assert (r.status, r.codes()) == (404, ["MANIFEST_UNKNOWN"])
    assert server("HEAD", "/v2/known/manifests/nope").status == 404
    r = server("GET", "/v2/never/pushed/manifests/latest")
    assert (r.status, r.codes()) == (404, ["NAME_UNKNOWN"])
    r = server("GET", "/v2/never/pushed/tags/list")
    assert (r.status, r.codes()) == (404, ["NAME_UNKNOWN"])


def test_manifest_blob_unknown(server: Server) -> None:
    config = b'{"os":"linux"}'
    push_blob(server, "missing/layer", config)
    body = image_manifest(config, [b"not pushed"])
    r = server("PUT", "/v2/missing/layer/manifests/v1", body, {"Content-Type": OCI_MANIFEST})
    assert (r.status, r.codes()) == (400, ["MANIFEST_BLOB_UNKNOWN"])
    assert r.json()["errors"][0]["detail"]["digest"] == sha256(b"not pushed")
    # config missing too
    body = image_manifest(b"no config", [])
    r = server("PUT", "/v2/missing/layer/manifests/v2", body, {"Content-Type": OCI_MANIFEST})
    assert r.codes() == ["MANIFEST_BLOB_UNKNOWN"]
    # a blob of another repository is not enough
    push_blob(server, "missing/other", b"elsewhere")
    body = image_manifest(config, [b"elsewhere"])
    r = server("PUT", "/v2/missing/layer/manifests/v3", body, {"Content-Type": OCI_MANIFEST})
    assert r.codes() == ["MANIFEST_BLOB_UNKNOWN"]
    assert server("GET", "/v2/missing/layer/manifests/v3").status == 404


def test_manifest_invalid(server: Server) -> None:
    push_blob(server, "invalid", b"{}")
    cases = [
        b"not json",
        b"[]",
        json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode(),
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x", "digest": "sha256:bad", "size": 2},
                "layers": [],
            }
        ).encode(),
    ]
    for body in cases:
        r = server("PUT", "/v2/invalid/manifests/v1", body, {"Content-Type": OCI_MANIFEST})
        assert (r.status, r.codes()) == (400, ["MANIFEST_INVALID"]), body
    # mediaType and Content-Type disagree
    body = image_manifest(b"{}", [], OCI_MANIFEST)
    r = server("PUT", "/v2/invalid/manifests/v1", body, {"Content-Type": OCI_INDEX})
    assert r.codes() == ["MANIFEST_INVALID"]
    r = server("PUT", "/v2/invalid/manifests/bad:tag!", body, {"Content-Type": OCI_MANIFEST})
    assert r.status == 400


def test_manifest_put_by_digest(server: Server) -> None:
    config = b'{"os":"linux","by":"digest"}'
    push_blob(server, "bydigest", config)
    body = image_manifest(config, [])
    r = server(
        "PUT", f"/v2/bydigest/manifests/{sha256(body)}", body, {"Content-Type": OCI_MANIFEST}
    )
    assert r.status == 201
    assert server("GET", f"/v2/bydigest/manifests/{sha256(body)}").body == body
    wrong = sha256(b"other")
    r = server("PUT", f"/v2/bydigest/manifests/{wrong}", body, {"Content-Type": OCI_MANIFEST})
    assert (r.status, r.codes()) == (400, ["DIGEST_INVALID"])
    # sha512 manifest digests
    r = server(
        "PUT", f"/v2/bydigest/manifests/{sha512(body)}", body, {"Content-Type": OCI_MANIFEST}
    )
    assert r.status == 201, r.body
    assert r.header("Docker-Content-Digest") == sha512(body)
    got = server("GET", f"/v2/bydigest/manifests/{sha512(body)}")
    assert (got.body, got.header("Docker-Content-Digest")) == (body, sha512(body))
    # ?tag= tags a push by digest
    r = server(
        "PUT",
        f"/v2/bydigest/manifests/{sha256(body)}?tag=t1&tag=t2",
        body,
        {"Content-Type": OCI_MANIFEST},
    )
    assert r.status == 201
    assert server("GET", "/v2/bydigest/tags/list").json()["tags"] == ["t1", "t2"]


def test_index_needs_its_manifests(server: Server) -> None:
    child = push_image(server, "index/repo", "amd64", [b"amd64 layer"])
    child_size = len(server("GET", f"/v2/index/repo/manifests/{child}").body)
    missing = sha256(b"arm64 manifest")

    def index(children: list[tuple[str, int]]) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {"mediaType": OCI_MANIFEST, "digest": d, "size": s} for d, s in children
                ],
            }
        ).encode()

    bad = index([(child, child_size), (missing, 100)])
    r = server("PUT", "/v2/index/repo/manifests/multi", bad, {"Content-Type": OCI_INDEX})
    assert (r.status, r.codes()) == (400, ["MANIFEST_BLOB_UNKNOWN"])
    good = index([(child, child_size)])
    r = server("PUT", "/v2/index/repo/manifests/multi", good, {"Content-Type": OCI_INDEX})
    assert r.status == 201
    got = server("GET", "/v2/index/repo/manifests/multi")
    assert (got.body, got.header("Content-Type")) == (good, OCI_INDEX)


def test_tags_pagination(server: Server) -> None:
    for tag in ("c", "a", "e", "b", "d"):
        push_image(server, "paged", tag, [f"layer {tag}".encode()])
    assert server("GET", "/v2/paged/tags/list").json() == {
        "name": "paged",
        "tags": ["a", "b", "c", "d", "e"],
    }
    seen: list[str] = []
    url = "/v2/paged/tags/list?n=2"
    for _ in range(10):
        r = server("GET", url)
        assert r.status == 200
        seen += r.json()["tags"]
        link = r.header("Link")
        if link is None:
            break
        assert link.endswith('>; rel="next"')
        url = link[1 : link.index(">")]
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["n"] == ["2"]
    assert seen == ["a", "b", "c", "d", "e"]
    assert server("GET", "/v2/paged/tags/list?n=2&last=b").json()["tags"] == ["c", "d"]
    assert server("GET", "/v2/paged/tags/list?last=d").json()["tags"] == ["e"]
    assert server("GET", "/v2/paged/tags/list?n=0").json()["tags"] == []
    r = server("GET", "/v2/paged/tags/list?n=-1")
    assert (r.status, r.codes()) == (400, ["PAGINATION_NUMBER_INVALID"])


def test_catalog_pagination(make_server: Callable[..., Server]) -> None:
    srv = make_server()
    repos = ["a/b/c", "alpha", "library/busybox", "library/nginx", "zeta"]
    for repo in repos:
        push_image(srv, repo, "latest", [repo.encode()])
    assert srv("GET", "/v2/_catalog").json() == {"repositories": repos}
    seen: list[str] = []
    url = "/v2/_catalog?n=2"
    for _ in range(10):
        r = srv("GET", url)
        seen += r.json()["repositories"]
        link = r.header("Link")
        if link is None:
            break
        url = link[1 : link.index(">")]
    assert seen == repos
    assert srv("GET", "/v2/_catalog?n=1&last=library/busybox").json() == {
        "repositories": ["library/nginx"]
    }


def test_delete_manifest_and_tag(server: Server) -> None:
    digest = push_image(server, "del/manifest", "v1", [b"del layer"])
    r = server("PUT", f"/v2/del/manifest/manifests/{digest}?tag=v2",
               server("GET", f"/v2/del/manifest/manifests/{digest}").body,
               {"Content-Type": OCI_MANIFEST})  # fmt: skip
    assert r.status == 201
    assert server("DELETE", "/v2/del/manifest/manifests/v2").status == 202
    assert server("GET", "/v2/del/manifest/manifests/v2").status == 404
    assert server("GET", "/v2/del/manifest/manifests/v1").status == 200
    assert server("DELETE", f"/v2/del/manifest/manifests/{digest}").status == 202
    for ref in ("v1", digest):
        r = server("GET", f"/v2/del/manifest/manifests/{ref}")
        assert (r.status, r.codes()) == (404, ["MANIFEST_UNKNOWN"])
    r = server("DELETE", f"/v2/del/manifest/manifests/{digest}")
    assert (r.status, r.codes()) == (404, ["MANIFEST_UNKNOWN"])
    assert server("GET", "/v2/del/manifest/tags/list").json()["tags"] == []


def test_delete_manifest_disabled(make_server: Callable[..., Server]) -> None:
    srv = make_server()
    push_image(srv, "keep", "v1", [b"k"])
    r = srv("DELETE", "/v2/keep/manifests/v1")
    assert (r.status, r.codes()) == (405, ["UNSUPPORTED"])
    assert srv("GET", "/v2/keep/manifests/v1").status == 200


def test_referrers(server: Server) -> None:
    subject = push_image(server, "refs", "v1", [b"the image"])
    subject_size = len(server("GET", f"/v2/refs/manifests/{subject}").body)
    empty = b"{}"
    push_blob(server, "refs", empty)

    def artifact(artifact_type: str, payload: bytes, annotations: dict[str, str]) -> bytes:
        push_blob(server, "refs", payload)
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": sha256(empty),
                    "size": 2,
                },
                "layers": [
                    {"mediaType": "text/plain", "digest": sha256(payload), "size": len(payload)}
                ],
                "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size},
                "annotations": annotations,
            }
        ).encode()

    sbom = artifact("application/spdx+json", b"sbom", {"kind": "sbom"})
    sig = artifact("application/vnd.dev.cosign", b"signature", {"kind": "sig"})
    for body in (sbom, sig):
        r = server(
            "PUT", f"/v2/refs/manifests/{sha256(body)}", body, {"Content-Type": OCI_MANIFEST}
        )
        assert r.status == 201, r.body
        assert r.header("OCI-Subject") == subject
    r = server("GET", f"/v2/refs/referrers/{subject}")
    assert r.status == 200
    assert r.header("Content-Type") == OCI_INDEX
    index = r.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert by_digest == {
        sha256(sbom): {
            "mediaType": OCI_MANIFEST,
            "digest": sha256(sbom),
            "size": len(sbom),
            "artifactType": "application/spdx+json",
            "annotations": {"kind": "sbom"},
        },
        sha256(sig): {
            "mediaType": OCI_MANIFEST,
            "digest": sha256(sig),
            "size": len(sig),
            "artifactType": "application/vnd.dev.cosign",
            "annotations": {"kind": "sig"},
        },
    }
    assert r.header("OCI-Filters-Applied") is None
    r = server("GET", f"/v2/refs/referrers/{subject}?artifactType=application/spdx%2Bjson")
    assert [m["digest"] for m in r.json()["manifests"]] == [sha256(sbom)]
    assert r.header("OCI-Filters-Applied") == "artifactType"
    # no referrers: an empty index, never 404; a bad digest: 400
    r = server("GET", f"/v2/refs/referrers/{sha256(b'lonely')}")
    assert (r.status, r.json()["manifests"]) == (200, [])
    assert server("GET", "/v2/refs/referrers/sha256:zz").status == 400
    # the image manifest (no artifactType) reports its config's media type
    plain = push_image(server, "refs", "plain", [os.urandom(10)])
    assert server("GET", f"/v2/refs/referrers/{plain}").json()["manifests"] == []
