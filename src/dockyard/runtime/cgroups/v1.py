"""cgroup v1: one hierarchy per controller (also used for the controllers of a hybrid host)."""

from __future__ import annotations

import errno
import os

from dockyard.runtime.cgroups.base import (
    DEFAULT_ROOT,
    UNLIMITED_V1,
    CgroupManager,
    cgroup_mounts,
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

_KNOWN = (
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
)
_FREEZE_TIMEOUT = 2.0


def discover(root: str, mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """Controller name -> mount point of its hierarchy under `root` ("name=systemd" too)."""
    root = os.path.normpath(root)
    found: dict[str, str] = {}
    for point, fstype, options in cgroup_mounts(mountinfo):
        if fstype != "cgroup" or os.path.dirname(point) != root:
            continue
        for opt in options.split(","):
            if opt in _KNOWN or opt.startswith("name="):
                found.setdefault(opt, point)
    if found:
        return found
    # No mounts there (a test tree or an odd host): directories named after controllers.
    try:
        with os.scandir(root) as it:
            for entry in it:
                for opt in entry.name.split(","):
                    if opt in _KNOWN and entry.is_dir():
                        found.setdefault(opt, entry.path)
    except OSError:
        pass
    return found


def device_rule_string(rule: dict[str, object]) -> str:
    """An OCI device rule as the "type major:minor access" line devices.allow/deny take."""
    kind = str(rule.get("type") or "a")
    if kind not in ("a", "b", "c"):
        raise RuntimeFailure(f"cgroup: invalid device type {kind!r}")
    parts = []
    for key in ("major", "minor"):
        value = rule.get(key)
        parts.append("*" if value is None or value == -1 else str(int(str(value))))
    access = str(rule.get("access") or "rwm")
    if not set(access) <= set("rwm"):
        raise RuntimeFailure(f"cgroup: invalid device access {access!r}")
    return f"{kind} {parts[0]}:{parts[1]} {access}"


class V1Manager(CgroupManager):
    def __init__(
        self, path: str, root: str = DEFAULT_ROOT, mountinfo: str = "/proc/self/mountinfo"
    ) -> None:
        self.path = path
        self.root = root
        self.mounts = discover(root, mountinfo)

    # The same hierarchy can carry several controllers (cpu,cpuacct): each dir once.
    def _dirs(self) -> list[str]:
        seen: dict[str, str] = {}
        for mount in self.mounts.values():
            real = os.path.realpath(mount)
            seen.setdefault(real, join(mount, self.path))
        return list(seen.values())

    def _dir(self, controller: str) -> str | None:
        mount = self.mounts.get(controller)
        return join(mount, self.path) if mount else None

    def create(self) -> None:
        for directory in self._dirs():
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as e:
                raise RuntimeFailure(f"cgroup: cannot create {directory}: {e.strerror}") from None
        mount = self.mounts.get("cpuset")
        if mount:
            self._fill_cpuset(mount)

    def _fill_cpuset(self, mount: str) -> None:
        # A new cpuset cgroup starts with empty cpus/mems and refuses tasks until filled.
        parent = mount
        for part in [p for p in self.path.split("/") if p]:
            child = os.path.join(parent, part)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if read_file(child, name) == "":
                    write_file(child, name, read_file(parent, name) or "")
            parent = child

    def add_process(self, pid: int) -> None:
        for directory in self._dirs():
            if os.path.isdir(directory):
                write_file(directory, "cgroup.procs", pid)

    def apply(self, resources: dict[str, object]) -> None:
        if resources.get("unified"):
            raise RuntimeFailure("cgroup: linux.resources.unified needs cgroup v2; host uses v1")
        self._apply_memory(section(resources, "memory"))
        self._apply_cpu(section(resources, "cpu"))
        pids = section(resources, "pids")
        directory = self._dir("pids")
        if directory and "limit" in pids:
            limit = int_field(pids, "limit") or 0
            write_file(directory, "pids.max", limit if limit > 0 else "max")
        devices = resources.get("devices")
        directory = self._dir("devices")
        if directory and isinstance(devices, list):
            for rule in devices:
                if not isinstance(rule, dict):
                    raise RuntimeFailure(f"cgroup: invalid device rule {rule!r}")
                name = "devices.allow" if rule.get("allow") else "devices.deny"
                write_file(directory, name, device_rule_string(rule))
        weight = int_field(section(resources, "blockIO"), "weight")
        directory = self._dir("blkio")
        if directory and weight:
            for name in ("blkio.weight", "blkio.bfq.weight"):
                if os.path.exists(os.path.join(directory, name)):
                    write_file(directory, name, weight)
                    break

    def _apply_memory(self, memory: dict[str, object]) -> None:
        directory = self._dir("memory")
        if not directory or not memory:
            return
        limit = int_field(memory, "limit") or 0
        swap = int_field(memory, "swap") or 0
        has_swap = os.path.exists(os.path.join(directory, "memory.memsw.limit_in_bytes"))
        if limit == -1 and swap == 0 and has_swap:
            swap = -1
        if not has_swap:
            swap = 0

        def set_limit() -> None:
            if limit:
                write_file(directory, "memory.limit_in_bytes", limit)

        def set_swap() -> None:
            if swap:
                write_file(directory, "memory.memsw.limit_in_bytes", swap)

        # memory.limit must stay <= memsw.limit at every step or the kernel says EINVAL.
        current = read_int(directory, "memory.limit_in_bytes") or 0
        if limit and swap and (swap == -1 or current < swap):
            set_swap()
            set_limit()
        else:
            set_limit()
            set_swap()
        reservation = int_field(memory, "reservation")
        if reservation:
            write_file(directory, "memory.soft_limit_in_bytes", reservation)
        swappiness = int_field(memory, "swappiness")
        if swappiness is not None and 0 <= swappiness <= 100:
            write_file(directory, "memory.swappiness", swappiness)
        if memory.get("disableOOMKiller"):
            write_file(directory, "memory.oom_control", 1)

    def _apply_cpu(self, cpu: dict[str, object]) -> None:
        directory = self._dir("cpu")
        if directory and cpu:
            shares = int_field(cpu, "shares")
            if shares:
                write_file(directory, "cpu.shares", shares)
            period = int_field(cpu, "period") or 0
            quota = int_field(cpu, "quota") or 0
            pending = False
            if period:
                try:
                    with open(os.path.join(directory, "cpu.cfs_period_us"), "w") as f:
                        f.write(str(period))
                except OSError as e:
                    # A shorter period can exceed the parent's quota until the quota follows.
                    if e.errno != errno.EINVAL or not quota:
                        write_file(directory, "cpu.cfs_period_us", period)
                    pending = True
            if quota:
                write_file(directory, "cpu.cfs_quota_us", quota if quota > 0 else -1)
                if pending:
                    write_file(directory, "cpu.cfs_period_us", period)
            idle = int_field(cpu, "idle")
            if idle is not None and os.path.exists(os.path.join(directory, "cpu.idle")):
                write_file(directory, "cpu.idle", idle)
        directory = self._dir("cpuset")
        if directory:
            for key, name in (("cpus", "cpuset.cpus"), ("mems", "cpuset.mems")):
                value = cpu.get(key)
                if value:
                    write_file(directory, name, str(value))

    def _freezer(self) -> str:
        directory = self._dir("freezer")
        if not directory:
            raise RuntimeFailure("cgroup: the freezer controller is not mounted")
        return directory

    def freeze(self) -> None:
        directory = self._freezer()

        def frozen() -> bool:
            state = read_file(directory, "freezer.state")
            if state == "FROZEN":
                return True
            # v1 can stall in FREEZING when a task races in; asking again nudges it.
            write_file(directory, "freezer.state", "FROZEN")
            return False

        write_file(directory, "freezer.state", "FROZEN")
        if not wait_until(frozen, _FREEZE_TIMEOUT):
            write_file(directory, "freezer.state", "THAWED")
            raise RuntimeFailure(f"cgroup: {directory} did not freeze within {_FREEZE_TIMEOUT}s")

    def thaw(self) -> None:
        directory = self._freezer()
        write_file(directory, "freezer.state", "THAWED")
        if not wait_until(lambda: read_file(directory, "freezer.state") == "THAWED", 1.0):
            raise RuntimeFailure(f"cgroup: {directory} did not thaw")

    def is_frozen(self) -> bool:
        directory = self._dir("freezer")
        return bool(directory) and read_file(directory or "", "freezer.state") == "FROZEN"

    def pids(self) -> list[int]:
        for controller in ("pids", "memory", "cpu", "freezer", *self.mounts):
            directory = self._dir(controller)
            if directory and os.path.isdir(directory):
                return collect_pids(directory)
        return []

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self._dirs())

    def destroy(self) -> None:
        for directory in self._dirs():
            remove_tree(directory)

    def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        directory = self._dir("memory")
        if directory and os.path.isdir(directory):
            limit = read_int(directory, "memory.limit_in_bytes") or 0
            out["memory"] = {
                "usage": read_int(directory, "memory.usage_in_bytes") or 0,
                "limit": 0 if limit >= UNLIMITED_V1 else limit,
                "max_usage": read_int(directory, "memory.max_usage_in_bytes") or 0,
                "inactive_file": _int(
                    read_keyed(directory, "memory.stat").get("total_inactive_file")
                ),
            }
        directory = self._dir("pids")
        if directory and os.path.isdir(directory):
            out["pids"] = {
                "current": read_int(directory, "pids.current") or 0,
                "limit": read_int(directory, "pids.max") or 0,
            }
        directory = self._dir("cpuacct")
        if directory and os.path.isdir(directory):
            out["cpu"] = {"usage_ns": read_int(directory, "cpuacct.usage") or 0}
        directory = self._dir("blkio")
        if directory and os.path.isdir(directory):
            io = {"read": 0, "write": 0}
            text = read_file(directory, "blkio.throttle.io_service_bytes_recursive") or ""
            for line in text.splitlines():
                fields = line.split()
                if len(fields) == 3 and fields[1] in ("Read", "Write") and fields[2].isdigit():
                    io[fields[1].lower()] += int(fields[2])
            out["blkio"] = io
        return out


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0
