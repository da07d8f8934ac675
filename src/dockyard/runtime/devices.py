"""Device nodes in the container's /dev: the default set plus linux.devices."""

from __future__ import annotations

import os
import stat

from dockyard.runtime import mounts
from dockyard.runtime import syscalls as sc
from dockyard.runtime.errors import RuntimeFailure

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

# The set every OCI container gets (runtime spec, "Default Devices").
DEFAULT_DEVICES: list[dict[str, Any]] = [
    {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666},
    {"path": "/dev/zero", "type": "c", "major": 1, "minor": 5, "fileMode": 0o666},
    {"path": "/dev/full", "type": "c", "major": 1, "minor": 7, "fileMode": 0o666},
    {"path": "/dev/random", "type": "c", "major": 1, "minor": 8, "fileMode": 0o666},
    {"path": "/dev/urandom", "type": "c", "major": 1, "minor": 9, "fileMode": 0o666},
    {"path": "/dev/tty", "type": "c", "major": 5, "minor": 0, "fileMode": 0o666},
]

# Device cgroup rules that let the default devices (and ptys) be used.
DEFAULT_ALLOW_RULES: list[dict[str, Any]] = [
    *(
        {"allow": True, "type": "c", "major": d["major"], "minor": d["minor"], "access": "rwm"}
        for d in DEFAULT_DEVICES
    ),
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # /dev/ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # /dev/pts/*
]

_LINKS = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
]

_KINDS = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def all_devices(linux: dict[str, Any]) -> list[dict[str, Any]]:
    """Defaults first; a config entry for the same path replaces the default."""
    extra = list(linux.get("devices") or [])
    paths = {d.get("path") for d in extra}
    return [d for d in DEFAULT_DEVICES if d["path"] not in paths] + extra


def create(root: str, devices: list[dict[str, Any]], bind_from_host: bool) -> None:
    """mknod each device (or, in a user namespace, bind the host's node over a file)."""
    syscalls = sc.current()
    for dev in devices:
        kind = _KINDS.get(dev.get("type", ""))
        if kind is None:
            raise RuntimeFailure(
                f"linux.devices: {dev.get('path')}: unknown type {dev.get('type')!r}"
            )
        path = mounts.secure_join(root, dev["path"])
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        if bind_from_host:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o000))
            syscalls.mount(dev["path"], path, None, sc.MS_BIND)
            continue
        mode = dev.get("fileMode", 0o666) & 0o7777
        os.mknod(path, kind | mode, os.makedev(dev.get("major", 0), dev.get("minor", 0)))
        os.chmod(path, mode)  # mknod honours the umask; the spec's mode must hold
        os.chown(path, dev.get("uid", 0), dev.get("gid", 0))


def links(root: str, has_devpts: bool) -> None:
    pairs = list(_LINKS)
    if has_devpts:
        pairs.append(("pts/ptmx", "/dev/ptmx"))
    if os.path.exists("/proc/kcore"):
        pairs.append(("/proc/kcore", "/dev/core"))
    for target, link in pairs:
        path = mounts.secure_join(root, link)
        if os.path.lexists(path):
            if link != "/dev/ptmx":
                continue
            os.unlink(path)
        os.symlink(target, path)
