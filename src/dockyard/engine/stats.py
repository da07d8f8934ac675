"""`stats`: resource use of running containers, read from their cgroups.

CPU % is Docker's: the container's CPU time over the wall time between two
samples, times 100 (so one busy CPU is 100 %). Memory usage is Docker's too:
usage minus inactive file cache; the limit is the host's memory when the
container has none. Network I/O is 0 until containers get their own network.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.containers import Container, Engine


def _host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def sample(engine: Engine, container: Container) -> dict[str, dict[str, int]] | None:
    """The cgroup's counters now, or None when the container is not running."""
    from dockyard.runtime import cgroups
    from dockyard.runtime.errors import RuntimeFailure
    from dockyard.runtime.state import StateRoot

    if container.status() not in ("running", "paused"):
        return None
    try:
        state = StateRoot(engine.runtime_root).load(container.id)
        return cgroups.open_manager(state.cgroup_path).stats()
    except (OSError, RuntimeFailure):
        return None


def collect(
    engine: Engine, names: list[str] | None = None, interval: float = 0.5
) -> list[dict[str, Any]]:
    """One stats record per container (the named ones, or every running one)."""
    containers = [engine.get(n) for n in names] if names else engine.list_containers()
    first = {c.id: sample(engine, c) for c in containers}
    began = time.monotonic()
    if any(first.values()):
        time.sleep(interval)
    elapsed_ns = max(int((time.monotonic() - began) * 1e9), 1)
    host_memory = _host_memory()
    cpus = os.cpu_count() or 1
    records = []
    for c in containers:
        before, after = first[c.id], sample(engine, c)
        records.append(record(c, before, after, elapsed_ns, host_memory, cpus))
    return records


def record(
    container: Container,
    before: dict[str, dict[str, int]] | None,
    after: dict[str, dict[str, int]] | None,
    elapsed_ns: int,
    host_memory: int,
    cpus: int,
) -> dict[str, Any]:
    """Numbers for one container from two samples (pure)."""
    now = after or {}
    memory = now.get("memory") or {}
    usage = max(int(memory.get("usage", 0)) - int(memory.get("inactive_file", 0)), 0)
    limit = int(memory.get("limit", 0)) or host_memory
    if limit > host_memory > 0:
        limit = host_memory
    cpu = 0.0
    if before and after:
        delta = (after.get("cpu") or {}).get("usage_ns", 0) - (before.get("cpu") or {}).get(
            "usage_ns", 0
        )
        cpu = min(max(delta, 0) / elapsed_ns * 100.0, 100.0 * cpus)
    io = now.get("blkio") or {}
    return {
        "id": container.id,
        "name": container.name,
        "running": after is not None,
        "cpu_percent": cpu,
        "memory_usage": usage if after else 0,
        "memory_limit": limit if after else 0,
        "memory_percent": (usage / limit * 100.0) if after and limit else 0.0,
        "net_rx": 0,
        "net_tx": 0,
        "block_read": int(io.get("read", 0)),
        "block_write": int(io.get("write", 0)),
        "pids": int((now.get("pids") or {}).get("current", 0)),
    }


def human_binary(n: float) -> str:
    """Docker's BytesSize: 1.5MiB, 7.66GiB, 0B."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.4g}{units[i]}" if i else f"{int(n)}B"


def human_decimal(n: float) -> str:
    """Docker's HumanSize: 1.2kB, 3.4MB, 0B."""
    units = ("B", "kB", "MB", "GB", "TB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{n:.4g}{units[i]}" if i else f"{int(n)}B"


def formatted(rec: dict[str, Any]) -> dict[str, str]:
    """What `docker stats --format '{{json .}}'` gives: display strings by Docker's keys."""
    running = rec["running"]
    return {
        "BlockIO": f"{human_decimal(rec['block_read'])} / {human_decimal(rec['block_write'])}",
        "CPUPerc": f"{rec['cpu_percent']:.2f}%" if running else "--",
        "Container": rec["id"][:12],
        "ID": rec["id"][:12],
        "MemPerc": f"{rec['memory_percent']:.2f}%" if running else "--",
        "MemUsage": (
            f"{human_binary(rec['memory_usage'])} / {human_binary(rec['memory_limit'])}"
            if running
            else "-- / --"
        ),
        "Name": rec["name"],
        "NetIO": f"{human_decimal(rec['net_rx'])} / {human_decimal(rec['net_tx'])}",
        "PIDs": str(rec["pids"]),
    }
