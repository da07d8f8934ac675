"""Run options beyond the basics, as Docker's HostConfig has them.

`--ulimit`, `--device`, `--sysctl`, `--init`, `--group-add`, `--oom-score-adj`,
`--stop-signal`, `--stop-timeout` and the health check flags: parsed and
checked here (one clear line per bad value), then applied to the config.json
that `spec.build` made (`finish`), which also returns what the container's
record keeps (StopSignal, StopTimeout, Healthcheck, Init, LogConfig, Attach*).
"""

from __future__ import annotations

import os

from dockyard.engine.containers import EngineError
from dockyard.engine.spec import RunOptions

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

INIT_PATH = "/sbin/docker-init"
INIT_CANDIDATES = ("/usr/bin/tini-static", "/usr/bin/docker-init", "/usr/bin/tini")

# Docker's allow-list of namespaced sysctls (moby: opts/hostconfig + daemon/oci_linux).
_IPC_SYSCTLS = {
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
}

_ULIMITS = {
    "core": "RLIMIT_CORE",
    "cpu": "RLIMIT_CPU",
    "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS",
    "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE",
    "nice": "RLIMIT_NICE",
    "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC",
    "rss": "RLIMIT_RSS",
    "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME",
    "sigpending": "RLIMIT_SIGPENDING",
    "stack": "RLIMIT_STACK",
    "as": "RLIMIT_AS",
}

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


class OptionError(EngineError):
    """A run option with a value that can't work."""


class ExtraRunOptions(RunOptions):
    """RunOptions plus the HostConfig fields `finish` applies."""

    devices: list[dict[str, Any]]
    init: bool
    group_add: list[int]
    oom_score_adj: int | None
    stop_signal: str | None
    stop_timeout: int | None
    healthcheck: dict[str, Any] | None
    log_config: dict[str, Any] | None  # HostConfig.LogConfig: {"Type": …, "Config": {…}}
    attach: tuple[bool, bool, bool] | None  # Config.AttachStdin/Stdout/Stderr

    @classmethod
    def extend(cls, opts: RunOptions) -> ExtraRunOptions:
        new = cls.__new__(cls)
        new.__dict__.update(vars(opts))
        new.devices = []
        new.init = False
        new.group_add = []
        new.oom_score_adj = None
        new.stop_signal = None
        new.stop_timeout = None
        new.healthcheck = None
        new.log_config = None
        new.attach = None
        return new


# ------------------------------------------------------------------ parsers


def parse_duration(text: str, flag: str) -> int:
    """Go's time.ParseDuration (e.g. 1m30s, 0.2s, 500ms) in nanoseconds."""
    import re

    value = text.strip()
    bad = OptionError(
        f'invalid argument "{text}" for "{flag}" flag: time: invalid duration "{text}"'
    )
    if value in ("0", "+0", "-0"):
        return 0
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", value)
    if not parts or "".join(n + u for n, u in parts) != value.lstrip("+"):
        raise bad
    total = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    return int(total)


def parse_ulimit(text: str) -> dict[str, Any]:
    """`type=soft[:hard]` → an OCI rlimit."""
    name, sep, values = text.partition("=")
    if not sep or name not in _ULIMITS:
        raise OptionError(
            f'invalid argument "{text}" for "--ulimit" flag: use TYPE=SOFT[:HARD] with TYPE one '
            f"of {', '.join(sorted(_ULIMITS))}"
        )
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
    except ValueError:
        raise OptionError(
            f'invalid argument "{text}" for "--ulimit" flag: limits must be integers'
        ) from None
    if soft > hard:
        raise OptionError(
            f'invalid argument "{text}" for "--ulimit" flag: ulimit soft limit must be less '
            f"than or equal to hard limit: {soft} > {hard}"
        )
    return {"type": _ULIMITS[name], "soft": soft, "hard": hard}


def check_ulimits(rlimits: list[dict[str, Any]]) -> None:
    """Without CAP_SYS_RESOURCE a hard limit can't go above the host's: say so now."""
    import resource

    if _has_cap(24):  # CAP_SYS_RESOURCE
        return
    names = {v: k for k, v in _ULIMITS.items()}
    for limit in rlimits:
        number = getattr(resource, limit["type"], None)
        if number is None:
            continue
        host_hard = resource.getrlimit(number)[1]
        if host_hard != resource.RLIM_INFINITY and (limit["hard"] < 0 or limit["hard"] > host_hard):
            raise OptionError(
                f"--ulimit {names.get(limit['type'], limit['type'])}: hard limit "
                f"{limit['hard']} is above the host's hard limit {host_hard}"
            )


def _has_cap(bit: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False


def parse_device(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`/dev/x[:/dev/y][:rwm]` → (linux.devices entry, device cgroup allow rule)."""
    import stat

    parts = text.split(":")
    host = parts[0]
    container = host
    perms = "rwm"
    if len(parts) == 2:
        if _is_perms(parts[1]):
            perms = parts[1]
        else:
            container = parts[1]
    elif len(parts) == 3:
        container, perms = parts[1], parts[2]
    elif len(parts) > 3 or not host:
        raise OptionError(f"invalid device specification: {text}")
    if not _is_perms(perms):
        raise OptionError(f"invalid device mode: {perms} (use a combination of r, w and m)")
    if not host.startswith("/") or not container.startswith("/"):
        raise OptionError(f"invalid device specification: {text}: paths must be absolute")
    try:
        st = os.stat(host)
    except OSError as err:
        raise OptionError(
            f'error gathering device information while adding custom device "{host}": '
            f"{(err.strerror or str(err)).lower()}"
        ) from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise OptionError(f'error gathering device information: "{host}" is not a device node')
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    device = {
        "path": container,
        "type": kind,
        "major": major,
        "minor": minor,
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    # The node is made inside the container's device cgroup: "m" must stay allowed for that.
    access = perms if "m" in perms else perms + "m"
    rule = {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}
    return device, rule


def _is_perms(text: str) -> bool:
    return (
        bool(text)
        and len(text) <= 3
        and all(c in "rwm" for c in text)
        and len(set(text)) == len(text)
    )


def check_sysctl(key: str, network: str) -> None:
    """Only namespaced sysctls; net.* only with the container's own network namespace."""
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return
    if key.startswith("net."):
        if network == "host":
            raise OptionError(
                f'sysctl "{key}" not allowed in host network namespace (--network host)'
            )
        return
    raise OptionError(
        f'sysctl "{key}" is not allowed: it is not namespaced (allowed: kernel.msg*, '
        "kernel.sem, kernel.shm*, fs.mqueue.*, net.*)"
    )


def parse_signal_name(text: str) -> str:
    """A signal name or number, checked; kept as given (Docker keeps "SIGUSR1")."""
    from dockyard.runtime.cli import parse_signal
    from dockyard.runtime.errors import RuntimeFailure

    try:
        parse_signal(text)
    except (RuntimeFailure, ValueError):
        raise OptionError(f"Invalid signal: {text}") from None
    return text


def healthcheck_options(
    cmd: str | None,
    interval: str | None,
    timeout: str | None,
    retries: int | None,
    start_period: str | None,
    disabled: bool,
) -> dict[str, Any] | None:
    """The Healthcheck of the run flags (Docker's shape, durations in ns); None if no flag."""
    given = any(v is not None for v in (cmd, interval, timeout, retries, start_period))
    if disabled:
        if given:
            raise OptionError("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if not given:
        return None
    doc: dict[str, Any] = {}
    if cmd is not None:
        doc["Test"] = ["CMD-SHELL", cmd]
    for key, value, flag in (
        ("Interval", interval, "--health-interval"),
        ("Timeout", timeout, "--health-timeout"),
        ("StartPeriod", start_period, "--health-start-period"),
    ):
        if value is not None:
            ns = parse_duration(value, flag)
            if ns < 0 or (ns and ns < 1_000_000):
                raise OptionError(f"{flag}: {value}: must be at least 1ms (or 0 for the default)")
            doc[key] = ns
    if retries is not None:
        if retries < 0:
            raise OptionError("--health-retries cannot be negative")
        doc["Retries"] = retries
    return doc


def merge_healthcheck(
    image: dict[str, Any] | None, given: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Docker's merge: run flags override the image's HEALTHCHECK field by field."""
    if given and given.get("Test") == ["NONE"]:
        return None
    merged = dict(image or {})
    merged.update(given or {})
    test = merged.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    return merged


# ------------------------------------------------------------------ applying


def init_binary() -> str:
    for path in INIT_CANDIDATES:
        if os.path.isfile(path):
            return path
    raise OptionError(
        "--init: no static init found (install Debian's tini package: /usr/bin/tini-static)"
    )


def finish(
    config: dict[str, Any], opts: RunOptions, image_config: dict[str, Any]
) -> dict[str, Any]:
    """Apply the extra options to config.json; the fields the container's record keeps."""
    image = image_config.get("config") or {}
    args = list(config["process"]["args"])
    record: dict[str, Any] = {"Args": args}
    check_ulimits(list(config["process"].get("rlimits") or []))
    for key in (config.get("linux") or {}).get("sysctl") or {}:
        check_sysctl(key, opts.network)
    extra = opts if isinstance(opts, ExtraRunOptions) else ExtraRunOptions.extend(opts)
    linux = config["linux"]
    if extra.devices:
        linux["devices"] = [dict(d) for d, _ in _devices(extra)]
        rules = linux["resources"].setdefault("devices", [])
        rules.extend(rule for _, rule in _devices(extra))
    if extra.group_add:
        user = config["process"]["user"]
        user["additionalGids"] = sorted({*user.get("additionalGids", []), *extra.group_add})
    if extra.oom_score_adj is not None:
        config["process"]["oomScoreAdj"] = extra.oom_score_adj
    if extra.init:
        config["mounts"].append(
            {
                "destination": INIT_PATH,
                "type": "bind",
                "source": init_binary(),
                "options": ["bind", "ro", "nosuid", "nodev"],
            }
        )
        config["process"]["args"] = [INIT_PATH, "--", *args]
        record["Init"] = True
    stop_signal = extra.stop_signal or image.get("StopSignal")
    if stop_signal:
        record["StopSignal"] = parse_signal_name(str(stop_signal))
    if extra.stop_timeout is not None:
        record["StopTimeout"] = extra.stop_timeout
    health = merge_healthcheck(image.get("Healthcheck"), extra.healthcheck)
    if health:
        record["Healthcheck"] = health
    if extra.log_config is not None:
        from dockyard.engine.logs import LogConfigError, log_config

        try:
            record["LogConfig"] = log_config(
                extra.log_config.get("Type"), extra.log_config.get("Config")
            )
        except LogConfigError as err:
            raise OptionError(str(err)) from None
    if extra.attach is not None:
        record["AttachStdin"], record["AttachStdout"], record["AttachStderr"] = extra.attach
    return record


def _devices(opts: ExtraRunOptions) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d["device"], d["rule"]) for d in opts.devices]
