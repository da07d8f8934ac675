"""Volumes: named and anonymous directories under `<root>/volumes/<name>/_data`.

A volume is a row in the `volumes` table plus its directory; which container
uses which volume is the `container_volumes` table. Every change that could
race (create, attach to a container, remove, prune) runs in one
`BEGIN IMMEDIATE` transaction and creates or moves the directory inside it, so
`volume rm` can't remove a volume a container is being created with, and a
volume row never names a missing directory once committed. A removed volume's
directory is renamed to `volumes/.trash-*` inside the transaction and deleted
after the commit (a crash leaves only trash, which `purge_trash` clears).

`MountPlan` turns a container's mount specs (`-v`, `--mount`, `--tmpfs`, the
image's VOLUME entries) into OCI mounts, attaches the volumes in the
transaction that inserts the container, and fills new volumes from the
image's content at their mount point (Docker's copy-up).
"""

from __future__ import annotations

import json
import os
import posixpath

from dockyard.engine.containers import EngineError
from dockyard.engine.mountspec import (
    VOLUME_NAME,
    MountSpec,
    MountSpecError,
    check_duplicates,
    merge_tmpfs_options,
    volume_name_error,
)
from dockyard.storage import db

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence
    from typing import Any

    from dockyard.engine.spec import RunOptions
    from dockyard.storage.snapshots import Mount

ANONYMOUS_LABEL = "com.docker.volume.anonymous"
LOCAL_OPTIONS = ("type", "device", "o", "size")


class VolumeError(EngineError):
    """A volume operation that can't be done; the message says why (Docker's words)."""


class VolumeNotFound(VolumeError):
    def __init__(self, name: str, op: str = "get") -> None:
        super().__init__(f"{op} {name}: no such volume")


class Volume:
    def __init__(self, row: Any, root: str) -> None:
        self.name: str = row["name"]
        self.created: str = row["created"]
        self.driver: str = row["driver"]
        self.labels: dict[str, str] = json.loads(row["labels"])
        self.options: dict[str, str] = json.loads(row["options"])
        self.mountpoint = os.path.join(root, "volumes", self.name, "_data")

    @property
    def anonymous(self) -> bool:
        return ANONYMOUS_LABEL in self.labels

    def inspect(self) -> dict[str, Any]:
        """Docker's `volume inspect` object."""
        return {
            "CreatedAt": self.created[:19] + "Z",
            "Driver": self.driver,
            "Labels": dict(self.labels),
            "Mountpoint": self.mountpoint,
            "Name": self.name,
            "Options": dict(self.options),
            "Scope": "local",
        }


def check_options(options: dict[str, str]) -> None:
    for key in options:
        if key not in LOCAL_OPTIONS:
            raise VolumeError(f'invalid option: "{key}"')


class VolumeStore:
    """The volumes under one state root."""

    def __init__(self, root: str, conn: sqlite3.Connection) -> None:
        self.root = os.path.abspath(root)
        self.conn = conn
        self.dir = os.path.join(self.root, "volumes")

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # ---------------------------------------------------------------- reading

    def get(self, name: str) -> Volume:
        row = self.conn.execute("SELECT * FROM volumes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise VolumeNotFound(name)
        return Volume(row, self.root)

    def find(self, name: str) -> Volume | None:
        try:
            return self.get(name)
        except VolumeNotFound:
            return None

    def users(self, name: str, conn: sqlite3.Connection | None = None) -> list[str]:
        """IDs of the containers that use the volume."""
        rows = (
            (conn or self.conn)
            .execute(
                "SELECT DISTINCT container_id FROM container_volumes WHERE volume = ? "
                "ORDER BY container_id",
                (name,),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def list_volumes(self, filters: Sequence[str] = ()) -> list[Volume]:
        """`volume ls`, with Docker's filters: dangling, name, label, driver."""
        import re

        wanted: dict[str, list[str]] = {}
        for text in filters:
            key, sep, value = text.partition("=")
            if not sep or key not in ("dangling", "name", "label", "driver"):
                raise VolumeError(f"Invalid filter '{key}'")
            wanted.setdefault(key, []).append(value)
        used = {r[0] for r in self.conn.execute("SELECT DISTINCT volume FROM container_volumes")}
        rows = self.conn.execute("SELECT * FROM volumes ORDER BY name").fetchall()
        result = []
        for vol in (Volume(row, self.root) for row in rows):
            if "dangling" in wanted:
                for value in wanted["dangling"]:
                    if value.lower() not in ("true", "1", "false", "0"):
                        raise VolumeError(f"Invalid filter 'dangling={value}': use true or false")
                dangling = wanted["dangling"][-1].lower() in ("true", "1")
                if (vol.name not in used) != dangling:
                    continue
            if "name" in wanted and not any(
                _search(re, pattern, vol.name) for pattern in wanted["name"]
            ):
                continue
            if "driver" in wanted and vol.driver not in wanted["driver"]:
                continue
            if "label" in wanted and not all(_has_label(vol, want) for want in wanted["label"]):
                continue
            result.append(vol)
        return result

    # ---------------------------------------------------------------- changing

    def create(
        self,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        options: dict[str, str] | None = None,
        driver: str = "local",
    ) -> Volume:
        """`volume create`: a new volume, or the existing one of that name (as Docker does)."""
        if driver != "local":
            raise VolumeError(f'create {name or ""}: plugin "{driver}" not found')
        if name is None:
            name = db.new_id()
        elif not VOLUME_NAME.fullmatch(name):
            raise VolumeError(f"create {name}: {volume_name_error(name)}")
        check_options(options or {})
        with db.transaction(self.conn) as conn:
            self.ensure(conn, name, labels or {}, options or {})
        return self.get(name)

    def ensure(
        self, conn: sqlite3.Connection, name: str, labels: dict[str, str], options: dict[str, str]
    ) -> bool:
        """Inside a transaction: make the volume exist (directory first); True if it is new."""
        os.makedirs(os.path.join(self.path(name), "_data"), 0o755, exist_ok=True)
        cur = conn.execute(
            "INSERT OR IGNORE INTO volumes (name, created, driver, labels, options)"
            " VALUES (?, ?, 'local', ?, ?)",
            (name, db.now(), json.dumps(labels), json.dumps(options)),
        )
        return cur.rowcount == 1

    def _drop(self, conn: sqlite3.Connection, name: str) -> str:
        """Inside a transaction: delete the row, move the directory to trash; return it."""
        conn.execute("DELETE FROM volumes WHERE name = ?", (name,))
        trash = os.path.join(self.dir, f".trash-{db.new_id()[:16]}")
        try:
            os.rename(self.path(name), trash)
        except FileNotFoundError:
            return ""
        return trash

    def remove(self, name: str, force: bool = False) -> None:
        """`volume rm`: refused while any container uses it, even with force."""
        with db.transaction(self.conn) as conn:
            row = conn.execute("SELECT name FROM volumes WHERE name = ?", (name,)).fetchone()
            if row is None:
                if force:
                    return
                raise VolumeNotFound(name)
            users = self.users(name, conn)
            if users:
                raise VolumeError(f"remove {name}: volume is in use - [{', '.join(users)}]")
            trash = self._drop(conn, name)
        purge([trash])

    def prune(self, all: bool = False) -> tuple[list[str], int]:
        """Remove unused anonymous volumes (every unused one with `all`): (names, bytes)."""
        removed: list[str] = []
        trash: list[str] = []
        with db.transaction(self.conn) as conn:
            rows = conn.execute(
                "SELECT * FROM volumes WHERE name NOT IN (SELECT volume FROM container_volumes)"
                " ORDER BY name"
            ).fetchall()
            for vol in (Volume(row, self.root) for row in rows):
                if all or vol.anonymous:
                    removed.append(vol.name)
                    trash.append(self._drop(conn, vol.name))
        return removed, purge(trash)

    def release(self, conn: sqlite3.Connection, container_id: str, anonymous: bool) -> list[str]:
        """Inside a transaction: detach a container; with `anonymous`, drop its anonymous
        volumes no other container uses. Returns trash directories for `purge`."""
        names = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT volume FROM container_volumes WHERE container_id = ?",
                (container_id,),
            )
        ]
        conn.execute("DELETE FROM container_volumes WHERE container_id = ?", (container_id,))
        trash = []
        if anonymous:
            for name in names:
                row = conn.execute("SELECT * FROM volumes WHERE name = ?", (name,)).fetchone()
                if (
                    row is not None
                    and Volume(row, self.root).anonymous
                    and not self.users(name, conn)
                ):
                    trash.append(self._drop(conn, name))
        return trash

    def purge_trash(self) -> None:
        """Delete trash left by a crash between a commit and its clean-up."""
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return
        purge([os.path.join(self.dir, e) for e in entries if e.startswith(".trash-")])


def _search(re: Any, pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return pattern in name


def _has_label(vol: Volume, want: str) -> bool:
    key, sep, value = want.partition("=")
    return key in vol.labels and (not sep or vol.labels[key] == value)


def dir_size(path: str) -> int:
    """Bytes of the regular files under path (each hard-linked inode once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def purge(trash: Sequence[str]) -> int:
    """Delete trash directories; returns the bytes they held."""
    import shutil

    total = 0
    for path in trash:
        if path:
            total += dir_size(path)
            shutil.rmtree(path, ignore_errors=True)
    return total


# -------------------------------------------------------------------- containers


class _Use:
    """One volume a container uses."""

    def __init__(self, spec: MountSpec, name: str, volume: Volume | None) -> None:
        self.spec = spec
        self.name = name
        self.anonymous = not spec.source
        labels = dict(spec.volume_labels)
        if self.anonymous:
            labels[ANONYMOUS_LABEL] = ""
        self.labels = volume.labels if volume else labels
        self.options = volume.options if volume else dict(spec.volume_options)


class MountPlan:
    """A container's mounts: OCI entries for config.json, volumes to attach and fill."""

    def __init__(self, store: VolumeStore, image_config: dict[str, Any], opts: RunOptions) -> None:
        import copy

        self.store = store
        specs: list[MountSpec] = list(getattr(opts, "mount_specs", None) or [])
        check_duplicates(
            [*specs, *(MountSpec(type="tmpfs", target=m["destination"]) for m in opts.mounts)]
        )
        taken = {posixpath.normpath(s.target) for s in specs}
        taken |= {posixpath.normpath(m["destination"]) for m in opts.mounts}
        image_volumes = (image_config.get("config") or {}).get("Volumes") or {}
        for dest in sorted(image_volumes):
            if dest.startswith("/") and posixpath.normpath(dest) not in taken:
                specs.append(MountSpec(type="volume", target=dest))
                taken.add(posixpath.normpath(dest))
        self.uses: list[_Use] = []
        self.records: list[dict[str, Any]] = []
        oci = [self._mount(spec) for spec in specs]
        self.options: RunOptions = copy.copy(opts)
        self.options.mounts = [*opts.mounts, *oci]
        self._made: list[str] = []

    def _mount(self, spec: MountSpec) -> dict[str, Any]:
        target = posixpath.normpath(spec.target)
        if spec.type == "tmpfs":
            options = merge_tmpfs_options([*spec.tmpfs_options, "rprivate"])
            self.records.append(_record("tmpfs", "", target, not spec.readonly))
            return {"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options}
        bind = ["rbind", spec.propagation or "rprivate", *(["ro"] if spec.readonly else [])]
        if spec.type == "bind":
            if not os.path.exists(spec.source):
                if not spec.create_source:
                    raise MountSpecError(
                        'invalid mount config for type "bind": '
                        f"bind source path does not exist: {spec.source}"
                    )
                os.makedirs(spec.source, 0o755, exist_ok=True)
            record = _record("bind", spec.source, target, not spec.readonly)
            record["Propagation"] = spec.propagation or "rprivate"
            self.records.append(record)
            return {"destination": target, "type": "bind", "source": spec.source, "options": bind}
        name = spec.source or db.new_id()
        use = _Use(spec, name, self.store.find(name))
        check_options(use.options)
        self.uses.append(use)
        record = _record("volume", os.path.join(self.store.path(name), "_data"), target, True)
        record.update({"Name": name, "Driver": "local", "RW": not spec.readonly})
        self.records.append(record)
        kind = use.options.get("type")
        if kind:  # a local volume backed by a mount: mounted by the runtime in the container
            extra = [o for o in use.options.get("o", "").split(",") if o]
            device = use.options.get("device") or kind
            if kind == "none" or "bind" in extra or "rbind" in extra:
                rest = [o for o in extra if o not in ("bind", "rbind")]
                return {
                    "destination": target,
                    "type": "bind",
                    "source": device,
                    "options": [*bind, *rest],
                }
            ro = ["ro"] if spec.readonly else []
            return {"destination": target, "type": kind, "source": device, "options": extra + ro}
        return {"destination": target, "type": "bind", "source": record["Source"], "options": bind}

    def attach(self, conn: sqlite3.Connection, container_id: str) -> None:
        """Inside the transaction that inserts the container: volumes exist and are in use."""
        for use in self.uses:
            if self.store.ensure(conn, use.name, use.labels, use.options):
                self._made.append(use.name)
            conn.execute(
                "INSERT INTO container_volumes (container_id, volume, destination)"
                " VALUES (?, ?, ?)",
                (container_id, use.name, posixpath.normpath(use.spec.target)),
            )

    def abandon(self) -> None:
        """After a failed create: remove the directories of volumes whose rows never landed."""
        if not self._made:
            return
        trash = []
        with db.transaction(self.store.conn) as conn:
            for name in self._made:
                if conn.execute("SELECT 1 FROM volumes WHERE name = ?", (name,)).fetchone():
                    continue
                trash.append(self.store._drop(conn, name))
        purge(trash)

    def copy_up(self, rootfs: str, mounts: Sequence[Mount]) -> None:
        """Fill each empty volume from the image's files at its mount point (Docker's
        copy-up), keeping ownership, modes, links and times; `mounts` show the rootfs."""
        wanted = [u for u in self.uses if not u.spec.nocopy and not u.options.get("type")]
        if not wanted:
            return
        from dockyard.storage.snapshots import mount_all, unmount_all

        mount_all(mounts, rootfs)
        try:
            for use in wanted:
                _copy_one(rootfs, use.spec.target, self.store.path(use.name))
        finally:
            unmount_all(rootfs)


def _record(kind: str, source: str, target: str, rw: bool) -> dict[str, Any]:
    return {
        "Type": kind,
        "Source": source,
        "Destination": target,
        "Mode": "",
        "RW": rw,
        "Propagation": "",
    }


def _copy_one(rootfs: str, target: str, volume_dir: str) -> None:
    import fcntl
    import stat
    import subprocess

    from dockyard.runtime.mounts import secure_join

    source = secure_join(rootfs, target)
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    data = os.path.join(volume_dir, "_data")
    fd = os.open(volume_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # two containers filling one new volume at once
        if os.listdir(data):
            return
        if os.listdir(source):
            done = subprocess.run(
                ["cp", "-a", "--", source + "/.", data + "/"],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise VolumeError(
                    f"copying the image's {target} into the volume: {done.stderr.strip()}"
                )
        os.chown(data, st.st_uid, st.st_gid)
        os.chmod(data, stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)
