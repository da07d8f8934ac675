"""Reading and checking a bundle's config.json before anything is changed.

Every check here runs in `create` before a directory, cgroup or process
exists, so a bad config fails with one line and leaves nothing behind.
"""

from __future__ import annotations

import os

from dockyard.oci.runtime_spec import HOOK_NAMES, NAMESPACE_TYPES
from dockyard.runtime.errors import RuntimeFailure

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

CONFIG_NAME = "config.json"


def load_bundle(bundle: str) -> tuple[str, dict[str, Any]]:
    """(absolute bundle path, config) or a RuntimeFailure naming what is wrong."""
    import json

    bundle = os.path.abspath(bundle)
    if not os.path.isdir(bundle):
        raise RuntimeFailure(
            f"bundle {bundle} does not exist: pass --bundle DIR with a config.json"
        )
    path = os.path.join(bundle, CONFIG_NAME)
    try:
        with open(path, "rb") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise RuntimeFailure(
            f"{path} does not exist: create one with `dockyard-runtime spec`"
        ) from None
    except ValueError as err:
        raise RuntimeFailure(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise RuntimeFailure(f"{path}: the top level must be a JSON object")
    validate(config, bundle)
    return bundle, config


def rootfs_path(config: dict[str, Any], bundle: str) -> str:
    return os.path.normpath(os.path.join(bundle, config["root"]["path"]))


def _fail(where: str, what: str) -> RuntimeFailure:
    return RuntimeFailure(f"config.json: {where}: {what}")


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> None:
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _fail(where, f"expected {names}, got {type(value).__name__}")


def validate(config: dict[str, Any], bundle: str) -> None:
    if "ociVersion" not in config:
        raise _fail("ociVersion", "missing")
    root = config.get("root")
    if not isinstance(root, dict) or not root.get("path"):
        raise _fail("root.path", "missing: the container needs a root file system")
    rootfs = rootfs_path(config, bundle)
    if not os.path.isdir(rootfs):
        raise _fail("root.path", f"{rootfs} is not a directory")
    _validate_process(config.get("process"), "process")
    for i, mount in enumerate(config.get("mounts") or []):
        where = f"mounts[{i}]"
        _expect(mount, dict, where)
        dest = mount.get("destination")
        if not isinstance(dest, str) or not dest.startswith("/"):
            raise _fail(f"{where}.destination", f"must be an absolute path, got {dest!r}")
        _expect(mount.get("options") or [], list, f"{where}.options")
    hooks = config.get("hooks") or {}
    _expect(hooks, dict, "hooks")
    for name, entries in hooks.items():
        if name not in HOOK_NAMES:
            raise _fail(f"hooks.{name}", f"unknown hook; known: {', '.join(HOOK_NAMES)}")
        for i, hook in enumerate(entries or []):
            path = hook.get("path") if isinstance(hook, dict) else None
            if not isinstance(path, str) or not path.startswith("/"):
                raise _fail(f"hooks.{name}[{i}].path", "must be an absolute path")
    _validate_linux(config.get("linux") or {})


def _validate_process(process: Any, where: str) -> None:
    if process is None:
        raise _fail(where, "missing: nothing to run")
    _expect(process, dict, where)
    args = process.get("args")
    if not args or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise _fail(f"{where}.args", "must be a non-empty list of strings")
    cwd = process.get("cwd", "/")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise _fail(f"{where}.cwd", f"must be an absolute path, got {cwd!r}")
    user = process.get("user") or {}
    _expect(user, dict, f"{where}.user")
    for key in ("uid", "gid"):
        if key in user:
            _expect(user[key], int, f"{where}.user.{key}")
    for i, entry in enumerate(process.get("env") or []):
        if not isinstance(entry, str) or "=" not in entry:
            raise _fail(f"{where}.env[{i}]", f"must be KEY=VALUE, got {entry!r}")
    from dockyard.runtime import capabilities, rlimits

    for set_name, names in (process.get("capabilities") or {}).items():
        try:
            capabilities.mask(names)
        except RuntimeFailure as err:
            raise _fail(f"{where}.capabilities.{set_name}", str(err)) from None
    for i, limit in enumerate(process.get("rlimits") or []):
        rlimits.check(limit, f"{where}.rlimits[{i}]")


def validate_process(process: Any) -> None:
    """For `exec --process FILE`."""
    _validate_process(process, "process")


def _validate_linux(linux: dict[str, Any]) -> None:
    _expect(linux, dict, "linux")
    seen: set[str] = set()
    for i, ns in enumerate(linux.get("namespaces") or []):
        kind = ns.get("type") if isinstance(ns, dict) else None
        if kind not in NAMESPACE_TYPES:
            raise _fail(f"linux.namespaces[{i}].type", f"unknown namespace type {kind!r}")
        if kind in seen:
            raise _fail(f"linux.namespaces[{i}]", f"namespace type {kind!r} listed twice")
        seen.add(kind)
        path = ns.get("path")
        if path and not os.path.exists(path):
            raise _fail(f"linux.namespaces[{i}].path", f"{path} does not exist")
    if ("uidMappings" in linux or "gidMappings" in linux) and "user" not in seen:
        raise _fail("linux.uidMappings", "given without a user namespace")
    seccomp = linux.get("seccomp")
    if seccomp:
        from dockyard.runtime import seccomp as seccomp_mod

        seccomp_mod.validate(seccomp)
    for key in linux.get("sysctl") or {}:
        if "/" in key or ".." in key:
            raise _fail("linux.sysctl", f"bad key {key!r}")
