"""`dockyard system check [--repair]`: is the store consistent, and mend what a crash left.

Every check reads what is on disk and in the DB; nothing is trusted from a
previous run. `repair` only removes what no record needs (temp files, orphan
directories, stale mounts and runtime state, leases of dead ingests) and never
deletes a blob or a snapshot an image or container still names.

Networks (`_network`): a container whose monitor was killed keeps its
endpoints (addresses) and published ports in the DB and its rules in the nft
table; a crash between creating a veth and recording it leaves a veth; a
flushed ruleset leaves the table out of step; a DNS server may outlive what it
serves, or be gone while containers need it. `repair` releases the endpoints
of containers that are not running, deletes the stray veths, loads the table
again and stops (or starts) the DNS server.
"""

from __future__ import annotations

import json
import os
import shutil

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.engine.containers import Container, Engine

STALE_INGEST_SECONDS = 3600.0
# A create or unpack in progress in another process looks like an orphan for a
# moment (directory or snapshot made, row not yet written): leave young ones be.
GRACE_SECONDS = 60.0
BUILD_LABEL = "dockyard.build.pid"  # on a build step's container: the builder's pid


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


def _remove_build_snapshot(engine: Engine, key: str) -> None:
    """A dead build's view or active snapshot (build-<pid>-…), unmounted first."""
    from dockyard.storage.snapshots import SnapshotNotFound, unmount_all

    where = os.path.join(engine.root, "tmp", key)
    if os.path.isdir(where):
        unmount_all(where)  # (a bind of one layer: ismount can't tell on the same fs)
    try:
        engine.images.snapshots.remove(key)
    except SnapshotNotFound:
        pass


def _build_leftovers(engine: Engine, repair: bool) -> list[Finding]:
    """What a killed build left under <root>/tmp (build-<pid>-…): mount points,
    downloads, secret files of RUN mounts."""
    import shutil

    from dockyard.storage.snapshots import unmount_all

    tmp = os.path.join(engine.root, "tmp")
    try:
        names = sorted(os.listdir(tmp))
    except FileNotFoundError:
        return []
    findings = []
    for name in names:
        if not name.startswith("build-") or _unpacker_alive(name):
            continue
        findings.append(Finding("build", f"leftover of a killed build: tmp/{name}", repair))
        if repair:
            path = os.path.join(tmp, name)
            if os.path.isdir(path):
                unmount_all(path)
            shutil.rmtree(path, ignore_errors=True)
    return findings


def _start_lock(container: Container) -> int | None:
    """The container's start lock taken (an fd to close; -1: it was never started), or
    None while a `start` holds it. Held, no `start` can begin meanwhile."""
    import fcntl

    try:
        fd = os.open(os.path.join(container.dir, "start.lock"), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


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
    findings += _build_leftovers(engine, repair)
    findings += _network(engine, repair)
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
    for container in list(known.values()):
        builder = str((container.config.get("Labels") or {}).get(BUILD_LABEL) or "")
        if builder and not _unpacker_alive(f"build-{builder}"):
            findings.append(
                Finding("build", f"{container.id[:12]}: step of a killed build", repaired=repair)
            )
            if repair:
                engine.remove(container.id, force=True, volumes=True)
                del known[container.id]
            continue
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
            continue
        # A monitor killed with its container never deleted the runtime's state, and
        # the next `start` would fail on it ("container with id … already exists").
        lock = _start_lock(known[cid])
        if lock is None:
            continue  # being started
        try:
            if known[cid].status() not in ("running", "paused", "restarting"):
                findings.append(
                    Finding(
                        "runtime",
                        f"state of container {cid[:12]}, which is not running",
                        repaired=repair,
                    )
                )
                if repair:
                    runtime.delete(state_root, cid, force=True)
        finally:
            if lock >= 0:
                os.close(lock)
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
        elif key.startswith("build-") and not _unpacker_alive(key):
            findings.append(Finding("snapshots", f"unfinished build step {key}", repaired=repair))
            if repair:
                _remove_build_snapshot(engine, key)
        elif key.startswith("extract-") and not _unpacker_alive(key):
            findings.append(Finding("snapshots", f"unfinished layer unpack {key}", repaired=repair))
            if repair:
                engine.images.snapshots.remove(key)
    return findings


# ------------------------------------------------------------------ networks


def _network(engine: Engine, repair: bool) -> list[Finding]:
    if not engine.conn.execute("SELECT 1 FROM networks LIMIT 1").fetchone():
        return []  # networking never used in this root: nothing to look at (or to create)
    findings = _stale_endpoints(engine, repair)
    findings += _stray_veths(engine, repair)
    findings += _rules(engine, repair)
    findings += _dns_server(engine, repair)
    return findings


def _stale_endpoints(engine: Engine, repair: bool) -> list[Finding]:
    """Addresses and ports held for containers that are not running (or are gone)."""
    from dockyard.engine import networking

    held: dict[str, list[str]] = {}
    for cid, ip in engine.conn.execute("SELECT container_id, ip FROM endpoints"):
        held.setdefault(cid, []).append(ip)
    for cid, host_ip, port, proto in engine.conn.execute(
        "SELECT container_id, host_ip, host_port, proto FROM port_mappings"
    ):
        held.setdefault(cid, []).append(f"{host_ip or '0.0.0.0'}:{port}/{proto}")
    known = {c.id: c for c in engine.list_containers(all=True)}
    findings = []
    for cid, what in sorted(held.items()):
        container = known.get(cid)
        lock = _start_lock(container) if container is not None else -1
        if lock is None:
            continue  # being started: its addresses are handed out before its monitor runs
        try:
            if container is not None and container.status() in ("running", "paused", "restarting"):
                continue
            name = f"{cid[:12]} ({container.name})" if container is not None else cid[:12]
            state = "is not running" if container is not None else "does not exist"
            findings.append(
                Finding(
                    "network",
                    f"container {name} {state} but holds {', '.join(what)}",
                    repaired=repair,
                )
            )
            if repair:
                networking.release(engine.root, engine.conn, cid)
        finally:
            if lock >= 0:
                os.close(lock)
    return findings


def _stray_veths(engine: Engine, repair: bool) -> list[Finding]:
    """Host ends of veth pairs that are this root's (on one of its bridges, or named
    for one of its containers) but that no endpoint names. Another root's veths,
    on its own bridges, are not looked at."""
    import re

    from dockyard.network import links
    from dockyard.network.store import veth_name

    bridges = {r[0] for r in engine.conn.execute("SELECT bridge FROM networks")}
    network_ids = [r[0] for r in engine.conn.execute("SELECT id FROM networks")]
    cids = [r[0] for r in engine.conn.execute("SELECT id FROM containers")]
    ours = {veth_name(c, n) for c in cids for n in network_ids}
    recorded = {r[0] for r in engine.conn.execute("SELECT host_ifname FROM endpoints")}
    findings = []
    for name in links.host_veths():
        if not re.fullmatch(r"veth[0-9a-f]{10}", name) or name in recorded:
            continue
        try:
            master = os.path.basename(os.readlink(f"/sys/class/net/{name}/master"))
        except OSError:
            master = ""
        if name in ours or master in bridges:
            findings.append(Finding("network", f"veth {name} has no endpoint", repaired=repair))
            if repair:
                links.detach(name)
    return findings


def _rules(engine: Engine, repair: bool) -> list[Finding]:
    from dockyard.engine import networking
    from dockyard.network.store import table_name

    if networking.rules_in_step(engine.root, engine.conn):
        return []
    table = table_name(engine.root)
    message = f"nft table ip {table} is out of step with the networks and ports in the DB"
    if repair:
        networking.sync_rules(engine.root, engine.conn, force=True)
    return [Finding("network", message, repaired=repair)]


def _dns_server(engine: Engine, repair: bool) -> list[Finding]:
    """The DNS server runs while endpoints on user-defined networks exist: none is
    missing for running containers, none is left with nothing to serve."""
    import time

    from dockyard.network import dns

    def served() -> set[str]:  # containers with an endpoint the server answers for
        return {
            row[0]
            for row in engine.conn.execute(
                "SELECT endpoints.container_id FROM endpoints JOIN networks"
                " ON networks.id = endpoints.network_id WHERE networks.name != 'bridge'"
            )
        }

    users = served()
    pid = dns.server_pid(engine.root)
    if pid is None:
        running = [
            c
            for c in engine.list_containers(all=True)
            if c.id in users and c.status() in ("running", "paused", "restarting")
        ]
        if not running:
            return []
        if repair:
            dns.ensure_running(engine.root)
        return [
            Finding(
                "network",
                "no DNS server runs for the containers on user-defined networks",
                repaired=repair,
            )
        ]
    if users:
        return []  # (endpoints of containers that are gone were reported above)
    if repair:
        dns.stop(engine.root)
    else:
        # It leaves by itself within its idle time once the last endpoint is gone:
        # only one that stays longer is stuck.
        deadline = time.monotonic() + dns.IDLE_EXIT + 2.0
        for _ in range(int(dns.IDLE_EXIT + 2.0) * 10 + 1):
            if dns.server_pid(engine.root) is None or served() or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if dns.server_pid(engine.root) is None or served():
            return []
    return [Finding("network", f"DNS server (pid {pid}) has nothing to serve", repaired=repair)]
