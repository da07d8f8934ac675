"""`docker system df` and `docker info`: what the store holds, counted the way Docker does.

Images are counted by their layers, each distinct layer blob once (images that
share layers don't double the total); an image is active when a container uses
it, and what no container's image needs is reclaimable. Containers count their
writable layer (SizeRw); the ones not running are reclaimable. Volumes are
active while a container uses them. There is no build cache yet: it counts 0.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.containers import Engine
    from dockyard.image.store import Image


def _layers(engine: Engine, image: Image) -> dict[str, int]:
    """digest -> size of the image's layer blobs."""
    import json

    from dockyard.storage.content import ContentError

    try:
        manifest = json.loads(engine.images.content.read(image.manifest_digest))
    except (ContentError, OSError, ValueError):
        return {}
    return {str(d["digest"]): int(d.get("size") or 0) for d in manifest.get("layers") or []}


def stored_bytes(engine: Engine) -> int:
    """Bytes of every blob in the content store."""
    from dockyard.storage.content import ContentError

    total = 0
    for digest in engine.images.content.digests():
        try:
            total += engine.images.content.size(digest)
        except ContentError:
            continue  # removed meanwhile
    return total


def container_size(engine: Engine, container_id: str) -> int:
    from dockyard.storage.snapshots import SnapshotError

    try:
        return engine.images.snapshots.usage(f"container-{container_id}")[0]
    except (SnapshotError, OSError):
        return 0


def disk_usage(engine: Engine) -> dict[str, Any]:
    """Docker's /system/df shape, trimmed: Images, Containers, Volumes, BuildCache
    (lists of records) and LayersSize."""
    from dockyard.engine.volumes import VolumeStore, dir_size

    containers = engine.list_containers(all=True)
    per_image: dict[str, int] = {}
    for c in containers:
        per_image[c.image_id] = per_image.get(c.image_id, 0) + 1
    images = engine.images.list_images()
    layers = {image.id: _layers(engine, image) for image in images}
    owners: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for blobs in layers.values():
        for digest, size in blobs.items():
            owners[digest] = owners.get(digest, 0) + 1
            sizes[digest] = size
    image_records = []
    for image in images:
        blobs = layers[image.id]
        shared = sum(size for digest, size in blobs.items() if owners[digest] > 1)
        image_records.append(
            {
                "Id": image.id,
                "RepoTags": list(image.tags),
                "Created": image.created,
                "Size": image.size,
                "SharedSize": shared,
                "UniqueSize": image.size - shared,
                "Containers": per_image.get(image.id, 0),
                "Layers": sorted(blobs),
            }
        )
    container_records = []
    for c in containers:
        container_records.append(
            {
                "Id": c.id,
                "Names": [c.name],
                "Image": c.image_ref,
                "Command": " ".join(c.command),
                "Created": c.created,
                "State": c.status(),
                "SizeRw": container_size(engine, c.id),
                "LocalVolumes": len(c.config.get("Mounts") or []),
                "container": c,
            }
        )
    store = VolumeStore(engine.root, engine.conn)
    volume_records = []
    for vol in store.list_volumes():
        volume_records.append(
            {
                "Name": vol.name,
                "Links": len(store.users(vol.name)),
                "Size": dir_size(vol.mountpoint),
            }
        )
    return {
        "LayersSize": sum(sizes.values()),
        "LayerSizes": sizes,
        "Images": image_records,
        "Containers": container_records,
        "Volumes": volume_records,
        "BuildCache": [],
    }


def summary(usage: dict[str, Any]) -> list[dict[str, Any]]:
    """The four rows of `system df`: Type, TotalCount, Active, Size, Reclaimable (bytes)."""
    images = usage["Images"]
    used_layers = {d for i in images if i["Containers"] for d in i["Layers"]}
    used_bytes = sum(usage["LayerSizes"][d] for d in used_layers)
    containers = usage["Containers"]
    running = [c for c in containers if c["State"] in ("running", "paused", "restarting")]
    volumes = usage["Volumes"]
    return [
        {
            "Type": "Images",
            "TotalCount": len(images),
            "Active": sum(1 for i in images if i["Containers"]),
            "Size": usage["LayersSize"],
            "Reclaimable": usage["LayersSize"] - used_bytes,
        },
        {
            "Type": "Containers",
            "TotalCount": len(containers),
            "Active": len(running),
            "Size": sum(c["SizeRw"] for c in containers),
            "Reclaimable": sum(c["SizeRw"] for c in containers if c not in running),
        },
        {
            "Type": "Local Volumes",
            "TotalCount": len(volumes),
            "Active": sum(1 for v in volumes if v["Links"]),
            "Size": sum(v["Size"] for v in volumes),
            "Reclaimable": sum(v["Size"] for v in volumes if not v["Links"]),
        },
        {"Type": "Build Cache", "TotalCount": 0, "Active": 0, "Size": 0, "Reclaimable": 0},
    ]


# ---------------------------------------------------------------------------- info


def _os_name() -> str:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.strip().partition("=")
                    if key == "PRETTY_NAME":
                        return value.strip().strip('"')
        except OSError:
            continue
    return "Linux"


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _backing_fs(path: str) -> str:
    """The file system type the state root lives on (longest mount point match)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(
                    point
                ) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        pass
    return {"ext4": "extfs", "ext3": "extfs", "ext2": "extfs"}.get(kind, kind)


def cgroup_version() -> str:
    return "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1"


def info(engine: Engine) -> dict[str, Any]:
    """Docker's /info object, with the fields that mean something here."""
    import platform
    import shutil
    import socket

    from dockyard import __version__
    from dockyard.oci.image_spec import host_architecture

    containers = engine.list_containers(all=True)
    states = [c.status() for c in containers]
    running = sum(1 for s in states if s in ("running", "restarting"))
    paused = states.count("paused")
    return {
        "Containers": len(containers),
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": len(containers) - running - paused,
        "Images": len(engine.images.list_images()),
        "Driver": "overlay",
        "DriverStatus": [
            ["Backing Filesystem", _backing_fs(engine.root)],
            ["Supports d_type", "true"],
        ],
        "Plugins": {"Volume": ["local"], "Network": ["host", "none"], "Log": ["json-file"]},
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": cgroup_version(),
        "KernelVersion": platform.release(),
        "OperatingSystem": _os_name(),
        "OSType": "linux",
        "Architecture": platform.machine(),
        "ImageArchitecture": host_architecture(),
        "NCPU": os.cpu_count() or 1,
        "MemTotal": _mem_total(),
        "DockerRootDir": engine.root,
        "Name": socket.gethostname(),
        "ServerVersion": __version__,
        "Runtimes": {
            "dockyard-runtime": {"path": shutil.which("dockyard-runtime") or "dockyard-runtime"}
        },
        "DefaultRuntime": "dockyard-runtime",
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "LiveRestoreEnabled": True,
    }
