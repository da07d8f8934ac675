"""`dockyard system check [--repair]`: is the store consistent, and mend what a crash left.

Every check reads what is on disk and in the DB; nothing is trusted from a
previous run. `repair` only removes what no record needs (temp files, orphan
directories, stale mounts and runtime state, leases of dead ingests) and never
deletes a blob or a snapshot an image or container still names.
"""

from __future__ import annotations

import json
import os
import shutil

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.engine.containers import Engine

STALE_INGEST_SECONDS = 3600.0
# A create or unpack in progress in another process looks like an orphan for a
# moment (directory or snapshot made, row not yet written): leave young ones be.
GRACE_SECONDS = 60.0


def _young(path: str) -> bool:
    import time

    try:
        return time.time() - os.path.getmtime(path) < GRACE_SECONDS
    except OSError:
        return False


def _unpacker_alive(key: str) -> bool:
    """extract-<pid>-…: is the process that started this unpack still there?"""
    from dockyard.runtime.state import pid_start_time

    pid = key.split("-", 2)[1]
    return pid.isdigit() and pid_start_time(int(pid)) is not None


class Finding:
    """One problem: what is wrong, and whether `--repair` mended it."""

    def __init__(self, area: str, message: str, repaired: bool = False) -> None:
        self.area = area
        self.message = message
        self.repaired = repaired

    def __str__(self) -> str:
        return f"{self.area}: {self.message}" + (" (repaired)" if self.repaired else "")


def check(engine: Engine, repair: bool = False) -> list[Finding]:
    findings: list[Finding] = []
    findings += _database(engine)
    findings += _leases(engine, repair)
    findings += _blobs(engine, repair)
    findings += _images(engine)
    findings += _snapshots(engine, repair)
    findings += _containers(engine, repair)
    return findings


def _database(engine: Engine) -> list[Finding]:
    result = engine.conn.execute("PRAGMA integrity_check").fetchone()[0]
    return [] if result == "ok" else [Finding("database", f"integrity check: {result}")]


def _leases(engine: Engine, repair: bool) -> list[Finding]:
    """Leases of ingests that died (or expired): they would keep garbage forever."""
    leases = engine.images.leases
    stale = leases.stale()
    if repair and stale:
        leases.drop(info.id for info, _ in stale)
    return [
        Finding("leases", f"{info.id[:12]} (pid {info.pid}): {reason}", repaired=repair)
        for info, reason in stale
    ]


def _blobs(engine: Engine, repair: bool) -> list[Finding]:
    content = engine.images.content
    findings = [
        Finding("blobs", f"{digest} does not match its digest (corrupt)")
        for digest in content.digests()
        if not content.verify(digest)
    ]
    for path in content.stale_ingests(STALE_INGEST_SECONDS):
        findings.append(Finding("blobs", f"unfinished write {path}", repaired=repair))
    if repair:
        content.remove_stale_ingests(STALE_INGEST_SECONDS)
    rows = engine.conn.execute("SELECT DISTINCT digest FROM blob_refs").fetchall()
    findings += [
        Finding("blobs", f"{row[0]} is referenced but missing")
        for row in rows
        if not content.has(row[0])
    ]
    return findings


def _images(engine: Engine) -> list[Finding]:
    findings: list[Finding] = []
    content = engine.images.content
    for image in engine.images.list_images():
        for digest in (image.id, image.manifest_digest):
            if not content.has(digest):
                findings.append(Finding("images", f"{image.short_id}: blob {digest} is missing"))
        if content.has(image.manifest_digest):
            try:
                manifest = json.loads(content.read(image.manifest_digest))
            except ValueError:
                findings.append(Finding("images", f"{image.short_id}: manifest is unreadable"))
                continue
            for layer in manifest.get("layers") or []:
                if not content.has(layer["digest"]):
                    findings.append(
                        Finding("images", f"{image.short_id}: layer {layer['digest']} is missing")
                    )
    return findings


def _snapshots(engine: Engine, repair: bool) -> list[Finding]:
    snapshots = engine.images.snapshots
    findings = [Finding("snapshots", problem) for problem in snapshots.check()]
    if repair:
        findings += [
            Finding("snapshots", f"orphan directory {path}", repaired=True)
            for path in snapshots.cleanup()
        ]
    return findings


def _containers(engine: Engine, repair: bool) -> list[Finding]:
    from dockyard.runtime import container as runtime
    from dockyard.runtime.state import StateRoot
    from dockyard.storage.snapshots import SnapshotNotFound, unmount

    findings: list[Finding] = []
    known = {c.id: c for c in engine.list_containers(all=True)}
    for container in known.values():
        if not os.path.exists(os.path.join(container.dir, "config.json")):
            findings.append(Finding("containers", f"{container.id[:12]}: bundle is missing"))
        try:
            engine.images.snapshots.stat(f"container-{container.id}")
        except SnapshotNotFound:
            findings.append(
                Finding("containers", f"{container.id[:12]}: writable layer is missing")
            )
        rootfs = os.path.join(container.dir, "rootfs")
        if os.path.ismount(rootfs) and container.status() not in (
            "running",
            "paused",
            "restarting",
        ):
            findings.append(
                Finding("containers", f"{container.id[:12]}: rootfs still mounted", repaired=repair)
            )
            if repair:
                unmount(rootfs)
    directory = os.path.join(engine.root, "containers")
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        path = os.path.join(directory, name)
        if name not in known and not _young(path):
            findings.append(Finding("containers", f"orphan directory {path}", repaired=repair))
            if repair:
                if os.path.ismount(os.path.join(path, "rootfs")):
                    unmount(os.path.join(path, "rootfs"))
                shutil.rmtree(path, ignore_errors=True)
    state_root = StateRoot(engine.runtime_root)
    for cid in state_root.ids():
        if cid not in known:
            findings.append(
                Finding("runtime", f"state of unknown container {cid[:12]}", repaired=repair)
            )
            if repair:
                runtime.delete(state_root, cid, force=True)
    for info in list(engine.images.snapshots.walk()):
        key = info.name
        orphan_dir = os.path.join(directory, key.removeprefix("container-"))
        if (
            key.startswith("container-")
            and key.removeprefix("container-") not in known
            and not _young(orphan_dir)
        ):
            findings.append(
                Finding("snapshots", f"writable layer {key} has no container", repaired=repair)
            )
            if repair:
                engine.images.snapshots.remove(key)
        elif key.startswith("extract-") and not _unpacker_alive(key):
            findings.append(Finding("snapshots", f"unfinished layer unpack {key}", repaired=repair))
            if repair:
                engine.images.snapshots.remove(key)
    return findings
