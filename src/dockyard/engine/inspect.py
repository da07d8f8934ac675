"""`inspect`: containers and images as Docker's Engine API shows them.

The container document is built from the container's row (the record `create`
stores), its bundle's config.json (what the runtime was told) and the
monitor's files (what happened since), so it says what is true now.
"""

from __future__ import annotations

import json
import os

from dockyard.engine.containers import ContainerNotFound, EngineError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.containers import Container, Engine
    from dockyard.image.store import Image

ZERO_TIME = "0001-01-01T00:00:00Z"


class NotFound(EngineError):
    """Neither a container nor an image has the name (Docker's wording)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No such object: {name}")


def find(engine: Engine, name: str, kind: str | None = None) -> tuple[str, dict[str, Any]]:
    """("container" | "image" | "volume", document) for a name: with no `kind`, the
    first of container, image, volume that has it, as Docker's `inspect` tries them."""
    from dockyard.image.reference import ReferenceError
    from dockyard.image.store import ImageNotFound

    if kind in (None, "container"):
        try:
            return "container", container_document(engine, engine.get(name))
        except ContainerNotFound:
            if kind == "container":
                raise
    if kind in (None, "image"):
        try:
            return "image", image_document(engine.images.get(name))
        except (ImageNotFound, ReferenceError):
            if kind == "image":
                raise ImageNotFound(name) from None
    if kind in (None, "volume"):
        from dockyard.engine.volumes import VolumeStore

        volume = VolumeStore(engine.root, engine.conn).find(name)
        if volume is not None:
            return "volume", volume.inspect()
        if kind == "volume":
            raise EngineError(f"No such volume: {name}")
    raise NotFound(name)


def _bundle_config(container: Container) -> dict[str, Any]:
    try:
        with open(os.path.join(container.dir, "config.json"), "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _split_command(image_config: dict[str, Any], args: list[str]) -> tuple[Any, Any]:
    """(Entrypoint, Cmd) as Docker keeps them: the image's entrypoint when args start with it."""
    entrypoint = list(image_config.get("Entrypoint") or [])
    if entrypoint and args[: len(entrypoint)] == entrypoint:
        return entrypoint, args[len(entrypoint) :] or None
    return None, args or None


def _user(process: dict[str, Any]) -> str:
    user = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    if not uid and not gid:
        return ""
    return f"{uid}:{gid}" if gid else str(uid)


def _is_privileged(linux: dict[str, Any]) -> bool:
    rules = (linux.get("resources") or {}).get("devices") or []
    return bool(rules and rules[0].get("allow")) and not linux.get("maskedPaths")


def container_document(engine: Engine, container: Container) -> dict[str, Any]:
    record = container.config
    bundle = _bundle_config(container)
    process = bundle.get("process") or {}
    linux = bundle.get("linux") or {}
    resources = linux.get("resources") or {}
    status = container.status()
    monitor = container.monitor_state
    exit_info = container.exit_info
    args = list(record.get("Args") or process.get("args") or [])
    try:
        image_config = engine.images.get(container.image_id).config.get("config") or {}
    except Exception:  # the image may be gone (rmi -f); the record still says enough
        image_config = {}
    if "Cmd" in record or "Entrypoint" in record:  # what create was given, after overrides
        entrypoint, cmd = record.get("Entrypoint") or None, record.get("Cmd") or None
    else:  # a record from before create kept them: split the args as Docker would
        entrypoint, cmd = _split_command(image_config, args)
    caps = set((process.get("capabilities") or {}).get("bounding") or [])
    memory = (resources.get("memory") or {}).get("limit") or 0
    cpu = resources.get("cpu") or {}
    nano_cpus = (
        int(cpu["quota"]) * 1_000_000_000 // int(cpu["period"])
        if cpu.get("quota") and cpu.get("period")
        else 0
    )
    policy = record.get("RestartPolicy") or {}
    privileged = _is_privileged(linux)
    from dockyard.engine.networking import network_settings
    from dockyard.engine.spec import DOCKER_CAPABILITIES

    defaults = set(DOCKER_CAPABILITIES)
    namespaces = {n.get("type") for n in linux.get("namespaces") or []}
    labels = record.get("Labels") or {}
    state = {
        "Status": status,
        "Running": status in ("running", "paused"),
        "Paused": status == "paused",
        "Restarting": status == "restarting",
        "OOMKilled": bool(exit_info.get("oom_killed")),
        "Dead": False,
        "Pid": container.pid,
        "ExitCode": container.exit_code if status in ("exited", "restarting") else 0,
        "Error": str(monitor.get("error") or ""),
        "StartedAt": monitor.get("started_at") or ZERO_TIME,
        "FinishedAt": exit_info.get("finished_at") or ZERO_TIME,
    }
    from dockyard.engine.health import read_state

    health = read_state(container.dir)
    if health is not None:
        state["Health"] = health
    log_config = record.get("LogConfig") or {"Type": "json-file", "Config": {}}
    return {
        "Id": container.id,
        "Created": container.created,
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": state,
        "Image": container.image_id,
        "ResolvConfPath": _file(container.dir, "resolv.conf"),
        "HostnamePath": _file(container.dir, "hostname"),
        "HostsPath": _file(container.dir, "hosts"),
        "LogPath": "" if log_config["Type"] == "none" else container.log_path,
        "Name": "/" + container.name,
        "RestartCount": int(monitor.get("restart_count") or exit_info.get("restart_count") or 0),
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": {
            "Binds": None,
            "LogConfig": log_config,
            "NetworkMode": record.get("NetworkMode")
            or ("host" if "network" not in namespaces else "none"),
            "PortBindings": record.get("PortBindings") or {},
            "PublishAllPorts": bool(record.get("PublishAllPorts")),
            "Dns": record.get("Dns") or [],
            "DnsOptions": record.get("DnsOptions") or [],
            "DnsSearch": record.get("DnsSearch") or [],
            "ExtraHosts": record.get("ExtraHosts") or None,
            "RestartPolicy": {
                "Name": policy.get("name", "no"),
                "MaximumRetryCount": int(policy.get("maximum_retry_count") or 0),
            },
            "AutoRemove": bool(record.get("AutoRemove")),
            "CapAdd": None if privileged else sorted(caps - defaults) or None,
            "CapDrop": None if privileged else sorted(defaults - caps) or None,
            "Privileged": privileged,
            "ReadonlyRootfs": bool((bundle.get("root") or {}).get("readonly")),
            "SecurityOpt": ["no-new-privileges"] if process.get("noNewPrivileges") else None,
            "Memory": int(memory),
            "MemorySwap": int((resources.get("memory") or {}).get("swap") or 0),
            "NanoCpus": nano_cpus,
            "CpuShares": int(cpu.get("shares") or 0),
            "CpuQuota": 0 if nano_cpus else int(cpu.get("quota") or 0),
            "CpuPeriod": 0 if nano_cpus else int(cpu.get("period") or 0),
            "PidsLimit": (resources.get("pids") or {}).get("limit") or None,
            "Sysctls": linux.get("sysctl") or None,
            "MaskedPaths": linux.get("maskedPaths"),
            "ReadonlyPaths": linux.get("readonlyPaths"),
        },
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {"MergedDir": os.path.join(container.dir, "rootfs")},
        },
        "Mounts": [],
        "Config": {
            "Hostname": record.get("Hostname") or bundle.get("hostname") or "",
            "Domainname": "",
            "User": _user(process),
            "AttachStdin": bool(record.get("AttachStdin")),
            "AttachStdout": bool(record.get("AttachStdout")),
            "AttachStderr": bool(record.get("AttachStderr")),
            "Tty": bool(record.get("Tty")),
            "OpenStdin": bool(record.get("OpenStdin")),
            "StdinOnce": False,
            "Env": list(record.get("Env") or process.get("env") or []),
            "Cmd": cmd,
            "Image": record.get("Image") or container.image_id,
            "Volumes": None,
            "WorkingDir": "" if process.get("cwd") in (None, "/") else process["cwd"],
            "Entrypoint": entrypoint,
            "OnBuild": None,
            "Labels": labels,
            **({"Healthcheck": record["Healthcheck"]} if record.get("Healthcheck") else {}),
            **({"StopSignal": record["StopSignal"]} if record.get("StopSignal") else {}),
            **({"StopTimeout": record["StopTimeout"]} if "StopTimeout" in record else {}),
        },
        "NetworkSettings": network_settings(
            engine.conn, container, status in ("running", "paused", "restarting")
        ),
    }


def _file(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    return path if os.path.exists(path) else ""


def image_document(image: Image) -> dict[str, Any]:
    from dockyard.image import reference as refs

    config = image.config
    tags: list[str] = []
    # pulled or pushed (registry/): the digests it has there; else its manifest's
    digests = [refs.parse(d, default_tag=None).familiar() for d in image.repo_digests]
    known = {d.split("@", 1)[0] for d in digests}
    for tag in sorted(image.tags):
        ref = refs.parse(tag)
        tags.append(ref.familiar())
        repo = refs.Reference(ref.domain, ref.path, None, None)
        digest = f"{repo.familiar()}@{image.manifest_digest}"
        if digest not in digests and repo.familiar() not in known:
            digests.append(digest)
    history = config.get("history") or []
    comment = next((h.get("comment") for h in reversed(history) if h.get("comment")), "")
    return {
        "Id": image.id,
        "RepoTags": tags,
        "RepoDigests": digests,
        "Parent": "",
        "Comment": comment,
        "Created": config.get("created") or image.created,
        "DockerVersion": "",
        "Author": config.get("author") or "",
        "Config": _image_config(config.get("config") or {}),
        "Architecture": config.get("architecture") or "",
        "Variant": config.get("variant"),
        "Os": config.get("os") or "",
        "Size": image.size,
        "GraphDriver": {"Name": "overlay2", "Data": None},
        "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }


def _image_config(config: dict[str, Any]) -> dict[str, Any]:
    """The image's container config with Docker's keys, absent ones as Docker shows them."""
    return {
        "Hostname": "",
        "Domainname": "",
        "User": config.get("User") or "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "ExposedPorts": config.get("ExposedPorts"),
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": config.get("Env"),
        "Cmd": config.get("Cmd"),
        "Image": "",
        "Volumes": config.get("Volumes"),
        "WorkingDir": config.get("WorkingDir") or "",
        "Entrypoint": config.get("Entrypoint"),
        "OnBuild": config.get("OnBuild"),
        "Labels": config.get("Labels"),
        "StopSignal": config.get("StopSignal"),
        # Set by a build (HEALTHCHECK, SHELL); Docker shows them only when present.
        **{k: config[k] for k in ("Healthcheck", "Shell") if config.get(k) is not None},
    }
