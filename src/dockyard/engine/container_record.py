"""A container as the engine sees it: its record, and what its files and processes
say about it now (status, pid, exit code); the errors the engine raises; names."""

from __future__ import annotations

import json
import os
import time

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any


class EngineError(Exception):
    """A container operation the user asked for can't be done; the message says why."""


class ContainerNotFound(EngineError):
    def __init__(self, name: str) -> None:
        super().__init__(f"No such container: {name}")


class Container:
    """A container's record plus what its files say about it now."""

    def __init__(self, row: Any, root: str) -> None:
        self.id: str = row["id"]
        self.name: str = row["name"]
        self.image_id: str = row["image_id"]
        self.created: str = row["created"]
        self.config: dict[str, Any] = json.loads(row["config"])
        self.dir = os.path.join(root, "containers", self.id)
        self.runtime_root = os.path.join(root, "runtime")

    def _read(self, name: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self.dir, name), "rb") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    @property
    def monitor_state(self) -> dict[str, Any]:
        return self._read("monitor.json")

    @property
    def exit_info(self) -> dict[str, Any]:
        return self._read("exit.json")

    def monitor_pid(self) -> int:
        try:
            with open(os.path.join(self.dir, "monitor.pid")) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0
        return pid if pid and _alive(pid) else 0

    def status(self) -> str:
        """Docker's: created, running, paused, restarting, exited."""
        state = self.monitor_state
        if self.monitor_pid():
            status = state.get("status", "running")
            if status == "running" and os.path.exists(os.path.join(self.dir, "paused")):
                from dockyard.engine.control import frozen

                return "paused" if frozen(self) else "running"
            return "restarting" if status == "restarting" else status
        if state.get("status") in ("running", "restarting") and self._init_alive():
            return "running"  # its monitor was killed; the container itself runs on
        return "exited" if self.exit_info or state else "created"

    def _init_alive(self) -> bool:
        from dockyard.runtime.errors import RuntimeFailure
        from dockyard.runtime.state import StateRoot

        try:
            return StateRoot(self.runtime_root).load(self.id).init_alive()
        except RuntimeFailure:
            return False

    @property
    def pid(self) -> int:
        running = self.status() in ("running", "paused")
        return int(self.monitor_state.get("pid") or 0) if running else 0

    @property
    def exit_code(self) -> int:
        # monitor.json has it a moment before exit.json is written
        return int(self.exit_info.get("exit_code", self.monitor_state.get("exit_code") or 0))

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "container-json.log")

    @property
    def image_ref(self) -> str:
        return str(self.config.get("Image") or self.image_id)

    @property
    def command(self) -> list[str]:
        return list(self.config.get("Args") or [])


def _alive(pid: int) -> bool:
    from dockyard.runtime.state import pid_start_time

    return pid_start_time(pid) is not None


def _wait_gone(pid: int, timeout: float) -> None:
    """Until process `pid` exits (a pidfd: no polling) or `timeout` passes."""
    if pid:
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already (or no pidfd here)
            time.sleep(0.001 if not _alive(pid) else 0.01)
            return
        try:
            import select

            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
    else:
        time.sleep(0.01)  # between a monitor's exit and its records: rare and short


_ADJECTIVES = (
    "brave",
    "calm",
    "eager",
    "fancy",
    "gentle",
    "happy",
    "jolly",
    "keen",
    "lucid",
    "merry",
    "nifty",
    "proud",
    "quiet",
    "sharp",
    "swift",
    "tender",
    "vivid",
    "witty",
)
_NAMES = (
    "babbage",
    "curie",
    "darwin",
    "euler",
    "fermi",
    "gauss",
    "hopper",
    "kepler",
    "lamarr",
    "lovelace",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "tesla",
    "turing",
    "wozniak",
)


def _random_name() -> str:
    # os.urandom, not secrets: that module costs milliseconds to import (hmac, hashlib)
    pick = int.from_bytes(os.urandom(4), "big")
    return f"{_ADJECTIVES[pick % len(_ADJECTIVES)]}_{_NAMES[pick // 256 % len(_NAMES)]}"
