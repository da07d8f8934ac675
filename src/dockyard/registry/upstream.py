"""The hook of a pull-through cache (`--proxy URL`): where the server looks on a miss.

When a manifest or blob GET/HEAD finds nothing in storage and the server has an
`Upstream`, it asks it to fetch the missing content into storage (with the
storage's own verified writers, so nothing unverified is ever served), then
looks again. An implementation (over the registry client) comes later; the
server needs nothing more than this protocol.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Protocol

    from dockyard.registry.storage import RegistryStorage
else:
    Protocol = object


class Upstream(Protocol):
    """Fills a `RegistryStorage` from another registry on a miss."""

    async def fetch_manifest(self, storage: RegistryStorage, repo: str, reference: str) -> bool:
        """Store manifest `reference` (tag or digest) of `repo` (and tag it); True if found."""
        ...

    async def fetch_blob(self, storage: RegistryStorage, repo: str, digest: str) -> bool:
        """Store blob `digest` and link it into `repo`; True if found."""
        ...
