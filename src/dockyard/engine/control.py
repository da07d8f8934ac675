"""pause/unpause, top, rename and container prune: container state changes
beyond the lifecycle in `containers.py`.

Paused is the freezer's word: `pause` freezes the container's cgroup and
leaves a `paused` marker in the container's directory; `Container.status()`
believes the marker only while the freezer agrees (`frozen`), so a container
thawed behind dockyard's back reads as running again.
"""

from __future__ import annotations

import os

from dockyard.engine.containers import EngineError
from dockyard.storage import db

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.engine.containers import Container, Engine
    from dockyard.runtime.state import StateRoot

PAUSED_MARKER = "paused"


def _runtime_root(container: Container) -> StateRoot:
    from dockyard.runtime.state import StateRoot

    return StateRoot(container.runtime_root)


def frozen(container: Container) -> bool:
    """Whether the runtime sees the container paused (its cgroup frozen)."""
    from dockyard.runtime.errors import RuntimeFailure

    try:
        return _runtime_root(container).load(container.id).status() == "paused"
    except (OSError, RuntimeFailure):
        return False


def pause(engine: Engine, name: str) -> Container:
    from dockyard.runtime import container as runtime
    from dockyard.runtime.errors import RuntimeFailure

    target = engine.get(name)
    status = target.status()
    if status == "paused":
        raise EngineError(f"Container {target.id} is already paused")
    if status != "running":
        raise EngineError(f"Container {target.id} is not running")
    with open(os.path.join(target.dir, PAUSED_MARKER), "w"):
        pass
    try:
        runtime.pause(_runtime_root(target), target.id)
    except RuntimeFailure as err:
        _unmark(target)
        raise EngineError(f"Cannot pause container {target.id}: {err}") from None
    return target


def unpause(engine: Engine, name: str) -> Container:
    from dockyard.runtime import container as runtime
    from dockyard.runtime.errors import RuntimeFailure

    target = engine.get(name)
    if target.status() != "paused":
        raise EngineError(f"Container {target.id} is not paused")
    try:
        runtime.resume(_runtime_root(target), target.id)
    except RuntimeFailure as err:
        raise EngineError(f"Cannot unpause container {target.id}: {err}") from None
    _unmark(target)
    return target


def thaw_for_signal(container: Container) -> None:
    """A signal to a frozen container is delivered when it thaws: thaw it (Docker does)."""
    from dockyard.runtime import container as runtime
    from dockyard.runtime.errors import RuntimeFailure

    try:
        runtime.resume(_runtime_root(container), container.id)
    except RuntimeFailure:
        pass
    _unmark(container)


def _unmark(container: Container) -> None:
    try:
        os.unlink(os.path.join(container.dir, PAUSED_MARKER))
    except FileNotFoundError:
        pass


def top(engine: Engine, name: str, ps_args: list[str]) -> tuple[list[str], list[list[str]]]:
    """`ps` over the container's processes: the header's titles and one row per process."""
    import subprocess

    from dockyard.runtime import container as runtime
    from dockyard.runtime.errors import RuntimeFailure

    target = engine.get(name)
    if target.status() not in ("running", "paused"):
        raise EngineError(f"Container {target.id} is not running")
    try:
        pids = set(runtime.processes(_runtime_root(target), target.id))
    except RuntimeFailure as err:
        raise EngineError(f"Container {target.id} is not running: {err}") from None
    args = ps_args or ["-ef"]
    out = subprocess.run(["ps", *args], capture_output=True, text=True, check=False)
    lines = out.stdout.splitlines()
    if out.returncode != 0 or not lines:
        raise EngineError(f"Error running ps: {out.stderr.strip() or 'no output'}")
    titles = lines[0].split()
    if "PID" not in titles:
        raise EngineError(f"Couldn't find PID field in ps output: {' '.join(args)}")
    column = titles.index("PID")
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) > column and fields[column].isdigit() and int(fields[column]) in pids:
            rows.append(fields)
    return titles, rows


def rename(engine: Engine, old: str, new: str) -> Container:
    import sqlite3

    from dockyard.engine.containers import check_name

    if not new.strip():
        raise EngineError("Neither old nor new names may be empty")
    new = check_name(new)
    target = engine.get(old)
    if target.name == new:
        raise EngineError("Renaming a container with the same name as its current name")
    try:
        with db.transaction(engine.conn) as conn:
            conn.execute("UPDATE containers SET name = ? WHERE id = ?", (new, target.id))
    except sqlite3.IntegrityError:
        owner = engine.conn.execute("SELECT id FROM containers WHERE name = ?", (new,)).fetchone()
        raise EngineError(
            f'Conflict. The container name "/{new}" is already in use by container '
            f'"{owner[0] if owner else "?"}". You have to remove (or rename) that container '
            "to be able to reuse that name."
        ) from None
    return engine.get(target.id)


def prune(engine: Engine) -> tuple[list[str], int]:
    """Remove every stopped container; their IDs and the bytes their layers held."""
    from dockyard.storage.snapshots import SnapshotNotFound

    deleted: list[str] = []
    reclaimed = 0
    for container in engine.list_containers(all=True):
        if container.status() not in ("exited", "created", "dead"):
            continue
        try:
            size, _ = engine.images.snapshots.usage(f"container-{container.id}")
        except (SnapshotNotFound, OSError):
            size = 0
        try:
            engine.remove(container.id)
        except EngineError:
            continue  # started meanwhile: not ours to remove
        deleted.append(container.id)
        reclaimed += size
    return deleted, reclaimed
