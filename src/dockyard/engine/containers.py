"""Container lifecycle: the one place that changes container state.

A container is a row in the metadata DB, a writable snapshot over its image's
layers, and a directory `<root>/containers/<id>/` holding its OCI bundle
(config.json, rootfs/ where the snapshot is mounted while it runs), its log and
the files its monitor keeps (exit.json, monitor.json, monitor.pid). Status is
derived from those files and the processes, so a crash of any dockyard process
leaves nothing stale to believe.
"""

from __future__ import annotations

import json
import os
import time

from dockyard.engine.container_record import (  # noqa: F401 - the engine's names
    Container,
    ContainerNotFound,
    EngineError,
    _alive,
    _random_name,
    _wait_gone,
)
from dockyard.engine.spec import RunOptions
from dockyard.storage import db

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Iterator
    from typing import Any

    from dockyard.engine.monitor_server import MonitorServer
    from dockyard.engine.monitor_start import MonitorStarter
    from dockyard.image.store import ImageStore


def _command_parts(image_config: dict[str, Any], opts: RunOptions) -> dict[str, Any]:
    from dockyard.engine.spec import command_parts

    entrypoint, cmd = command_parts(image_config, opts)
    parts: dict[str, Any] = {"Cmd": cmd or None, "Entrypoint": entrypoint or None}
    if opts.workdir:
        parts["WorkingDir"] = opts.workdir
    if opts.user:
        parts["User"] = f"{opts.user[0]}:{opts.user[1]}"
    return parts


def check_name(name: str) -> str:
    import re

    name = name.removeprefix("/")
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
        raise EngineError(
            f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )
    return name


class Engine:
    """Containers under one state root."""

    def __init__(self, root: str) -> None:
        from dockyard.image.store import ImageStore

        self.root = os.path.abspath(root)
        self.images: ImageStore = ImageStore(self.root)
        self.conn = self.images.conn
        self.runtime_root = os.path.join(self.root, "runtime")
        # A monitor booted ahead of the next start (warm_monitor).
        self._spare: MonitorStarter | None = None
        # keep_warm (the Python API): starts go through one MonitorServer.
        self.keep_warm = False
        self._server: MonitorServer | None = None

    # ---------------------------------------------------------------- lookup

    def get(self, name: str) -> Container:
        """By name, full ID or unique ID prefix (Docker's rules)."""
        name = name.removeprefix("/")
        row = self.conn.execute(
            "SELECT * FROM containers WHERE id = ? OR name = ?", (name, name)
        ).fetchone()
        if row is None and name and all(c in "0123456789abcdef" for c in name):
            rows = self.conn.execute(
                "SELECT * FROM containers WHERE id >= ? AND id < ? LIMIT 2", (name, name + "g")
            ).fetchall()
            if len(rows) > 1:
                raise EngineError(f"multiple containers match ID prefix {name}: give more digits")
            row = rows[0] if rows else None
        if row is None:
            raise ContainerNotFound(name)
        return Container(row, self.root)

    def list_containers(self, all: bool = False) -> list[Container]:
        rows = self.conn.execute("SELECT * FROM containers ORDER BY created DESC").fetchall()
        found = [Container(row, self.root) for row in rows]
        return (
            found
            if all
            else [c for c in found if c.status() in ("running", "paused", "restarting")]
        )

    # ---------------------------------------------------------------- create

    def create(
        self,
        image_name: str,
        opts: RunOptions,
        name: str | None = None,
        restart_policy: dict[str, Any] | None = None,
        auto_remove: bool = False,
        interactive: bool = False,
    ) -> Container:
        from dockyard.engine import spec
        from dockyard.engine.volumes import MountPlan, VolumeStore

        image = self.images.get(image_name)
        container_id = db.new_id()
        wanted = check_name(name) if name else None
        # The lease keeps the layers from a concurrent collection until the container's
        # own snapshot stands on them.
        with self.images.leases.create() as lease:
            top = self.images.unpack(image, lease)
            self._resolve_user(image.config.get("config") or {}, opts, top)
            plan = MountPlan(VolumeStore(self.root, self.conn), image.config, opts)
            config = spec.build(container_id, image.config, plan.options, rootfs="rootfs")
            from dockyard.engine import hostconfig

            extras = hostconfig.finish(config, plan.options, image.config)
            from dockyard.engine import networking

            net = networking.plan(self.conn, plan.options, image.config, self.get)
            directory = os.path.join(self.root, "containers", container_id)
            self.images.snapshots.prepare(f"container-{container_id}", top)
        try:
            os.makedirs(os.path.join(directory, "rootfs"), 0o711)
            from dockyard.runtime.state import write_atomic

            joined = net["NetworkMode"].removeprefix("container:")
            other = (
                os.path.join(self.root, "containers", joined)
                if joined != net["NetworkMode"]
                else None
            )
            taken = {m["destination"] for m in config["mounts"]}
            config["mounts"] += [
                m
                for m in networking.file_mounts(directory, net["NetworkMode"], other)
                if m["destination"] not in taken
            ]

            write_atomic(os.path.join(directory, "config.json"), json.dumps(config).encode())
            record = {
                "Image": image_name,
                "ImageID": image.id,
                "Args": config["process"]["args"],
                "Env": spec.config_env(image.config.get("config") or {}, plan.options),
                # What the container was told to run, split as Docker keeps it (commit, inspect).
                **_command_parts(image.config.get("config") or {}, opts),
                "Tty": opts.tty,
                "OpenStdin": interactive,
                "Labels": opts.labels,
                "RestartPolicy": restart_policy or {"name": "no"},
                "AutoRemove": auto_remove,
                "Hostname": config["hostname"],
                "Mounts": plan.records,
                **extras,
                **net,
            }
            if "Healthcheck" in extras:  # the monitor starts a health checker when it sees it
                write_atomic(
                    os.path.join(directory, "healthcheck.json"),
                    json.dumps(extras["Healthcheck"]).encode(),
                )
            self._insert(container_id, wanted, image.id, record, plan.attach)
        except BaseException:
            self._discard(container_id)
            plan.abandon()
            raise
        try:  # fill new volumes from the image before the container first starts
            rootfs = os.path.join(directory, "rootfs")
            plan.copy_up(rootfs, self.images.snapshots.mounts(f"container-{container_id}"))
        except BaseException:
            self.remove(container_id, force=True, volumes=True)
            raise
        return self.get(container_id)

    def _resolve_user(
        self, image_config: dict[str, Any], opts: RunOptions, top: str | None
    ) -> None:
        """-u (or the image's USER) as uid, gid and groups from the image's passwd/group."""
        spec = opts.user_spec or image_config.get("User") or ""
        if not spec or opts.user is not None:
            return
        from dockyard.engine.users import UserError, resolve

        layers = self.images.snapshots.layer_dirs(top) if top else []
        try:
            opts.user = resolve(spec, layers)
        except UserError as err:
            raise EngineError(str(err)) from None

    def _insert(
        self,
        container_id: str,
        name: str | None,
        image_id: str,
        record: dict[str, Any],
        attach: Callable[[sqlite3.Connection, str], None] | None = None,
    ) -> None:
        import sqlite3

        for _ in range(50):
            candidate = name or _random_name()
            try:
                with db.transaction(self.conn) as conn:
                    conn.execute(
                        "INSERT INTO containers (id, name, image_id, created, config)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (container_id, candidate, image_id, db.now(), json.dumps(record)),
                    )
                    if attach is not None:  # its volumes, in the same transaction
                        attach(conn, container_id)
                return
            except sqlite3.IntegrityError:
                if name:
                    owner = self.conn.execute(
                        "SELECT id FROM containers WHERE name = ?", (name,)
                    ).fetchone()
                    raise EngineError(
                        f'Conflict. The container name "/{name}" is already in use by container '
                        f'"{owner[0] if owner else "?"}". You have to remove (or rename) that '
                        "container to be able to reuse that name."
                    ) from None
        raise EngineError("could not find a free container name: give one with --name")

    def _discard(self, container_id: str) -> None:
        """Undo a create: snapshot, directory (the row is the caller's)."""
        import shutil

        from dockyard.storage.snapshots import SnapshotNotFound, unmount

        directory = os.path.join(self.root, "containers", container_id)
        rootfs = os.path.join(directory, "rootfs")
        if os.path.ismount(rootfs):
            unmount(rootfs)
        try:
            self.images.snapshots.remove(f"container-{container_id}")
        except SnapshotNotFound:
            pass
        shutil.rmtree(directory, ignore_errors=True)

    # ---------------------------------------------------------------- start/stop

    def start(self, name: str, attach: bool = False) -> Container:
        """`attach`: a client attaches right after; it gets the output from the start."""
        import fcntl

        container = self.get(name)
        # One start at a time: a second one would find the runtime's container taken,
        # and its monitor's cleanup would delete the first one's (and unmount its rootfs).
        lock = os.open(os.path.join(container.dir, "start.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._start_locked(container, attach)
        finally:
            os.close(lock)

    def _start_locked(self, container: Container, attach: bool) -> Container:
        from dockyard.engine.logs import monitor_options
        from dockyard.engine.monitor_start import MonitorSpec, spawn_monitor

        if container.status() in ("running", "restarting", "paused"):
            return container
        rootfs = os.path.join(container.dir, "rootfs")
        if not os.path.ismount(rootfs):
            from dockyard.engine.rootfs import mount_rootfs

            mounts = self.images.snapshots.mounts(f"container-{container.id}")
            mount_rootfs(mounts, rootfs, volatile=bool(container.config.get("AutoRemove")))
        for stale in ("exit.json", "stop", "monitor.json", "paused"):
            try:
                os.unlink(os.path.join(container.dir, stale))
            except FileNotFoundError:
                pass
        if os.path.exists(os.path.join(self.runtime_root, container.id)):
            # A monitor killed with its container left the runtime's state: not running
            # (checked above, under the start lock), so it is stale.
            from dockyard.runtime import container as runtime
            from dockyard.runtime.state import StateRoot

            runtime.delete(StateRoot(self.runtime_root), container.id, force=True)
        from dockyard.engine import networking

        try:
            attachments = networking.prepare(self.root, self.conn, container)
        except BaseException:
            self._unmount_rootfs(container)
            raise
        spec = MonitorSpec(
            container.id,
            bundle=container.dir,
            runtime_root=self.runtime_root,
            container_dir=container.dir,
            restart_policy=container.config.get("RestartPolicy"),
            interactive=bool(container.config.get("OpenStdin")),
            tty=bool(container.config.get("Tty")),
            replay=attach,
            auto_remove=bool(container.config.get("AutoRemove")),
            state_root=self.root,
            networks=attachments,
            **monitor_options(container.config.get("LogConfig"), container.log_path),
        )
        starter, self._spare = self._spare, None
        try:
            if self.keep_warm and starter is None:
                self._monitor_server().launch(spec)
            else:
                spawn_monitor(spec, starter=starter)
        except BaseException:
            networking.release(self.root, self.conn, container.id)
            self._unmount_rootfs(container)
            raise
        return container

    def boot_monitor_server(self) -> None:
        """keep_warm: boot the monitor server now (it loads while the caller goes on)."""
        self._monitor_server()

    def _monitor_server(self) -> MonitorServer:
        """keep_warm: one booted process forks every start's monitor."""
        if self._server is None or self._server.request_fd < 0:
            from dockyard.engine.monitor_server import MonitorServer

            self._server = MonitorServer()
        return self._server

    def warm_monitor(self, starter: MonitorStarter | None = None) -> None:
        """Start the next `start`'s monitor now (or use `starter`, started earlier):
        its interpreter and the runtime's init helper boot while the caller goes
        on (creating the container, say). An unused one exits with this process
        (or `close`)."""
        if self._spare is None:
            from dockyard.engine.monitor_start import MonitorStarter

            self._spare = starter or MonitorStarter()
        elif starter is not None:
            starter.close()

    def close(self) -> None:
        """Let a warm monitor (or monitor server) go; the engine stays usable."""
        starter, self._spare = self._spare, None
        if starter is not None:
            starter.close()
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def _unmount_rootfs(self, container: Container) -> None:
        from dockyard.storage.snapshots import unmount

        rootfs = os.path.join(container.dir, "rootfs")
        if os.path.ismount(rootfs):
            unmount(rootfs)

    def kill(self, name: str, signum: int = 9) -> Container:
        from dockyard.runtime import container as runtime
        from dockyard.runtime.errors import RuntimeFailure
        from dockyard.runtime.state import StateRoot

        container = self.get(name)
        status = container.status()
        if status not in ("running", "paused"):
            raise EngineError(
                f"Cannot kill container: {name}: container {container.id[:12]} is not running"
            )
        try:
            runtime.kill(StateRoot(self.runtime_root), container.id, signum)
        except RuntimeFailure as err:
            raise EngineError(f"Cannot kill container: {name}: {err}") from None
        if status == "paused":  # a frozen process gets its signal once thawed
            from dockyard.engine.control import thaw_for_signal

            thaw_for_signal(container)
        return container

    def stop(self, name: str, timeout: float | None = None, signum: int | None = None) -> Container:
        """SIGTERM, or the container's StopSignal; SIGKILL after `timeout` (its StopTimeout,
        default 10 s)."""
        container = self.get(name)
        if container.status() not in ("running", "restarting", "paused"):
            return container
        if signum is None:
            from dockyard.runtime.cli import parse_signal

            signum = parse_signal(str(container.config.get("StopSignal") or "SIGTERM"))
        if timeout is None:
            configured = container.config.get("StopTimeout")
            timeout = float(10 if configured is None else configured)
        # The stop file tells the monitor not to apply the restart policy.
        with open(os.path.join(container.dir, "stop"), "w"):
            pass
        try:
            self.kill(container.id, signum)
        except EngineError:
            pass
        if not self._wait_stopped(container, timeout):
            try:
                self.kill(container.id, 9)
            except EngineError:
                pass
            self._wait_stopped(container, 10.0)
        self._unmount_rootfs(container)
        return container

    def _wait_stopped(self, container: Container, timeout: float) -> bool:
        """Until the monitor is done and the container's init is gone."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not container.monitor_pid() and not container._init_alive():
                return True
            time.sleep(0.01)
        return not container.monitor_pid() and not container._init_alive()

    def wait(self, name: str, timeout: float | None = None) -> int:
        from dockyard.engine import autoremove

        container = self.get(name)
        # AutoRemove: its remover waits for us, so the exit code is still there to read.
        held = bool(container.config.get("AutoRemove")) and autoremove.hold(container)
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while container.status() in ("running", "restarting", "paused"):
                if deadline is not None and time.monotonic() > deadline:
                    raise EngineError(f"container {name} did not exit within {timeout:g}s")
                _wait_gone(container.monitor_pid(), 0.05)
            return container.exit_code
        finally:
            if held:
                autoremove.release(container)

    def remove(self, name: str, force: bool = False, volumes: bool = False) -> str:
        """`rm`; `volumes` (rm -v) also removes the container's anonymous volumes."""
        container = self.get(name)
        if container.status() in ("running", "restarting", "paused"):
            if not force:
                raise EngineError(
                    f"You cannot remove a running container {container.id}. "
                    "Stop the container before attempting removal or force remove"
                )
            self.stop(container.id, timeout=0)
        from dockyard.engine import autoremove

        lock = autoremove.lock_for_removal(self, container)  # one removal at a time
        try:
            self._remove_stopped(container, volumes)
        finally:
            if lock >= 0:
                os.close(lock)
        return container.id

    def _remove_stopped(self, container: Container, volumes: bool) -> None:
        self._unmount_rootfs(container)
        from dockyard.engine import networking

        # (its veths go with its network namespace: the container is stopped by now)
        networking.release(self.root, self.conn, container.id, detach=False)
        from dockyard.runtime import container as runtime
        from dockyard.runtime.state import StateRoot

        runtime.delete(StateRoot(self.runtime_root), container.id, force=True)
        from dockyard.engine.volumes import VolumeStore, purge

        store = VolumeStore(self.root, self.conn)
        with db.transaction(self.conn) as conn:
            trash = store.release(conn, container.id, anonymous=volumes)
            conn.execute("DELETE FROM containers WHERE id = ?", (container.id,))
        self._discard(container.id)
        purge(trash)

    def logs(self, name: str, **kwargs: Any) -> Iterator[tuple[str, str, str]]:
        from dockyard.engine.logs import read_logs

        container = self.get(name)
        if (container.config.get("LogConfig") or {}).get("Type") == "none":
            raise EngineError("configured logging driver does not support reading")
        if kwargs.get("follow"):
            kwargs.setdefault("stop", lambda: not container.monitor_pid())
            kwargs.setdefault("wait", _until_exit(container.monitor_pid()))
        return read_logs(container.log_path, **kwargs)


def _until_exit(pid: int | None) -> Callable[[float], object] | None:
    """A sleep that ends early when process `pid` exits (a pidfd), for log follow:
    the last lines and the end show up as soon as the monitor is done."""
    if not pid:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    import select
    import time

    open_fds = [pidfd]

    def wait(timeout: float) -> object:
        if not open_fds:
            time.sleep(timeout)  # (a new monitor took over: plain polling)
        elif select.select(open_fds, [], [], timeout)[0]:
            os.close(open_fds.pop())  # exited; `stop` now ends the loop
        return None

    return wait
