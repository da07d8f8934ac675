"""A client of one registry: the OCI distribution API (and Docker Hub's token auth).

    client = RegistryClient("127.0.0.1:5000", insecure=True)
    manifest = client.get_manifest("library/busybox", "latest")
    with client.get_blob("library/busybox", digest) as resp: ...

The first request pings `/v2/` to learn the scheme and the authentication the
registry wants:

- none (200);
- Basic (401 `WWW-Authenticate: Basic realm=…`): the stored or given credentials
  go with every request;
- Bearer (401 `WWW-Authenticate: Bearer realm=…,service=…,scope=…`): a token is
  asked of the realm for each scope (`repository:NAME:pull[,push]`), anonymously
  or with the credentials as Basic auth, cached for its lifetime, and sent as
  `Authorization: Bearer`; a 401 later gets one fresh token and one retry.

Schemes: HTTPS, verified. An insecure registry (registries.conf, `--tls-verify=false`,
or a loopback address as Docker allows) may also use plain HTTP or unverified TLS;
loopback registries are tried over HTTP first (no TLS handshake to fail on every
pull), others over HTTPS first. Docker Hub's API is at registry-1.docker.io.
"""

from __future__ import annotations

import json
import threading
import time

from dockyard.registry.client_errors import (
    RegistryError,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryUnauthorized,
    RegistryUnreachable,
)
from dockyard.registry.client_http import DEFAULT_TIMEOUT, Response, Transport, describe_failure

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterator

    from dockyard.registry.client_auth import Challenge, Credentials
    from dockyard.registry.client_http import Body

__all__ = ["Manifest", "RegistryClient", "RegistryError"]

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MANIFEST_LIMIT = 4 << 20
"""Largest manifest accepted (containerd's limit)."""
DOCKER_HUB_API = "registry-1.docker.io"
USER_AGENT = "dockyard"


def api_host(host: str) -> str:
    """Where a registry's API is: Docker Hub's is not at docker.io."""
    return DOCKER_HUB_API if host in ("docker.io", "index.docker.io") else host


def _loopback(host: str) -> bool:
    from dockyard.registry.config import is_loopback

    return is_loopback(host)


class Manifest:
    """A manifest's bytes as the registry sent them, their media type and digest."""

    def __init__(self, data: bytes, media_type: str, digest: str) -> None:
        self.data = data
        self.media_type = media_type
        self.digest = digest

    def json(self) -> dict[str, object]:
        try:
            doc = json.loads(self.data)
        except ValueError:
            raise RegistryProtocolError(f"manifest {self.digest} is not valid JSON") from None
        if not isinstance(doc, dict):
            raise RegistryProtocolError(f"manifest {self.digest} is not a JSON object")
        return doc


def error_text(body: bytes, status: int, reason: str) -> tuple[str, str]:
    """(first error code, the registry's words) from a distribution error body."""
    try:
        doc = json.loads(body)
        errors = doc.get("errors") if isinstance(doc, dict) else None
    except ValueError:
        errors = None
    if isinstance(errors, list) and errors:
        parts = []
        for item in errors:
            if isinstance(item, dict):
                code = str(item.get("code") or "")
                message = str(item.get("message") or "")
                parts.append(f"{code.lower().replace('_', ' ')}: {message}".strip(": "))
        first = errors[0].get("code") if isinstance(errors[0], dict) else ""
        return str(first or ""), "; ".join(p for p in parts if p) or f"{status} {reason}"
    text = body.decode(errors="replace").strip().splitlines()
    short = text[0][:200] if text else ""
    return "", f"{status} {reason}" + (f": {short}" if short and "<" not in short else "")


class RegistryClient:
    """One registry host ("docker.io", "127.0.0.1:5000"); safe to share between threads."""

    def __init__(
        self,
        host: str,
        insecure: bool = False,
        credentials: Credentials | None = None,
        auth_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Transport | None = None,
        scheme: str | None = None,
        lookup_credentials: bool = True,
    ) -> None:
        """`scheme` ("http" or "https") is the only one tried when given; without
        `lookup_credentials` only `credentials` are used (no auth.json is read)."""
        self.host = host
        self.insecure = insecure
        self.netloc = api_host(host)
        self.transport = transport or Transport(timeout)
        self.scheme = scheme
        self._credentials = credentials
        self._auth_file = auth_file
        self._creds_loaded = credentials is not None or not lookup_credentials
        self._base: str | None = None  # "http://127.0.0.1:5000": known after the ping
        self._verify = not insecure
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expires at)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"RegistryClient({self.host!r}, insecure={self.insecure})"

    def close(self) -> None:
        self.transport.close()

    # ------------------------------------------------------------------ credentials

    @property
    def credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            from dockyard.registry.client_auth import lookup

            self._credentials = lookup(self.host, flag=self._auth_file)
            self._creds_loaded = True
        return self._credentials

    # ------------------------------------------------------------------ ping

    def ping(self) -> None:
        """Find the scheme and the challenge (once); RegistryUnreachable if neither works."""
        with self._lock:
            if self._base is not None:
                return
            if self.scheme:
                schemes = [self.scheme]
            elif not self.insecure:
                schemes = ["https"]
            elif _loopback(self.netloc):
                schemes = ["http", "https"]
            else:
                schemes = ["https", "http"]
            failures: list[str] = []
            for scheme in schemes:
                base = f"{scheme}://{self.netloc}"
                try:
                    resp = self.transport.send(
                        "GET", f"{base}/v2/", {"User-Agent": USER_AGENT}, verify=self._verify
                    )
                except (OSError, _http_errors()) as err:
                    failures.append(f"{scheme}: {describe_failure(err)}")
                    if _no_listener(err):
                        failures = failures[-1:]  # the other scheme meets the same port
                        break
                    continue
                with resp:
                    body = resp.read(1 << 16) if resp.status != 200 else b""
                    if resp.status == 400 and b"HTTPS" in body and scheme == "http":
                        failures.append("http: the registry speaks HTTPS")
                        continue
                    if resp.status == 401:
                        self._set_challenge(resp)
                    elif resp.status != 200:
                        code, text = error_text(body, resp.status, resp.reason)
                        raise RegistryProtocolError(
                            f"{self.host} is not a registry (GET {base}/v2/: {text})",
                            resp.status,
                            code,
                            text,
                        )
                self._base = base
                return
            reason = failures[-1].split(": ", 1)[1] if len(failures) == 1 else "; ".join(failures)
            hint = ""
            if not self.insecure and "HTTP response to HTTPS" in reason:
                hint = " (an insecure registry? mark it insecure in registries.conf)"
            raise RegistryUnreachable(f"registry {self.host} is unreachable: {reason}{hint}")

    def _set_challenge(self, resp: Response) -> None:
        from dockyard.registry.client_auth import parse_challenge

        header = resp.header("WWW-Authenticate") or ""
        challenge = parse_challenge(header)
        if challenge is not None and challenge.scheme in ("basic", "bearer"):
            self._challenge = challenge

    # ------------------------------------------------------------------ auth

    def _authorization(self, scope: str) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials
            return creds.basic() if creds else None
        return "Bearer " + self._token(scope)

    def _token(self, scope: str) -> str:
        with self._lock:
            cached = self._tokens.get(scope)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            token, lifetime = self.fetch_token(scope)
            # a little early, so a token never expires on the way
            self._tokens[scope] = (token, time.monotonic() + max(lifetime - 10, lifetime / 2))
            return token

    def fetch_token(self, scope: str, creds: Credentials | None = None) -> tuple[str, float]:
        """Ask the Bearer challenge's realm for a token for `scope` (space-separated)."""
        from urllib.parse import urlencode

        from dockyard.registry.client_auth import token_from

        assert self._challenge is not None
        params = self._challenge.params
        realm = params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise RegistryProtocolError(f"{self.host} asks for a token from an invalid realm")
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in scope.split()]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
        headers = {"User-Agent": USER_AGENT}
        creds = creds or self.credentials
        if creds is not None:
            headers["Authorization"] = creds.basic()
        try:
            resp = self.transport.send("GET", url, headers, verify=self._verify)
        except (OSError, _http_errors()) as err:
            raise RegistryUnreachable(
                f"the token server of {self.host} ({realm}) is unreachable: {describe_failure(err)}"
            ) from None
        with resp:
            body = resp.read(1 << 20)
        if resp.status in (401, 403):
            code, text = error_text(body, resp.status, resp.reason)
            what = "incorrect username or password" if creds else "authentication required"
            raise RegistryUnauthorized(
                f"{self.host}: unauthorized: {what}", resp.status, code or "UNAUTHORIZED", text
            )
        if resp.status != 200:
            code, text = error_text(body, resp.status, resp.reason)
            raise RegistryError(f"{self.host}: the token server said {text}", resp.status, code)
        try:
            return token_from(body)
        except ValueError as err:
            raise RegistryProtocolError(f"{self.host}: {err}") from None

    def check_login(self, creds: Credentials) -> None:
        """Do these credentials work here? RegistryUnauthorized if not (login verifies)."""
        self.ping()
        challenge = self._challenge
        if challenge is None:
            return  # nothing asked: any credentials do (Docker says Login Succeeded too)
        if challenge.scheme == "bearer":
            self.fetch_token("", creds)
            return
        resp = self._send_once("GET", "/v2/", {"Authorization": creds.basic()}, None)
        with resp:
            body = resp.read(1 << 16)
        if resp.status in (401, 403):
            raise RegistryUnauthorized(
                f"{self.host}: unauthorized: incorrect username or password", resp.status
            )
        if resp.status != 200:
            raise RegistryError(f"{self.host}: {error_text(body, resp.status, resp.reason)[1]}")

    # ------------------------------------------------------------------ requests

    def _send_once(self, method: str, path: str, headers: dict[str, str], body: Body) -> Response:
        url = path if path.startswith(("http://", "https://")) else f"{self._base}{path}"
        headers = {"User-Agent": USER_AGENT, **headers}
        try:
            return self.transport.send(method, url, headers, body, verify=self._verify)
        except (OSError, _http_errors()) as err:
            raise RegistryUnreachable(
                f"registry {self.host} is unreachable: {describe_failure(err)}"
            ) from None

    def request(
        self,
        method: str,
        path: str,
        scope: str,
        headers: dict[str, str] | None = None,
        body: Body = None,
        redirects: int = 5,
    ) -> Response:
        """A request with authentication (and one retry after a 401) and redirects followed.

        `path` is under the registry ("/v2/…") or an absolute URL it gave (Location)."""
        self.ping()
        headers = dict(headers or {})
        for attempt in range(2):
            auth = self._authorization(scope)
            sent = {**headers, "Authorization": auth} if auth else headers
            resp = self._send_once(method, path, sent, body)
            if resp.status != 401 or attempt == 1:
                break
            with self._lock:
                known = self._challenge is not None
                self._set_challenge(resp)
                retry = self._challenge is not None and (not known or auth is not None)
                if retry:
                    self._tokens.pop(scope, None)
            if not retry:
                break
            resp.release()
        for _ in range(redirects):
            if resp.status not in (301, 302, 303, 307, 308) or method not in ("GET", "HEAD"):
                return resp
            location = resp.header("Location")
            resp.release()
            if not location:
                raise RegistryProtocolError(f"{self.host} redirected without a Location")
            from urllib.parse import urljoin

            target = urljoin(resp.url, location)
            try:  # storage elsewhere (S3, a CDN): it gets no registry credentials
                resp = self.transport.send(
                    method, target, {"User-Agent": USER_AGENT, **headers}, verify=self._verify
                )
            except (OSError, _http_errors()) as err:
                raise RegistryUnreachable(
                    f"{target.split('?')[0]} (a redirect from {self.host}) is unreachable: "
                    f"{describe_failure(err)}"
                ) from None
        return resp

    def fail(self, resp: Response, what: str) -> RegistryError:
        """The error for an unexpected answer about `what` (releases the response)."""
        try:
            body = resp.read(1 << 16)
        except (OSError, ValueError, _http_errors()):
            body = b""
        resp.close()
        code, text = error_text(body, resp.status, resp.reason)
        if not code and resp.status == 401:  # a HEAD has no body to say it
            code, text = "UNAUTHORIZED", "unauthorized: authentication required"
        elif not code and resp.status == 403:
            code, text = "DENIED", "denied: requested access to the resource is denied"
        message = f"{what}: {text}"
        if resp.status in (401, 403):
            return RegistryUnauthorized(message, resp.status, code, text)
        if resp.status == 404:
            return RegistryNotFound(message, resp.status, code, text)
        return RegistryError(message, resp.status, code, text)

    # ------------------------------------------------------------------ manifests

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """A manifest (or index) by tag or digest, its digest checked when it is known."""
        from dockyard.oci.digest import from_bytes

        resp = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            f"repository:{repository}:pull",
            {"Accept": ", ".join(MANIFEST_TYPES)},
        )
        what = f"{self.host}/{repository}:{reference}".replace(":sha256:", "@sha256:")
        if resp.status != 200:
            raise self.fail(resp, what)
        with resp:
            try:
                data = resp.read(MANIFEST_LIMIT)
            except ValueError:
                raise RegistryProtocolError(
                    f"{what}: the manifest is larger than {MANIFEST_LIMIT >> 20} MiB"
                ) from None
            except (OSError, _http_errors()) as err:
                raise RegistryUnreachable(
                    f"registry {self.host}: reading the manifest of {what} failed: "
                    f"{describe_failure(err)}"
                ) from None
        media_type = (resp.header("Content-Type") or "").split(";")[0].strip()
        expected = reference if reference.startswith("sha256:") else None
        expected = expected or resp.header("Docker-Content-Digest")
        digest = from_bytes(data)
        if expected and expected.startswith("sha256:") and expected != digest:
            raise RegistryProtocolError(
                f"{what}: manifest digest mismatch: expected {expected}, got {digest}"
            )
        return Manifest(data, media_type, digest)

    # ------------------------------------------------------------------ blobs

    def get_blob(self, repository: str, digest: str, offset: int = 0) -> Response:
        """The blob's body (200, or 206 from `offset`); the caller reads and releases it."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self.request(
            "GET", f"/v2/{repository}/blobs/{digest}", f"repository:{repository}:pull", headers
        )
        if resp.status not in (200, 206):
            raise self.fail(resp, f"blob {digest} of {self.host}/{repository}")
        return resp

    def blob_size(self, repository: str, digest: str, scope: str = "") -> int | None:
        """HEAD: the blob's size if the repository has it, else None."""
        resp = self.request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scope or f"repository:{repository}:pull",
        )
        if resp.status == 404:
            resp.release()
            return None
        if resp.status != 200:
            raise self.fail(resp, f"blob {digest} of {self.host}/{repository}")
        resp.release()
        length = resp.header("Content-Length")
        return int(length) if length and length.isdigit() else 0

    # ------------------------------------------------------------------ listing

    def catalog(self, page: int = 100, limit: int = 100_000) -> Iterator[str]:
        """Repository names (`GET /v2/_catalog`, following its Link pages)."""
        path = f"/v2/_catalog?n={page}"
        seen = 0
        while path and seen < limit:
            resp = self.request("GET", path, "registry:catalog:*")
            if resp.status != 200:
                raise self.fail(resp, f"listing the repositories of {self.host}")
            with resp:
                doc = _json_object(resp.read(16 << 20), f"{self.host}'s catalog")
            names = doc.get("repositories") or []
            if not isinstance(names, list):
                raise RegistryProtocolError(f"{self.host}'s catalog is not a list")
            for name in names:
                seen += 1
                yield str(name)
            path = _next_link(resp.header("Link")) if names else ""

    def tags(self, repository: str) -> list[str]:
        found: list[str] = []
        path = f"/v2/{repository}/tags/list?n=1000"
        for _ in range(1000):
            resp = self.request("GET", path, f"repository:{repository}:pull")
            if resp.status != 200:
                raise self.fail(resp, f"listing the tags of {self.host}/{repository}")
            with resp:
                doc = _json_object(resp.read(16 << 20), f"the tags of {repository}")
            tags = doc.get("tags") or []
            found += [str(t) for t in tags] if isinstance(tags, list) else []
            path = _next_link(resp.header("Link"))
            if not path:
                break
        return found

    def search_v1(self, term: str, limit: int) -> list[dict[str, object]]:
        """Docker Hub's search (`/v1/search`), the only one it offers."""
        from urllib.parse import urlencode

        query = urlencode({"q": term, "n": limit})
        host = "index.docker.io" if self.host in ("docker.io", "index.docker.io") else self.netloc
        try:
            resp = self.transport.send("GET", f"https://{host}/v1/search?{query}", {})
        except (OSError, _http_errors()) as err:
            raise RegistryUnreachable(
                f"registry {self.host} is unreachable: {describe_failure(err)}"
            ) from None
        if resp.status != 200:
            raise self.fail(resp, f"searching {self.host}")
        with resp:
            doc = _json_object(resp.read(16 << 20), f"{self.host}'s search results")
        results = doc.get("results") or []
        return [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []


def _json_object(data: bytes, what: str) -> dict[str, object]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise RegistryProtocolError(f"{what}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise RegistryProtocolError(f"{what}: not a JSON object")
    return doc


def _next_link(header: str | None) -> str:
    """The `rel="next"` URL of a Link header (`</v2/_catalog?last=x&n=100>; rel="next"`)."""
    if not header:
        return ""
    for part in header.split(","):
        url, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            return url.strip().strip("<>")
    return ""


def _no_listener(err: BaseException) -> bool:
    """Nothing answers at all (refused, no such host, timeout): no scheme will do better."""
    import socket

    return isinstance(err, ConnectionRefusedError | socket.gaierror | TimeoutError)


def _http_errors() -> type[Exception]:
    import http.client

    return http.client.HTTPException
