"""`client.volumes` of the Python API: docker-py's Volume and VolumeCollection over
the engine's `VolumeStore` (engine/volumes.py), as `dockyard volume` uses it.

An unknown volume raises `VolumeNotFound` (an EngineError, as `ContainerNotFound`
is for containers); a volume in use can't be removed (`VolumeError`).
"""

from __future__ import annotations

from dockyard.engine.volumes import VolumeError, VolumeNotFound

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.client import Client
    from dockyard.engine.volumes import Volume as _Record
    from dockyard.engine.volumes import VolumeStore

__all__ = ["Volume", "VolumeCollection", "VolumeError", "VolumeNotFound"]


class Volume:
    """docker-py's Volume model; `attrs` is `dockyard volume inspect`'s object."""

    def __init__(self, client: Client, record: _Record) -> None:
        self.client = client
        self._record = record

    @property
    def id(self) -> str:
        return self._record.name

    @property
    def short_id(self) -> str:
        return self._record.name[:12]

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def attrs(self) -> dict[str, Any]:
        return self._record.inspect()

    def reload(self) -> None:
        self._record = self.client.volumes.store.get(self.name)

    def remove(self, force: bool = False) -> None:
        """Refused while a container uses it, force or not (as Docker does)."""
        self.client.volumes.store.remove(self.name, force=force)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Volume) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("Volume", self.id))

    def __repr__(self) -> str:
        return f"<Volume: {self.short_id}>"


def _filter_strings(filters: dict[str, Any] | None) -> list[str]:
    """docker-py's filters dict ({"label": ["a=b"], "dangling": True}) as KEY=VALUE."""
    result = []
    for key, value in (filters or {}).items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            text = str(item).lower() if isinstance(item, bool) else str(item)
            result.append(f"{key}={text}")
    return result


class VolumeCollection:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._store: VolumeStore | None = None

    @property
    def store(self) -> VolumeStore:
        if self._store is None:
            from dockyard.engine.volumes import VolumeStore

            engine = self.client.engine
            self._store = VolumeStore(engine.root, engine.conn)
            self._store.purge_trash()  # what a crash left, as the CLI does first
        return self._store

    def create(
        self,
        name: str | None = None,
        driver: str | None = None,
        driver_opts: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> Volume:
        """A new volume (a random name without `name`), or the existing one of that name."""
        record = self.store.create(
            name, labels=labels, options=driver_opts, driver=driver or "local"
        )
        return Volume(self.client, record)

    def get(self, volume_id: str) -> Volume:
        return Volume(self.client, self.store.get(volume_id))

    def list(self, filters: dict[str, Any] | None = None) -> list[Volume]:
        """Filters as Docker's: dangling, name, label, driver."""
        records = self.store.list_volumes(_filter_strings(filters))
        return [Volume(self.client, r) for r in records]

    def prune(self, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Unused anonymous volumes (every unused one with filters={"all": True})."""
        wanted = dict(filters or {})
        every = wanted.pop("all", False)
        if wanted:
            raise VolumeError(
                f"volume prune filter {', '.join(sorted(wanted))} is not supported yet"
            )
        if isinstance(every, (list, tuple)):
            every = every[-1] if every else False
        removed, size = self.store.prune(all=str(every).lower() in ("true", "1"))
        return {"VolumesDeleted": removed, "SpaceReclaimed": size}
