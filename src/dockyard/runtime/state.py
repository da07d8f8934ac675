"""Where the runtime keeps what it knows of a container, and how it reads status back.

One directory per container under the state root (`--root`, default
/run/dockyard-runtime): `state.json` (written atomically) and, while the
container is created but not started, `exec.fifo`. Status is never stored: it
is derived from the init process (alive? same start time?), the fifo and the
freezer, so a crash can't leave a stale status behind.
"""

from __future__ import annotations

import os

from dockyard.oci import runtime_spec as spec
from dockyard.runtime.errors import RuntimeFailure

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO

DEFAULT_ROOT = "/run/dockyard-runtime"
STATE_FILE = "state.json"
FIFO_NAME = "exec.fifo"


def check_id(container_id: str) -> None:
    """Container ids become directory names: keep them to runc's character set."""
    ok = (
        container_id
        and len(container_id) <= 1024
        and container_id not in (".", "..")
        and all(c.isalnum() or c in "_+-." for c in container_id)
    )
    if not ok:
        raise RuntimeFailure(
            f'invalid container id "{container_id}": use letters, digits and _+-. only'
        )


def pid_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None when the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parens: split after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class ContainerState:
    """What `create` recorded. A plain class: dataclasses costs milliseconds to import."""

    def __init__(
        self,
        id: str,
        bundle: str,
        rootfs: str,
        pid: int,
        pid_start: int,
        created: str,
        cgroup_path: str,
        owner: str = "",
        config: dict[str, Any] | None = None,
        state_dir: str = "",
    ) -> None:
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.pid = pid
        self.pid_start = pid_start
        self.created = created
        self.cgroup_path = cgroup_path
        self.owner = owner
        self.config: dict[str, Any] = config or {}
        self.state_dir = state_dir

    def init_alive(self) -> bool:
        return self.pid > 0 and pid_start_time(self.pid) == self.pid_start

    def status(self) -> str:
        if not self.init_alive():
            return spec.STATUS_STOPPED
        if os.path.exists(os.path.join(self.state_dir, FIFO_NAME)):
            return spec.STATUS_CREATED
        if self._frozen():
            return spec.STATUS_PAUSED
        return spec.STATUS_RUNNING

    def _frozen(self) -> bool:
        from dockyard.runtime import cgroups

        try:
            return cgroups.open_manager(self.cgroup_path).is_frozen()
        except (OSError, RuntimeFailure):
            return False

    def annotations(self) -> dict[str, str]:
        return dict(self.config.get("annotations") or {})

    def document(self) -> dict[str, Any]:
        """The OCI state JSON."""
        return spec.state_document(
            self.id, self.status(), self.pid, self.bundle, self.annotations()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "created": self.created,
            "cgroup_path": self.cgroup_path,
            "owner": self.owner,
            "config": self.config,
        }


class StateRoot:
    """The directory holding every container's state."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root or DEFAULT_ROOT

    def dir_for(self, container_id: str) -> str:
        check_id(container_id)
        return os.path.join(self.root, container_id)

    def reserve(self, container_id: str) -> str:
        """Create the container's directory; fails if the id is taken."""
        path = self.dir_for(container_id)
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        try:
            os.mkdir(path, 0o711)
        except FileExistsError:
            raise RuntimeFailure(f'container with id "{container_id}" already exists') from None
        return path

    def save(self, state: ContainerState) -> None:
        import json

        path = os.path.join(state.state_dir, STATE_FILE)
        write_atomic(path, json.dumps(state.to_json()).encode(), durable=False)

    def load(self, container_id: str) -> ContainerState:
        import json

        path = self.dir_for(container_id)
        try:
            with open(os.path.join(path, STATE_FILE), "rb") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise RuntimeFailure(f'container "{container_id}" does not exist') from None
        except ValueError as err:
            raise RuntimeFailure(f'state of container "{container_id}" is corrupt: {err}') from None
        return ContainerState(state_dir=path, **raw)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if os.path.exists(os.path.join(self.root, n, STATE_FILE)))


def write_atomic_stream(
    path: str, write: Callable[[BinaryIO], object], mode: int | None = None
) -> None:
    """`write(file)` into a temp file beside `path`, fsync, rename, fsync the directory:
    readers (and a crash) see the old file or the whole new one, never half."""
    import tempfile

    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
    try:
        with open(fd, "wb") as out:
            write(out)
            out.flush()
            if mode is not None:
                os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: str, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """temp + fsync + rename: readers see the old file or the new one, never half.

    `durable=False` skips the fsync, for what a reboot makes stale anyway (pid
    and state files of running processes, as runc keeps them on tmpfs): the
    rename still makes the write atomic.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
