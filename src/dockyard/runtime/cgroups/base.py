"""The interface every cgroup manager offers, path parsing, mode detection and file helpers.

Kept free of heavy imports: the runtime's start path imports this module.
"""

from __future__ import annotations

import abc
import errno
import os
import time

from dockyard.runtime.errors import RuntimeFailure

TYPE_CHECKING = False  # typing itself costs ~7 ms to import; mypy still sees the block
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DEFAULT_ROOT = "/sys/fs/cgroup"
DEFAULT_PARENT = "/dockyard"

MODE_V1 = "v1"
MODE_V2 = "v2"
MODE_HYBRID = "hybrid"

# Limits this large are how v1 spells "unlimited"; reported as 0 like v2's "max".
UNLIMITED_V1 = 1 << 62


class CgroupManager(abc.ABC):
    """One container's cgroup, whatever the host's cgroup layout."""

    path: str

    @abc.abstractmethod
    def create(self) -> None: ...

    @abc.abstractmethod
    def add_process(self, pid: int) -> None: ...

    @abc.abstractmethod
    def apply(self, resources: dict[str, object]) -> None: ...

    @abc.abstractmethod
    def freeze(self) -> None: ...

    @abc.abstractmethod
    def thaw(self) -> None: ...

    @abc.abstractmethod
    def is_frozen(self) -> bool: ...

    @abc.abstractmethod
    def pids(self) -> list[int]: ...

    @abc.abstractmethod
    def exists(self) -> bool: ...

    @abc.abstractmethod
    def destroy(self) -> None: ...

    @abc.abstractmethod
    def stats(self) -> dict[str, dict[str, int]]: ...


# --- cgroupsPath -------------------------------------------------------------------


def expand_slice(slice_name: str) -> str:
    """systemd's slice nesting: "a-b.slice" lives at "/a.slice/a-b.slice"."""
    suffix = ".slice"
    if len(slice_name) <= len(suffix) or not slice_name.endswith(suffix) or "/" in slice_name:
        raise RuntimeFailure(f"invalid systemd slice name: {slice_name!r}")
    stem = slice_name[: -len(suffix)]
    if stem == "-":
        return ""
    path = prefix = ""
    for component in stem.split("-"):
        if not component:
            raise RuntimeFailure(f"invalid systemd slice name: {slice_name!r}")
        path += "/" + prefix + component + suffix
        prefix += component + "-"
    return path


def parse_cgroups_path(cgroups_path: str | None, container_id: str, systemd: bool = False) -> str:
    """OCI linux.cgroupsPath to an absolute path inside the hierarchy."""
    if not cgroups_path:
        if systemd:
            return f"/system.slice/dockyard-{container_id}.scope"
        return f"{DEFAULT_PARENT}/{container_id}"
    parts = cgroups_path.split(":")
    if len(parts) == 3:
        slice_name, prefix, name = parts
        base = expand_slice(slice_name or "system.slice")
        unit = name if name.endswith(".slice") else f"{prefix}-{name}.scope" if prefix else name
        if not unit or "/" in unit:
            raise RuntimeFailure(f"invalid systemd cgroupsPath: {cgroups_path!r}")
        return f"{base}/{unit}"
    if systemd:
        raise RuntimeFailure(
            f"systemd cgroupsPath must be 'slice:prefix:name', got {cgroups_path!r}"
        )
    # normpath also folds "..": a config can't point outside the hierarchy.
    path = os.path.normpath("/" + cgroups_path.lstrip("/"))
    return "/" + path.lstrip("/")


# --- mode detection ------------------------------------------------------------------


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) for every cgroup/cgroup2 mount."""
    found: list[tuple[str, str, str]] = []
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields = pre.split()
        tail = post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] in ("cgroup", "cgroup2"):
            found.append((_unescape(fields[4]), tail[0], tail[2]))
    return found


def detect_mode(root: str = DEFAULT_ROOT, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The layout at `root`: "v2" (cgroup2 itself), "hybrid" (v1 beside a cgroup2) or "v1".

    A root that is no mount at all (a fake tree in tests) is judged by its files.
    """
    root = os.path.normpath(root)
    mounts = cgroup_mounts(mountinfo)
    for point, fstype, _ in mounts:
        if point == root:
            return MODE_V2 if fstype == "cgroup2" else MODE_V1
    below = [(p, t) for p, t, _ in mounts if os.path.dirname(p) == root]
    if any(t == "cgroup" for _, t in below):
        return MODE_HYBRID if any(t == "cgroup2" for _, t in below) else MODE_V1
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return MODE_V2
    return MODE_V1


def open_manager(path: str, root: str = DEFAULT_ROOT) -> CgroupManager:
    """The manager for `path` under `root`: v2 on a unified host, v1 controllers otherwise."""
    if detect_mode(root) == MODE_V2:
        from dockyard.runtime.cgroups.v2 import V2Manager

        return V2Manager(path, root)
    from dockyard.runtime.cgroups.v1 import V1Manager

    return V1Manager(path, root)


# --- resources ----------------------------------------------------------------------


def section(resources: dict[str, object], key: str) -> dict[str, object]:
    value = resources.get(key)
    return value if isinstance(value, dict) else {}


def int_field(section: dict[str, object], key: str) -> int | None:
    value = section.get(key)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    raise RuntimeFailure(f"cgroup: {key} must be an integer, got {value!r}")


# --- file helpers --------------------------------------------------------------------


def join(base: str, path: str) -> str:
    return os.path.join(base, path.lstrip("/")) if path.strip("/") else base


def write_file(directory: str, name: str, value: str | int) -> None:
    """Write one cgroup file; a failure becomes a one-line RuntimeFailure naming it."""
    target = os.path.join(directory, name)
    data = str(value)
    try:
        with open(target, "w") as f:
            f.write(data)
    except OSError as e:
        raise RuntimeFailure(
            f"cgroup: cannot write {data!r} to {target}: {e.strerror or e}"
        ) from None


def read_file(directory: str, name: str) -> str | None:
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def read_int(directory: str, name: str) -> int | None:
    raw = read_file(directory, name)
    if raw is None:
        return None
    if raw == "max":
        return 0
    try:
        return int(raw.split()[0])
    except (ValueError, IndexError):
        return None


def read_keyed(directory: str, name: str) -> dict[str, str]:
    """A flat-keyed file such as cgroup.events or cpu.stat."""
    raw = read_file(directory, name) or ""
    out: dict[str, str] = {}
    for line in raw.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


def walk_dirs(top: str) -> Iterator[str]:
    """`top` and every cgroup below it, deepest first."""
    for dirpath, _, _ in os.walk(top, topdown=False):
        yield dirpath


def collect_pids(top: str) -> list[int]:
    seen: set[int] = set()
    for directory in walk_dirs(top):
        for line in (read_file(directory, "cgroup.procs") or "").split():
            if line.isdigit():
                seen.add(int(line))
    return sorted(seen)


def remove_tree(top: str, timeout: float = 1.0) -> None:
    """rmdir `top` and its children deepest first, retrying while the kernel says EBUSY."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        busy: OSError | None = None
        for directory in walk_dirs(top):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as e:
                # A fake tree in tests holds plain files; the kernel's tree never does.
                if e.errno == errno.ENOTEMPTY and _only_files(directory):
                    _remove_files(directory)
                    continue
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise RuntimeFailure(
                        f"cgroup: cannot remove {directory}: {e.strerror}"
                    ) from None
                busy = e
        if busy is None or not os.path.exists(top):
            return
        if time.monotonic() >= deadline:
            raise RuntimeFailure(f"cgroup: cannot remove {top}: {busy.strerror} (still in use)")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _only_files(directory: str) -> bool:
    try:
        with os.scandir(directory) as it:
            return all(not e.is_dir(follow_symlinks=False) for e in it)
    except OSError:
        return False


def _remove_files(directory: str) -> None:
    # Real cgroupfs refuses unlink; this only runs on a fake tree.
    for name in os.listdir(directory):
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            return
    os.rmdir(directory)


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
