"""The OCI runtime config of a container: image config + run options, Docker's defaults.

Pure: takes plain dicts, returns the config.json dict. What Docker gives a
container by default (capabilities, mounts, masked paths) is what dockyard
gives; `privileged` lifts it as `docker run --privileged` does.
"""

from __future__ import annotations

from dockyard.oci.runtime_spec import OCI_VERSION

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.mountspec import MountSpec

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# moby's oci/caps/defaults.go
DOCKER_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

# moby's oci/defaults.go
DOCKER_MASKED_PATHS = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
DOCKER_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_mounts(shm_size: int = 64 << 20) -> list[dict[str, Any]]:
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["ro", "nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}"],
        },
    ]


class RunOptions:
    """What `dockyard run/create` can say about a container (the part the runtime config needs)."""

    def __init__(
        self,
        command: list[str] | None = None,
        entrypoint: list[str] | None = None,
        env: list[str] | None = None,
        workdir: str | None = None,
        user: tuple[int, int, list[int]] | None = None,
        user_spec: str | None = None,
        hostname: str | None = None,
        tty: bool = False,
        read_only: bool = False,
        privileged: bool = False,
        cap_add: list[str] | None = None,
        cap_drop: list[str] | None = None,
        no_new_privileges: bool = False,
        network: str = "bridge",
        resources: dict[str, Any] | None = None,
        mounts: list[dict[str, Any]] | None = None,
        sysctls: dict[str, str] | None = None,
        rlimits: list[dict[str, Any]] | None = None,
        shm_size: int = 64 << 20,
        labels: dict[str, str] | None = None,
        mount_specs: list[MountSpec] | None = None,
        seccomp: dict[str, Any] | str = "default",
        publish: list[tuple[str, str, int, int]] | None = None,
        publish_all: bool = False,
        expose: list[str] | None = None,
        dns: list[str] | None = None,
        dns_search: list[str] | None = None,
        dns_options: list[str] | None = None,
        extra_hosts: list[str] | None = None,
        network_aliases: list[str] | None = None,
        ip: str | None = None,
    ) -> None:
        self.command = command
        self.entrypoint = entrypoint
        self.env = env or []
        self.workdir = workdir
        self.user = user
        # -u as given (names or numbers); the engine resolves it against the image.
        self.user_spec = user_spec
        self.hostname = hostname
        self.tty = tty
        self.read_only = read_only
        self.privileged = privileged
        self.cap_add = cap_add or []
        self.cap_drop = cap_drop or []
        self.no_new_privileges = no_new_privileges
        self.network = network
        self.resources = resources or {}
        self.mounts = mounts or []
        self.sysctls = sysctls or {}
        self.rlimits = rlimits or []
        self.shm_size = shm_size
        self.labels = labels or {}
        # "default" (the built-in profile), "unconfined", or an OCI seccomp object.
        self.seccomp = seccomp
        # -v/--mount/--tmpfs as parsed (engine.mountspec); the engine turns them into `mounts`
        self.mount_specs = mount_specs or []
        # Networking (engine/networking.py): (proto, host_ip, host_port or 0, port) per -p.
        self.publish = publish or []
        self.publish_all = publish_all
        self.expose = expose or []  # "80/tcp" keys, as in an image's ExposedPorts
        self.dns = dns or []
        self.dns_search = dns_search or []
        self.dns_options = dns_options or []
        self.extra_hosts = extra_hosts or []  # "name:address"
        self.network_aliases = network_aliases or []
        self.ip = ip


class SpecError(ValueError):
    """Options that can't make a container (e.g. nothing to run)."""


def command_parts(image_config: dict[str, Any], opts: RunOptions) -> tuple[list[str], list[str]]:
    """(entrypoint, cmd) by Docker's rule: --entrypoint resets the image's cmd."""
    entrypoint = opts.entrypoint if opts.entrypoint is not None else image_config.get("Entrypoint")
    if opts.command:
        cmd = opts.command
    elif opts.entrypoint is not None:
        cmd = []
    else:
        cmd = image_config.get("Cmd") or []
    return list(entrypoint or []), list(cmd)


def process_args(image_config: dict[str, Any], opts: RunOptions) -> list[str]:
    """entrypoint + cmd, or an error when the image and the options give nothing to run."""
    entrypoint, cmd = command_parts(image_config, opts)
    args = entrypoint + cmd
    if not args:
        raise SpecError("no command specified: the image has no CMD or ENTRYPOINT; give one")
    return args


def merge_env(image_env: list[str], extra: list[str]) -> list[str]:
    """Image env, then -e values (same key: the later one wins, in the earlier one's
    place); PATH always set."""
    merged: dict[str, str] = {}
    for entry in [*image_env, *extra]:
        key, sep, value = entry.partition("=")
        merged[key] = f"{key}={value}" if sep else entry
    merged.setdefault("PATH", DEFAULT_PATH)
    return list(merged.values())


def config_env(image_config: dict[str, Any], opts: RunOptions) -> list[str]:
    """Docker's Config.Env: the image's Env with the -e values."""
    return merge_env(list(image_config.get("Env") or []), list(opts.env))


def process_env(image_config: dict[str, Any], opts: RunOptions, hostname: str) -> list[str]:
    """The process's environment as dockerd makes it: PATH, HOSTNAME and (with a tty)
    TERM first, then Config.Env replacing or adding (the runtime adds HOME if unset)."""
    defaults = [DEFAULT_PATH, f"HOSTNAME={hostname}", *(["TERM=xterm"] if opts.tty else [])]
    return merge_env(defaults, config_env(image_config, opts))


def _host_bounding() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return (1 << 64) - 1


def _capabilities(opts: RunOptions) -> list[str]:
    from dockyard.runtime import capabilities

    if opts.privileged:
        # Every capability this host can give (its bounding set may lack some).
        host = _host_bounding()
        return [c for c, bit in capabilities.CAPABILITIES.items() if host >> bit & 1]
    names = {n if n.upper().startswith("CAP_") else f"CAP_{n}" for n in opts.cap_add}
    caps = set(DOCKER_CAPABILITIES) | {n.upper() for n in names}
    drops = {(n if n.upper().startswith("CAP_") else f"CAP_{n}").upper() for n in opts.cap_drop}
    if "CAP_ALL" in {n.upper() for n in names}:
        caps = set(capabilities.CAPABILITIES)
    if "CAP_ALL" in drops:
        caps = {c for c in caps if c in {n.upper() for n in names}}
    caps -= drops
    caps.discard("CAP_ALL")
    return sorted(caps, key=lambda c: capabilities.CAPABILITIES.get(c, 99))


def build(
    container_id: str,
    image_config: dict[str, Any],
    opts: RunOptions,
    rootfs: str = "rootfs",
) -> dict[str, Any]:
    """The config.json for one container."""
    config = image_config.get("config") or {}
    caps = _capabilities(opts)
    uid, gid, groups = opts.user or (0, 0, [])
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    if opts.network != "host":
        namespaces.append({"type": "network"})
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": f"/dockyard/{container_id}",
        "resources": {"devices": [{"allow": opts.privileged, "access": "rwm"}], **opts.resources},
        "sysctl": dict(opts.sysctls),
    }
    if not opts.privileged and opts.seccomp != "unconfined":
        from dockyard.engine import seccomp_profile

        if isinstance(opts.seccomp, dict) and "docker_profile" in opts.seccomp:
            linux["seccomp"] = seccomp_profile.from_docker_profile(
                opts.seccomp["docker_profile"], caps
            )
        elif isinstance(opts.seccomp, dict):
            linux["seccomp"] = opts.seccomp
        else:
            linux["seccomp"] = seccomp_profile.default_profile(caps)
    if not opts.privileged:
        linux["maskedPaths"] = list(DOCKER_MASKED_PATHS)
        linux["readonlyPaths"] = list(DOCKER_READONLY_PATHS)
    mounts = default_mounts(opts.shm_size)
    if opts.privileged:
        for mount in mounts:
            if mount["destination"] in ("/sys", "/sys/fs/cgroup"):
                mount["options"] = [o for o in mount["options"] if o != "ro"]
    taken = {m["destination"] for m in opts.mounts}
    mounts = [m for m in mounts if m["destination"] not in taken] + list(opts.mounts)
    user: dict[str, Any] = {"uid": uid, "gid": gid}
    hostname = opts.hostname or container_id[:12]
    if groups:
        user["additionalGids"] = list(groups)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": opts.tty,
            "user": user,
            "args": process_args(config, opts),
            "env": process_env(config, opts, hostname),
            "cwd": opts.workdir or config.get("WorkingDir") or "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
            "rlimits": list(opts.rlimits),
            "noNewPrivileges": opts.no_new_privileges,
        },
        "root": {"path": rootfs, "readonly": opts.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": {f"org.dockyard.label.{k}": v for k, v in opts.labels.items()},
    }


MIN_MEMORY = 6 * 1024 * 1024  # Docker's linuxMinMemory


def parse_size(text: str) -> int:
    """Docker's sizes: 64m, 1g, 512k, 1024b, plain bytes."""
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    value = text.strip().lower()
    unit = value[-1] if value and value[-1] in units else "b"
    number = value[:-1] if value and value[-1] in units else value
    try:
        size = int(float(number) * units[unit])
    except ValueError:
        raise SpecError(
            f'invalid size: "{text}": use a number with an optional b, k, m or g'
        ) from None
    if size <= 0:
        raise SpecError(f'invalid size: "{text}": must be positive')
    return size
