"""cgroup v2: one unified hierarchy; limits converted from OCI the way runc does."""

from __future__ import annotations

import os

from dockyard.runtime.cgroups.base import (
    DEFAULT_ROOT,
    CgroupManager,
    collect_pids,
    int_field,
    join,
    read_file,
    read_int,
    read_keyed,
    remove_tree,
    section,
    wait_until,
    write_file,
)
from dockyard.runtime.errors import RuntimeFailure

TYPE_CHECKING = False  # typing itself costs ~7 ms to import; mypy still sees the block
if TYPE_CHECKING:
    from collections.abc import Callable

    DeviceLoader = Callable[[str, list[dict[str, object]]], None]

# Controllers a container's limits can use, enabled top-down on create.
WANTED_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids", "hugetlb", "misc")
_FREEZE_TIMEOUT = 2.0


def cpu_weight_from_shares(shares: int) -> int:
    """runc's mapping of v1 shares [2, 262144] onto v2 weight [1, 10000]."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def io_weight_from_blkio(weight: int) -> int:
    """blkio.weight [10, 1000] onto io.weight [1, 10000]."""
    return 1 + ((weight - 10) * 9999) // 990


def swap_max(swap: int, limit: int) -> int:
    """OCI swap counts memory+swap; memory.swap.max counts swap alone. 0 means leave alone."""
    if limit == -1 and swap == 0:
        return -1
    if swap in (-1, 0):
        return swap
    if limit in (0, -1):
        raise RuntimeFailure("cgroup: memory.swap needs a memory.limit on cgroup v2")
    if swap < limit:
        raise RuntimeFailure(f"cgroup: memory.swap {swap} is below memory.limit {limit}")
    return swap - limit


def _limit_str(value: int) -> str:
    return "max" if value < 0 else str(value)


def _load_devices(directory: str, rules: list[dict[str, object]]) -> None:
    from dockyard.runtime.cgroups.devices_bpf import apply_device_rules

    apply_device_rules(directory, rules)


def _try_write(directory: str, name: str, value: str) -> bool:
    try:
        write_file(directory, name, value)
    except RuntimeFailure:
        return False
    return True


class V2Manager(CgroupManager):
    def __init__(self, path: str, root: str = DEFAULT_ROOT) -> None:
        self.path = path
        self.root = root
        self.dir = join(root, path)
        # Tests swap this for a recorder: a fake tree can't take a BPF program.
        self.device_loader: DeviceLoader = _load_devices

    def create(self) -> None:
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as e:
            raise RuntimeFailure(f"cgroup: cannot create {self.dir}: {e.strerror}") from None
        available = set((read_file(self.root, "cgroup.controllers") or "").split())
        parent = self.root
        for part in [p for p in self.path.split("/") if p]:
            available = self._enable(parent, available)
            parent = os.path.join(parent, part)

    def _enable(self, directory: str, available: set[str]) -> set[str]:
        """Best effort: a controller the kernel lacks or refuses is simply left off."""
        own = read_file(directory, "cgroup.controllers")
        if own is not None:
            available = set(own.split())
        current = {
            c.lstrip("+") for c in (read_file(directory, "cgroup.subtree_control") or "").split()
        }
        missing = [c for c in WANTED_CONTROLLERS if c in available and c not in current]
        if missing:
            try:
                write_file(directory, "cgroup.subtree_control", " ".join("+" + c for c in missing))
            except RuntimeFailure:
                # One at a time, so one refused controller doesn't block the rest.
                for controller in missing:
                    _try_write(directory, "cgroup.subtree_control", "+" + controller)
        raw = read_file(directory, "cgroup.subtree_control") or ""
        return {c.lstrip("+") for c in raw.split()}

    def add_process(self, pid: int) -> None:
        write_file(self.dir, "cgroup.procs", pid)

    def apply(self, resources: dict[str, object]) -> None:
        d = self.dir
        memory = section(resources, "memory")
        if memory:
            limit = int_field(memory, "limit") or 0
            swap = swap_max(int_field(memory, "swap") or 0, limit)
            # swap.max first: lowering memory.max then failing on swap leaves less behind.
            if swap:
                write_file(d, "memory.swap.max", _limit_str(swap))
            if limit:
                write_file(d, "memory.max", _limit_str(limit))
            reservation = int_field(memory, "reservation") or 0
            if reservation:
                write_file(d, "memory.low", _limit_str(reservation))
        cpu = section(resources, "cpu")
        if cpu:
            weight = cpu_weight_from_shares(int_field(cpu, "shares") or 0)
            if weight:
                write_file(d, "cpu.weight", weight)
            quota = int_field(cpu, "quota") or 0
            period = int_field(cpu, "period") or 0
            if quota or period:
                value = str(quota) if quota > 0 else "max"
                write_file(d, "cpu.max", f"{value} {period or 100000}")
            idle = int_field(cpu, "idle")
            if idle is not None:
                write_file(d, "cpu.idle", idle)
            for key in ("cpus", "mems"):
                if cpu.get(key):
                    write_file(d, f"cpuset.{key}", str(cpu[key]))
        pids = section(resources, "pids")
        if "limit" in pids:
            limit = int_field(pids, "limit") or 0
            write_file(d, "pids.max", limit if limit > 0 else "max")
        weight = int_field(section(resources, "blockIO"), "weight") or 0
        if weight:
            if os.path.exists(os.path.join(d, "io.bfq.weight")):
                write_file(d, "io.bfq.weight", weight)
            elif os.path.exists(os.path.join(d, "io.weight")):
                write_file(d, "io.weight", f"default {io_weight_from_blkio(weight)}")
        devices = resources.get("devices")
        if isinstance(devices, list) and devices:
            self.device_loader(d, devices)
        unified = resources.get("unified")
        if isinstance(unified, dict):
            for key, value in unified.items():
                if "/" in key or key.startswith(".") or not key:
                    raise RuntimeFailure(f"cgroup: invalid unified key {key!r}")
                write_file(d, key, str(value))

    def _wait_frozen(self, want: bool, timeout: float) -> bool:
        if not os.path.exists(os.path.join(self.dir, "cgroup.events")):
            return True
        return wait_until(lambda: self.is_frozen() == want, timeout)

    def freeze(self) -> None:
        write_file(self.dir, "cgroup.freeze", 1)
        if not self._wait_frozen(True, _FREEZE_TIMEOUT):
            write_file(self.dir, "cgroup.freeze", 0)
            raise RuntimeFailure(f"cgroup: {self.dir} did not freeze within {_FREEZE_TIMEOUT}s")

    def thaw(self) -> None:
        write_file(self.dir, "cgroup.freeze", 0)
        if not self._wait_frozen(False, _FREEZE_TIMEOUT):
            raise RuntimeFailure(f"cgroup: {self.dir} did not thaw within {_FREEZE_TIMEOUT}s")

    def is_frozen(self) -> bool:
        events = read_keyed(self.dir, "cgroup.events")
        if "frozen" in events:
            return events["frozen"] == "1"
        return read_file(self.dir, "cgroup.freeze") == "1"

    def pids(self) -> list[int]:
        return collect_pids(self.dir) if os.path.isdir(self.dir) else []

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def destroy(self) -> None:
        remove_tree(self.dir)

    def stats(self) -> dict[str, dict[str, int]]:
        d = self.dir
        out: dict[str, dict[str, int]] = {}
        if os.path.exists(os.path.join(d, "memory.current")):
            out["memory"] = {
                "usage": read_int(d, "memory.current") or 0,
                "limit": read_int(d, "memory.max") or 0,
                "max_usage": read_int(d, "memory.peak") or 0,
                "inactive_file": int(read_keyed(d, "memory.stat").get("inactive_file") or 0),
            }
        if os.path.exists(os.path.join(d, "pids.current")):
            out["pids"] = {
                "current": read_int(d, "pids.current") or 0,
                "limit": read_int(d, "pids.max") or 0,
            }
        usage = read_keyed(d, "cpu.stat").get("usage_usec")
        if usage is not None and usage.isdigit():
            out["cpu"] = {"usage_ns": int(usage) * 1000}
        if os.path.exists(os.path.join(d, "io.stat")):
            io = {"read": 0, "write": 0}
            for line in (read_file(d, "io.stat") or "").splitlines():
                for item in line.split()[1:]:
                    key, _, value = item.partition("=")
                    if key in ("rbytes", "wbytes") and value.isdigit():
                        io["read" if key == "rbytes" else "write"] += int(value)
            out["blkio"] = io
        return out
