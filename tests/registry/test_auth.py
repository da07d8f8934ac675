"""htpasswd basic auth, Docker's token flow, TLS and read-only mode, over raw HTTP."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.registry.helpers import Server, push_blob, push_image, run, sha256


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    for user, password in (("alice", "wonderland"), ("bob", "builder")):
        flags = "-Bbc" if not path.exists() else "-Bb"
        res = run(["htpasswd", flags, str(path), user, password])
        assert res.returncode == 0, res.stderr
    return path


def _challenge(header: str | None) -> dict[str, str]:
    assert header is not None and header.startswith("Bearer ")
    fields = {}
    for part in header[len("Bearer ") :].split('",'):
        key, _, value = part.partition("=")
        fields[key.strip()] = value.strip('"')
    return fields


def test_htpasswd_basic(make_server: Callable[..., Server], htpasswd: Path) -> None:
    srv = make_server("--htpasswd", str(htpasswd))
    r = srv("GET", "/v2/")
    assert (r.status, r.codes()) == (401, ["UNAUTHORIZED"])
    assert (r.header("WWW-Authenticate") or "").startswith("Basic realm=")
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert srv("GET", "/v2/", headers=_basic("alice", "wrong")).status == 401
    assert srv("GET", "/v2/", headers=_basic("nobody", "wonderland")).status == 401
    assert srv("GET", "/v2/", headers=_basic("alice", "wonderland")).status == 200
    auth = _basic("bob", "builder")
    data = b"secret layer"
    r = srv("POST", f"/v2/private/blobs/uploads/?digest={sha256(data)}", data, auth)
    assert r.status == 201
    assert srv("GET", f"/v2/private/blobs/{sha256(data)}").status == 401
    assert srv("GET", f"/v2/private/blobs/{sha256(data)}", headers=auth).body == data


def test_bad_htpasswd_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "htpasswd"
    bad.write_text("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    for flags in (["--htpasswd", str(bad)], ["--htpasswd", str(tmp_path / "missing")]):
        res = run(
            [
                str(Path(__file__).resolve().parents[2] / ".venv/bin/dockyard"),
                "registry",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--storage",
                str(tmp_path / "s"),
                *flags,
            ],
            timeout=30,
        )
        assert res.returncode == 1
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("Error: "), res.stderr
        assert "Traceback" not in res.stderr


def _token(srv: Server, scope: str, auth: dict[str, str] | None) -> str:
    query = urllib.parse.urlencode({"service": "dockyard", "scope": scope})
    r = srv("GET", f"/token?{query}", headers=auth)
    assert r.status == 200, r.body
    answer = r.json()
    assert answer["token"] == answer["access_token"]
    assert answer["expires_in"] > 0
    return str(answer["token"])


def test_token_flow(make_server: Callable[..., Server], htpasswd: Path) -> None:
    srv = make_server("--auth", "token", "--htpasswd", str(htpasswd))
    r = srv("GET", "/v2/")
    assert (r.status, r.codes()) == (401, ["UNAUTHORIZED"])
    challenge = _challenge(r.header("WWW-Authenticate"))
    assert challenge["realm"] == f"{srv.url}/token"
    assert challenge["service"] == "dockyard"
    # a push needs pull and push on the repository
    data = b"token layer"
    r = srv("POST", f"/v2/team/app/blobs/uploads/?digest={sha256(data)}", data)
    assert r.status == 401
    assert _challenge(r.header("WWW-Authenticate"))["scope"] == "repository:team/app:pull,push"
    # wrong password: no token
    query = urllib.parse.urlencode({"service": "dockyard", "scope": "repository:team/app:pull"})
    assert srv("GET", f"/token?{query}", headers=_basic("alice", "nope")).status == 401
    token = _token(srv, "repository:team/app:pull,push", _basic("alice", "wonderland"))
    bearer = {"Authorization": f"Bearer {token}"}
    assert srv("GET", "/v2/", headers=bearer).status == 200
    r = srv("POST", f"/v2/team/app/blobs/uploads/?digest={sha256(data)}", data, bearer)
    assert r.status == 201, r.body
    assert srv("GET", f"/v2/team/app/blobs/{sha256(data)}", headers=bearer).body == data
    # the token names one repository: another one is out of scope
    r = srv("GET", f"/v2/team/other/blobs/{sha256(data)}", headers=bearer)
    assert r.status == 401
    challenge = _challenge(r.header("WWW-Authenticate"))
    assert challenge["error"] == "insufficient_scope"
    assert challenge["scope"] == "repository:team/other:pull"
    # a pull-only token can't push
    pull = {
        "Authorization": "Bearer "
        + _token(srv, "repository:team/app:pull", _basic("bob", "builder"))
    }
    assert srv("GET", f"/v2/team/app/blobs/{sha256(data)}", headers=pull).status == 200
    r = srv("POST", "/v2/team/app/blobs/uploads/", b"", pull)
    assert r.status == 401
    # anonymous tokens grant nothing; tampered tokens are invalid
    anon = {"Authorization": "Bearer " + _token(srv, "repository:team/app:pull", None)}
    assert srv("GET", f"/v2/team/app/blobs/{sha256(data)}", headers=anon).status == 401
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["access"][0]["name"] = "team/other"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    r = srv(
        "GET",
        "/v2/team/other/tags/list",
        headers={"Authorization": f"Bearer {header}.{forged}.{sig}"},
    )
    assert r.status == 401
    assert _challenge(r.header("WWW-Authenticate"))["error"] == "invalid_token"
    # the catalog needs registry:catalog:*
    assert srv("GET", "/v2/_catalog", headers=bearer).status == 401
    catalog = {
        "Authorization": "Bearer "
        + _token(srv, "registry:catalog:*", _basic("alice", "wonderland"))
    }
    assert srv("GET", "/v2/_catalog", headers=catalog).status == 200


def test_token_oauth_post_and_refresh(make_server: Callable[..., Server], htpasswd: Path) -> None:
    srv = make_server("--auth", "token", "--htpasswd", str(htpasswd))
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "username": "alice",
            "password": "wonderland",
            "service": "dockyard",
            "scope": "repository:posted:pull,push",
            "access_type": "offline",
            "client_id": "test",
        }
    ).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    r = srv("POST", "/token", form, headers)
    assert r.status == 200, r.body
    answer = r.json()
    assert "refresh_token" in answer
    bearer = {"Authorization": f"Bearer {answer['access_token']}"}
    assert srv("POST", "/v2/posted/blobs/uploads/", b"", bearer).status == 202
    refresh = urllib.parse.urlencode(
        {
            "grant_type": "refresh_token",
            "refresh_token": answer["refresh_token"],
            "service": "dockyard",
            "scope": "repository:posted:pull",
        }
    ).encode()
    r = srv("POST", "/token", refresh, headers)
    assert r.status == 200
    # a refresh token is not an access token
    r = srv("GET", "/v2/", headers={"Authorization": f"Bearer {answer['refresh_token']}"})
    assert r.status == 401


def test_token_key_shared_across_restarts(
    make_server: Callable[..., Server], htpasswd: Path, tmp_path: Path
) -> None:
    key = tmp_path / "token.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    flags = ("--auth", "token", "--htpasswd", str(htpasswd), "--token-key", str(key))
    srv = make_server(*flags)
    token = _token(srv, "repository:k:pull", _basic("alice", "wonderland"))
    assert srv.stop() == 0
    again = make_server(*flags, storage=srv.storage)
    assert again("GET", "/v2/", headers={"Authorization": f"Bearer {token}"}).status == 200


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    res = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return cert, key


def test_tls(make_server: Callable[..., Server], tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    srv = make_server("--tls-cert", str(cert), "--tls-key", str(key), context=context)
    assert srv.url.startswith("https://")
    assert srv("GET", "/v2/").status == 200
    digest = push_image(srv, "tls/repo", "v1", [b"over tls" * 1000])
    r = srv("GET", "/v2/tls/repo/manifests/v1")
    assert r.header("Docker-Content-Digest") == digest
    part = srv(
        "GET", f"/v2/tls/repo/blobs/{sha256(b'over tls' * 1000)}", headers={"Range": "bytes=0-7"}
    )
    assert (part.status, part.body) == (206, b"over tls")
    # skopeo verifies the certificate with a cert dir holding the CA
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(cert.read_bytes())
    res = run(["skopeo", "inspect", "--cert-dir", str(certs), f"docker://{srv.host}/tls/repo:v1"])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["Digest"] == digest


def test_read_only(make_server: Callable[..., Server], tmp_path: Path) -> None:
    srv = make_server("--delete")
    digest = push_image(srv, "ro", "v1", [b"read only"])
    assert srv.stop() == 0
    ro = make_server("--read-only", "--delete", storage=srv.storage)
    assert ro("GET", "/v2/ro/manifests/v1").header("Docker-Content-Digest") == digest
    for method, path in (
        ("POST", "/v2/ro/blobs/uploads/"),
        ("PUT", "/v2/ro/manifests/v2"),
        ("DELETE", "/v2/ro/manifests/v1"),
        ("DELETE", f"/v2/ro/blobs/{sha256(b'read only')}"),
    ):
        r = ro(method, path, b"{}" if method != "DELETE" else None)
        assert (r.status, r.codes()) == (405, ["UNSUPPORTED"]), (method, path)
    with pytest.raises(AssertionError):
        push_blob(ro, "ro", b"new")
