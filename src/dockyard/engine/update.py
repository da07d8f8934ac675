"""`update`: change a container's limits (and restart policy) while it runs.

The new resources go to the running container's cgroup (`/dockyard/<id>`)
through the runtime's cgroup manager, and into its bundle's config.json and
record, so the next start keeps them.
"""

from __future__ import annotations

import json
import os

from dockyard.engine.containers import EngineError
from dockyard.storage import db

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.containers import Container, Engine


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def update(
    engine: Engine,
    name: str,
    resources: dict[str, Any] | None = None,
    restart_policy: dict[str, Any] | None = None,
) -> Container:
    from dockyard.runtime.errors import RuntimeFailure
    from dockyard.runtime.state import write_atomic

    container = engine.get(name)
    resources = resources or {}
    if restart_policy and restart_policy.get("name") != "no" and container.config.get("AutoRemove"):
        raise EngineError("Restart policy cannot be updated because AutoRemove is enabled")
    path = os.path.join(container.dir, "config.json")
    with open(path, "rb") as f:
        config = json.load(f)
    linux = config.setdefault("linux", {})
    current = dict(linux.get("resources") or {})
    memory = {**(current.get("memory") or {}), **(resources.get("memory") or {})}
    if memory.get("swap") and memory.get("limit") and 0 < memory["swap"] < memory["limit"]:
        raise EngineError(
            "Memory limit should be smaller than already set memoryswap limit, "
            "update the memoryswap at the same time"
        )
    merged = _merge(current, resources)
    if resources and container.status() in ("running", "paused", "restarting"):
        from dockyard.runtime.cgroups.base import open_manager

        cgroup = str(linux.get("cgroupsPath") or f"/dockyard/{container.id}")
        try:
            open_manager(cgroup).apply({k: v for k, v in resources.items() if k != "devices"})
        except (RuntimeFailure, OSError) as err:
            raise EngineError(f"Cannot update container {container.id}: {err}") from None
    linux["resources"] = merged
    write_atomic(path, json.dumps(config).encode())
    record = dict(container.config)
    if restart_policy:
        record["RestartPolicy"] = restart_policy
    with db.transaction(engine.conn) as conn:
        conn.execute(
            "UPDATE containers SET config = ? WHERE id = ?", (json.dumps(record), container.id)
        )
    return engine.get(container.id)


def restart(engine: Engine, name: str, timeout: float | None = None) -> Container:
    """stop (its StopSignal, then SIGKILL after the timeout), then start."""
    from dockyard.engine import autoremove

    container = engine.get(name)
    held = autoremove.hold(container)  # AutoRemove: a restart is no exit for good
    try:
        engine.stop(container.id, timeout=timeout)
        return engine.start(container.id)
    finally:
        if held:
            autoremove.release(container)
