"""The registry server: OCI distribution spec v1.1 / Docker registry API v2 over aiohttp.

    make_app(config)   the aiohttp application (tests may run it in process)
    serve(config)      bind, print `listening on http://HOST:PORT`, serve until
                       SIGINT/SIGTERM, shut down cleanly

Requests under `/v2/` go through one dispatcher: it matches the path (repository
names contain slashes, so routes are matched from the end: `…/manifests/<ref>`,
`…/blobs/uploads/<id>`, `…/blobs/<digest>`, `…/tags/list`, `…/referrers/<digest>`),
checks the name, the method, read-only mode and authorization, then calls the
handler (blob_api.py, manifest_api.py). A handler raises `RegistryError` for the
spec's JSON errors. `/token` is the built-in token endpoint of `--auth token`.

Several worker processes (`workers`) may share the listening socket: everything
they share is on disk (storage.py), so any request may land in any of them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys

from aiohttp import web

from dockyard.registry import blob_api, manifest_api, names
from dockyard.registry.auth import (
    Access,
    AuthConfigError,
    BasicAuth,
    Htpasswd,
    NoAuth,
    TokenAuth,
)
from dockyard.registry.errors import RegistryError, error_body
from dockyard.registry.storage import GRACE_SECONDS, RegistryStorage

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable
    from typing import TextIO

    from dockyard.registry.upstream import Upstream

    Handler = Callable[
        ["Registry", web.Request, str, dict[str, str]], Awaitable[web.StreamResponse]
    ]

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
READ_BUFSIZE = 1 << 20
WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})


class Config:
    """How a registry server runs (the `dockyard registry serve` flags)."""

    def __init__(
        self,
        storage: str,
        host: str = "127.0.0.1",
        port: int = 5000,
        auth: str = "none",
        htpasswd: str | None = None,
        token_realm: str | None = None,
        token_service: str = "dockyard",
        token_key: bytes | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        read_only: bool = False,
        delete: bool = False,
        workers: int = 1,
        max_uploads: int = 0,
        upstream: Upstream | None = None,
        grace: float = GRACE_SECONDS,
        proxy: str | None = None,
        proxy_username: str | None = None,
        proxy_password: str | None = None,
    ) -> None:
        self.storage = storage
        self.host = host
        self.port = port
        self.auth = auth
        self.htpasswd = htpasswd
        self.token_realm = token_realm
        self.token_service = token_service
        self.token_key = token_key
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.read_only = read_only
        self.delete = delete
        self.workers = workers
        self.max_uploads = max_uploads
        self.upstream = upstream
        self.grace = grace
        self.proxy = proxy
        self.proxy_username = proxy_username
        self.proxy_password = proxy_password

    def check(self) -> None:
        """AuthConfigError when the flags can't work together."""
        if self.auth not in ("none", "basic", "token"):
            raise AuthConfigError(f"unknown auth mode {self.auth!r}: use none, basic or token")
        if self.auth != "none" and not self.htpasswd:
            raise AuthConfigError(f"--auth {self.auth} needs --htpasswd FILE with the users")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise AuthConfigError("--tls-cert and --tls-key go together")
        if self.workers < 1:
            raise AuthConfigError("--workers must be 1 or more")
        if self.max_uploads < 0:
            raise AuthConfigError("--max-uploads must be 0 (no limit) or more")
        if (self.proxy_username is None) != (self.proxy_password is None):
            raise AuthConfigError(
                "--proxy-username and --proxy-password (or $DOCKYARD_PROXY_PASSWORD) go together"
            )
        if self.proxy_username is not None and not self.proxy:
            raise AuthConfigError("--proxy-username and --proxy-password need --proxy URL")
        if self.proxy:
            from dockyard.registry.proxy import parse_url

            try:
                parse_url(self.proxy)
            except ValueError as e:
                raise AuthConfigError(str(e)) from None


def make_auth(config: Config) -> NoAuth | BasicAuth | TokenAuth:
    if config.auth == "none":
        return NoAuth()
    users = Htpasswd(config.htpasswd or "")
    if config.auth == "basic":
        return BasicAuth(users)
    key = config.token_key or os.urandom(32)
    return TokenAuth(users, key, config.token_service, config.token_realm)


# -- routing ------------------------------------------------------------------------------

_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?P<name>.+)/manifests/(?P<reference>[^/]+)\Z"), "manifest"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/(?P<uuid>[^/]+)\Z"), "upload"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/?\Z"), "uploads"),
    (re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)\Z"), "blob"),
    (re.compile(r"(?P<name>.+)/tags/list\Z"), "tags"),
    (re.compile(r"(?P<name>.+)/referrers/(?P<digest>[^/]+)\Z"), "referrers"),
]

# kind -> method -> (handler, actions needed on the repository)
_TABLE: dict[str, dict[str, tuple[Handler, tuple[str, ...]]]] = {
    "manifest": {
        "GET": (manifest_api.get_manifest, ("pull",)),
        "HEAD": (manifest_api.get_manifest, ("pull",)),
        "PUT": (manifest_api.put_manifest, ("pull", "push")),
        "DELETE": (manifest_api.delete_manifest, ("delete",)),
    },
    "blob": {
        "GET": (blob_api.get_blob, ("pull",)),
        "HEAD": (blob_api.get_blob, ("pull",)),
        "DELETE": (blob_api.delete_blob, ("delete",)),
    },
    "uploads": {"POST": (blob_api.start_upload, ("pull", "push"))},
    "upload": {
        "GET": (blob_api.upload_status, ("pull", "push")),
        "PATCH": (blob_api.patch_upload, ("pull", "push")),
        "PUT": (blob_api.finish_upload, ("pull", "push")),
        "DELETE": (blob_api.cancel_upload, ("pull", "push")),
    },
    "tags": {"GET": (manifest_api.list_tags, ("pull",))},
    "referrers": {"GET": (manifest_api.referrers, ("pull",))},
}


def error_response(err: RegistryError) -> web.Response:
    return web.Response(
        status=err.status,
        body=error_body([err]),
        content_type="application/json",
        headers=err.headers,
    )


class Registry:
    """One server process's state: config, storage, auth, upstream."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.storage = RegistryStorage(config.storage, config.grace)
        self.auth = make_auth(config)
        self.upstream = config.upstream
        if self.upstream is None and config.proxy:
            from dockyard.registry.proxy import ProxyUpstream

            self.upstream = ProxyUpstream(
                config.proxy, config.proxy_username, config.proxy_password
            )
        self.uploading = 0  # requests sending blob data now (for --max-uploads)

    async def authorize(self, request: web.Request, needed: list[Access]) -> str:
        """The user (or "") when the request may do `needed`; UNAUTHORIZED otherwise."""
        if isinstance(self.auth, NoAuth):
            return ""
        realm = f"{request.scheme}://{request.host}/token"
        return await self.auth.check(request.headers.get("Authorization"), needed, realm)

    async def allowed(self, request: web.Request, needed: list[Access]) -> bool:
        try:
            await self.authorize(request, needed)
        except RegistryError:
            return False
        return True

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except RegistryError as err:
            return error_response(err)
        except ConnectionError:
            # The client went away mid-request (what it sent is undone): nobody to answer.
            return web.Response(status=499)
        except OSError as err:  # no space, no permission, …: one line in the log, 500
            request.app.logger.error("%s %s: %s", request.method, request.path, err)
            return error_response(RegistryError("UNKNOWN", f"storage error: {err.strerror}"))
        except Exception as err:  # a bug: say so in the log, answer 500 in the spec's format
            request.app.logger.exception("error handling %s %s", request.method, request.path)
            return error_response(RegistryError("UNKNOWN", f"internal error: {err}"))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        method = request.method
        if tail == "":
            if method not in ("GET", "HEAD"):
                raise _unsupported(method, "GET, HEAD")
            await self.authorize(request, [])
            return web.json_response({})
        if tail == "_catalog":
            if method != "GET":
                raise _unsupported(method, "GET")
            await self.authorize(request, [Access("registry", "catalog", ("*",))])
            return await manifest_api.catalog(self, request)
        for pattern, kind in _ROUTES:  # noqa: B007 - `kind` is used after the loop
            match = pattern.match(tail)
            if match is not None:
                break
        else:
            raise RegistryError("NAME_UNKNOWN", f"no such endpoint: {request.path[:200]}")
        params = match.groupdict()
        name = names.check_name(params.pop("name"))
        methods = _TABLE[kind]
        if method not in methods:
            raise _unsupported(method, ", ".join(methods))
        if self.upstream is not None and method in WRITE_METHODS:
            raise RegistryError(
                "UNSUPPORTED", "this registry is a pull-through cache: no pushes or deletes"
            )
        if self.config.read_only and method in WRITE_METHODS:
            raise RegistryError("UNSUPPORTED", "the registry is read-only")
        handler, actions = methods[method]
        await self.authorize(request, [Access("repository", name, actions)])
        if kind not in ("upload", "uploads") or method in ("GET", "DELETE"):
            return await handler(self, request, name, params)
        limit = self.config.max_uploads
        if limit and self.uploading >= limit:
            raise RegistryError(
                "TOOMANYREQUESTS",
                f"{self.uploading} uploads are in progress here: try again shortly",
                headers={"Retry-After": "1"},
            )
        self.uploading += 1
        try:
            return await handler(self, request, name, params)
        finally:
            self.uploading -= 1

    async def token(self, request: web.Request) -> web.StreamResponse:
        """The token endpoint: GET with Basic credentials, or an OAuth2 POST."""
        if not isinstance(self.auth, TokenAuth):
            return error_response(RegistryError("UNSUPPORTED", "no token auth", status=404))
        try:
            if request.method == "POST":
                form = {k: str(v) for k, v in (await request.post()).items()}
                scopes = form.get("scope", "").split()
                answer = await self.auth.token_answer(None, scopes, form)
            elif request.method == "GET":
                scopes = [s for v in request.query.getall("scope", []) for s in v.split()]
                offline = request.query.get("offline_token", "") == "true"
                answer = await self.auth.token_answer(
                    request.headers.get("Authorization"), scopes, offline=offline
                )
            else:
                raise _unsupported(request.method, "GET, POST")
        except RegistryError as err:
            return error_response(err)
        return web.json_response(answer)


def _unsupported(method: str, allowed: str) -> RegistryError:
    return RegistryError(
        "UNSUPPORTED", f"method {method} is not allowed here", headers={"Allow": allowed}
    )


async def _add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[API_VERSION[0]] = API_VERSION[1]


def make_app(config: Config) -> web.Application:
    """The aiohttp application of a registry with `config` (storage opened now)."""
    config.check()
    registry = Registry(config)
    app = web.Application(client_max_size=16 << 20)
    app.router.add_route("*", "/v2", registry.dispatch)
    app.router.add_route("*", "/v2/{tail:.*}", registry.dispatch)
    app.router.add_route("*", "/token", registry.token)
    app.on_response_prepare.append(_add_api_version)

    async def stop_upstream(app: web.Application) -> None:
        if registry.upstream is not None:  # before waiting for the requests it holds up
            await registry.upstream.close()

    async def close(app: web.Application) -> None:
        registry.storage.close()

    app.on_shutdown.append(stop_upstream)
    app.on_cleanup.append(close)
    return app


# -- serving ------------------------------------------------------------------------------


def ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    return ctx


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def address(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


async def _run(
    config: Config, sock: socket.socket, ctx: ssl.SSLContext | None, out: TextIO | None
) -> None:
    app = make_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, read_bufsize=READ_BUFSIZE)
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=ctx)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if out is not None:
        out.write(f"listening on {address(sock, ctx is not None)}\n")
        out.flush()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(config: Config, out: TextIO = sys.stdout) -> int:
    """Serve until SIGINT/SIGTERM; the listening address goes to `out` once ready."""
    config.check()
    ctx = ssl_context(config)
    if config.auth == "token" and config.token_key is None:
        config.token_key = os.urandom(32)  # one key for every worker
    sock = bind(config.host, config.port)
    children = []
    for _ in range(config.workers - 1):
        pid = os.fork()
        if pid == 0:
            try:
                asyncio.run(_run(config, sock, ctx, None))
            finally:
                os._exit(0)
        children.append(pid)
    try:
        asyncio.run(_run(config, sock, ctx, out))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)
        sock.close()
    return 0
