"""The pull-through cache (`registry serve --proxy URL`): a mirror of another registry.

`ProxyUpstream` is the server's `Upstream` (upstream.py): it asks the upstream
registry through the registry client (client.py: the ping, Basic credentials or
Bearer tokens, redirects), each call in a thread, and keeps what it gets in the
server's storage, as distribution's `proxy: remoteurl:` does:

- a manifest by digest that isn't stored is fetched, its digest verified, and
  stored (before its blobs: a cache has no push order to check);
- a tag is asked of the upstream on every GET/HEAD (a HEAD there: the digest it
  names now); a new digest is fetched and the tag moved. When the upstream can't
  be reached or doesn't know the tag any more, the cached tag is served;
- a blob that isn't stored is fetched once however many ask for it at once
  (proxy_blobs.py), streamed to each of them while it is written and verified;
  a HEAD of one only asks the upstream's HEAD. A blob stored for another
  repository is linked without a download when a manifest of this repository
  needs it (else after the upstream's HEAD says the repository has it);
- tag lists are the upstream's, the cached ones when it can't be reached.

Repository names are the upstream's, except that Docker Hub's official images
are asked for as `library/NAME` when a client asks for `NAME`. Upstream answers
become the spec's errors: unknown → MANIFEST_UNKNOWN / BLOB_UNKNOWN (404),
unreachable with nothing cached → UNAVAILABLE (503), refused → DENIED (403).
"""

from __future__ import annotations

import asyncio
import os

from dockyard.registry import names
from dockyard.registry.errors import RegistryError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp import web

    from dockyard.registry.client_errors import RegistryError as ClientError
    from dockyard.registry.proxy_blobs import BlobFetch
    from dockyard.registry.storage import RegistryStorage

DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
STOP_WAIT = 10.0
"""Seconds a stopping server waits for the fetches it is abandoning."""


def parse_url(url: str) -> tuple[str | None, str]:
    """(scheme or None, host[:port]) of a `--proxy` value; ValueError when it isn't one."""
    text = url.strip()
    scheme: str | None = None
    if "://" in text:
        given, _, text = text.partition("://")
        scheme = given.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"invalid --proxy {url!r}: use http:// or https://")
    host = text.rstrip("/")
    if not host or any(c in host for c in "/?#@ \t"):
        raise ValueError(f"invalid --proxy {url!r}: use the registry's URL (https://HOST[:PORT])")
    return scheme, host


class ProxyUpstream:
    """The upstream registry of a pull-through cache, and the fetches under way."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout: float | None = None,
    ) -> None:
        from dockyard.registry.client import RegistryClient
        from dockyard.registry.client_auth import Credentials
        from dockyard.registry.client_http import DEFAULT_TIMEOUT
        from dockyard.registry.config import is_loopback

        scheme, host = parse_url(url)
        self.url = url
        self.host = host
        creds = Credentials(username, password or "") if username else None
        self.client = RegistryClient(
            host,
            insecure=scheme == "http" or (scheme is None and is_loopback(host)),
            credentials=creds,
            timeout=timeout or DEFAULT_TIMEOUT,
            scheme=scheme,
            lookup_credentials=False,  # a server uses what it was given, not root's logins
        )
        self.hub = host.lower() in DOCKER_HUB_HOSTS
        self.fetches: dict[str, BlobFetch] = {}  # digest -> the fetch under way
        self._shared: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._stopping = False

    def __repr__(self) -> str:
        return f"ProxyUpstream({self.url!r})"

    def remote(self, repo: str) -> str:
        """The upstream's name of `repo`: Docker Hub's official images are `library/…`."""
        return f"library/{repo}" if self.hub and "/" not in repo else repo

    def server_error(self, err: ClientError, unknown: RegistryError) -> RegistryError:
        """The spec's error for what the upstream said (`unknown` for a 404)."""
        from dockyard.registry.client_errors import (
            RegistryNotFound,
            RegistryUnauthorized,
            RegistryUnreachable,
        )

        if isinstance(err, RegistryNotFound):
            return unknown
        if isinstance(err, RegistryUnreachable):
            return RegistryError("UNAVAILABLE", f"not cached here, and {err}")
        if isinstance(err, RegistryUnauthorized):
            return RegistryError("DENIED", f"the upstream registry refused this mirror: {err}")
        if err.status == 429:
            return RegistryError("TOOMANYREQUESTS", f"the upstream registry said: {err}")
        return RegistryError("UNKNOWN", f"the upstream registry failed: {err}", status=502)

    async def close(self) -> None:
        """Stop the fetches under way (the server is stopping); close the connections."""
        self._stopping = True
        for fetch in list(self.fetches.values()):
            fetch.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_WAIT)
        self.client.close()

    async def _once(self, key: tuple[str, str], make: Callable[[], Awaitable[bool]]) -> bool:
        """One `make()` at a time per key; concurrent callers share its outcome."""
        task = self._shared.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._shared[key] = task

            def forget(done: asyncio.Future[bool]) -> None:
                if self._shared.get(key) is done:
                    del self._shared[key]
                if not done.cancelled():
                    done.exception()  # retrieved: no "never retrieved" warning

            task.add_done_callback(forget)
        return await asyncio.shield(task)  # a caller that goes away doesn't stop it

    # -- manifests and tags -------------------------------------------------------------

    async def fetch_manifest(self, storage: RegistryStorage, repo: str, reference: str) -> bool:
        return await self._once(
            (repo, reference), lambda: self._fetch_manifest(storage, repo, reference)
        )

    async def _fetch_manifest(self, storage: RegistryStorage, repo: str, reference: str) -> bool:
        from dockyard.registry.client_errors import RegistryError as ClientError
        from dockyard.registry.client_errors import RegistryNotFound

        remote = self.remote(repo)
        try:
            if not names.is_digest(reference):
                digest = await asyncio.to_thread(self._head_manifest, remote, reference)
                if digest is None:
                    return False
                if digest and storage.meta.manifest(repo, digest) is not None:
                    if storage.meta.tag(repo, reference) != digest:
                        storage.meta.set_tag(repo, reference, digest)
                    return True
            manifest = await asyncio.to_thread(self.client.get_manifest, remote, reference)
        except RegistryNotFound:
            return False
        except ClientError as err:
            unknown = RegistryError("MANIFEST_UNKNOWN", detail={"reference": reference})
            raise self.server_error(err, unknown) from None
        try:
            await storage.put_manifest(
                repo, reference, manifest.data, manifest.media_type or None, check_refs=False
            )
        except RegistryError as err:  # not a manifest this registry can keep, wrong digest
            raise RegistryError(
                "UNKNOWN",
                f"the upstream's manifest {remote}:{reference} can't be cached: {err.message}",
                status=502,
            ) from None
        return True

    def _head_manifest(self, remote: str, tag: str) -> str | None:
        """The digest the upstream's tag names ("" when it doesn't say); None: no such tag."""
        from dockyard.registry.client import MANIFEST_TYPES

        resp = self.client.request(
            "HEAD",
            f"/v2/{remote}/manifests/{tag}",
            f"repository:{remote}:pull",
            {"Accept": ", ".join(MANIFEST_TYPES)},
        )
        if resp.status == 404:
            resp.release()
            return None
        if resp.status != 200:
            raise self.client.fail(resp, f"{self.host}/{remote}:{tag}")
        resp.release()
        return resp.header("Docker-Content-Digest") or ""

    async def tags(self, repo: str) -> list[str] | None:
        """The upstream's tags of `repo`; None when it can't say (the cached ones are listed)."""
        from dockyard.registry.client_errors import RegistryError as ClientError

        try:
            return await asyncio.to_thread(self.client.tags, self.remote(repo))
        except ClientError:
            return None

    # -- blobs --------------------------------------------------------------------------

    async def serve_blob(
        self,
        storage: RegistryStorage,
        request: web.Request,
        repo: str,
        digest: str,
        headers: dict[str, str],
    ) -> web.StreamResponse | None:
        from dockyard.registry import proxy_blobs

        names.check_digest(digest)
        source = await self._blob_source(storage, repo, digest, request.method == "HEAD")
        if source is None:
            return None
        if isinstance(source, int):
            return await proxy_blobs.head_response(request, headers, source)
        return await proxy_blobs.respond(source, request, headers)

    async def _blob_source(
        self, storage: RegistryStorage, repo: str, digest: str, head: bool
    ) -> BlobFetch | int | None:
        """Where a blob `repo` lacks comes from: a fetch (started or joined), its size
        (a HEAD the upstream answered), or None when it is stored and now linked."""
        size: int | None = None
        fetch = self.fetches.get(digest)
        mine = fetch is not None and repo in fetch.repos
        if (
            not mine
            and (fetch is not None or storage.blobs.has(digest))
            and not storage.meta.references(repo, digest)
        ):
            size = await self._stat(repo, digest)  # may `repo` have it? BLOB_UNKNOWN if not
            fetch = self.fetches.get(digest)
        if fetch is not None:
            fetch.repos.add(repo)
            return fetch
        if storage.blobs.has(digest):
            storage.meta.link(repo, digest)
            return None
        if head:
            return size if size is not None else await self._stat(repo, digest)
        return self._start(storage, repo, digest)

    async def _stat(self, repo: str, digest: str) -> int:
        """The upstream's size of blob `digest` of `repo` (a HEAD)."""
        from dockyard.registry.client_errors import RegistryError as ClientError

        unknown = RegistryError("BLOB_UNKNOWN", detail={"digest": digest})
        try:
            size = await asyncio.to_thread(self.client.blob_size, self.remote(repo), digest)
        except ClientError as err:
            raise self.server_error(err, unknown) from None
        if size is None:
            raise unknown
        return size

    def _start(self, storage: RegistryStorage, repo: str, digest: str) -> BlobFetch:
        from dockyard.registry.proxy_blobs import BlobFetch

        fetch = BlobFetch(digest, repo)
        self.fetches[digest] = fetch
        task = asyncio.ensure_future(self._run(storage, fetch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fetch

    async def _run(self, storage: RegistryStorage, fetch: BlobFetch) -> None:
        """Fetch, store and link the blob; then tell its readers how it went."""
        from dockyard.registry.client_errors import RegistryError as ClientError
        from dockyard.registry.proxy_blobs import FetchStopped
        from dockyard.storage.content import ContentError, IngestIOError

        digest = fetch.digest
        error: RegistryError | None = None
        try:
            await asyncio.to_thread(
                fetch.download,
                self.client,
                self.remote(next(iter(fetch.repos))),
                storage.blobs,
                asyncio.get_running_loop(),
                lambda: self._stopping,
            )
            path = storage.blobs._blob_path(digest)
            await storage.keep(path, await asyncio.to_thread(os.stat, path))
            for repo in sorted(fetch.repos):
                storage.meta.link(repo, digest)
        except ClientError as err:
            error = self.server_error(err, RegistryError("BLOB_UNKNOWN", detail={"digest": digest}))
        except IngestIOError as err:
            error = RegistryError("UNKNOWN", f"storage error: {err}")
        except ContentError as err:  # digest or size wrong
            error = RegistryError(
                "UNKNOWN", f"the upstream sent blob {digest} wrong: {err}", status=502
            )
        except FetchStopped as err:
            error = RegistryError("UNAVAILABLE", str(err))
        except OSError as err:
            error = RegistryError("UNKNOWN", f"storage error: {err.strerror or err}")
        except asyncio.CancelledError:
            error = RegistryError("UNAVAILABLE", "the server is stopping")
            raise
        except Exception as err:  # a bug: in the log; the readers must not wait forever
            import logging

            logging.getLogger("aiohttp.web").exception("fetching blob %s", digest)
            error = RegistryError("UNKNOWN", f"internal error: {err}")
        finally:
            if self.fetches.get(digest) is fetch:
                del self.fetches[digest]
            fetch.finish(error)
