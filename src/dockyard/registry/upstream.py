"""The hook of a pull-through cache (`--proxy URL`): where the server looks beyond storage.

A server with an `Upstream` (proxy.py's `ProxyUpstream`, or a test's fake) asks it:

- for a manifest by tag, on every GET/HEAD before storage is looked at (the tag
  may have moved upstream); for a manifest by digest, when storage lacks it.
  It stores what it finds with the storage's own checks (digest verified);
  False means the upstream doesn't have it, a RegistryError that it couldn't
  be asked. The handler then serves storage's copy, when there is one;
- for a blob storage lacks: it answers the request itself (the blob streamed
  while it is stored) or returns None once the blob is stored and linked;
- for a repository's tags (None: ask storage).

Writes are refused on a proxy: the server checks that before any handler runs.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Protocol

    from aiohttp import web

    from dockyard.registry.storage import RegistryStorage
else:
    Protocol = object


class Upstream(Protocol):
    """Fills a `RegistryStorage` from another registry."""

    async def fetch_manifest(self, storage: RegistryStorage, repo: str, reference: str) -> bool:
        """Store manifest `reference` (tag or digest) of `repo` (and tag it); True if found."""
        ...

    async def serve_blob(
        self,
        storage: RegistryStorage,
        request: web.Request,
        repo: str,
        digest: str,
        headers: dict[str, str],
    ) -> web.StreamResponse | None:
        """Answer a GET/HEAD of blob `digest` that `repo` lacks (with `headers`), or
        return None when it is stored and linked now; BLOB_UNKNOWN when nowhere."""
        ...

    async def tags(self, repo: str) -> list[str] | None:
        """The upstream's tags of `repo`, or None (storage's are listed)."""
        ...

    async def close(self) -> None:
        """The server is stopping."""
        ...
