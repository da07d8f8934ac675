"""The run/create flags beyond the basics: parsed into engine.hostconfig's options."""

from __future__ import annotations

from dockyard.cli.errors import UsageError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.engine.hostconfig import ExtraRunOptions
    from dockyard.engine.spec import RunOptions


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stop-signal")
    p.add_argument("--stop-timeout", type=int)
    p.add_argument("--ulimit", action="append", default=[])
    p.add_argument("--shm-size")
    p.add_argument("--device", action="append", default=[])
    p.add_argument("--sysctl", action="append", default=[])
    p.add_argument("--cpu-shares", "-c", type=int)
    p.add_argument("--memory-swap")
    p.add_argument("--memory-reservation")
    p.add_argument("--cpuset-cpus")
    p.add_argument("--cpuset-mems")
    p.add_argument("--init", action="store_true")
    p.add_argument("--group-add", action="append", default=[])
    p.add_argument("--oom-score-adj", type=int)
    p.add_argument("--health-cmd")
    p.add_argument("--health-interval")
    p.add_argument("--health-timeout")
    p.add_argument("--health-retries", type=int)
    p.add_argument("--health-start-period")
    p.add_argument("--no-healthcheck", action="store_true")
    p.add_argument("--log-driver")
    p.add_argument("--log-opt", action="append", default=[])
    p.add_argument("-a", "--attach", action="append", default=[])


def extend(opts: RunOptions, args: argparse.Namespace) -> ExtraRunOptions:
    """`opts` (what run_options made) with the flags of this module."""
    import re

    from dockyard.cli.containers import parse_size
    from dockyard.engine import hostconfig

    extra = hostconfig.ExtraRunOptions.extend(opts)
    extra.rlimits = [*extra.rlimits, *(hostconfig.parse_ulimit(u) for u in args.ulimit)]
    if args.shm_size:
        extra.shm_size = parse_size(args.shm_size)
    for text in args.device:
        device, rule = hostconfig.parse_device(text)
        extra.devices.append({"device": device, "rule": rule})
    sysctls = dict(extra.sysctls)
    for text in args.sysctl:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise UsageError(f'invalid argument "{text}" for "--sysctl" flag: use KEY=VALUE')
        hostconfig.check_sysctl(key, extra.network)
        sysctls[key] = value
    extra.sysctls = sysctls
    resources = dict(extra.resources)
    memory = dict(resources.get("memory") or {})
    cpu = dict(resources.get("cpu") or {})
    if args.memory_swap:
        if args.memory_swap == "-1":
            memory["swap"] = -1
        else:
            swap = parse_size(args.memory_swap)
            limit = memory.get("limit")
            if not limit:
                raise UsageError(
                    "You should always set the Memory limit when using Memoryswap limit, see usage"
                )
            if swap < limit:
                raise UsageError(
                    "Minimum memoryswap limit should be larger than memory limit, see usage"
                )
            memory["swap"] = swap
    if args.memory_reservation:
        memory["reservation"] = parse_size(args.memory_reservation)
    if args.cpu_shares is not None:
        if args.cpu_shares < 0:
            raise UsageError(f"invalid --cpu-shares {args.cpu_shares}: must be positive")
        if args.cpu_shares:
            cpu["shares"] = max(2, args.cpu_shares)
    for flag, key in (("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        value = getattr(args, flag)
        if value is not None:
            if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", value):
                name = "--" + flag.replace("_", "-")
                raise UsageError(f'invalid value "{value}" for {name}: use a list like 0-2,4')
            cpu[key] = value
    if memory:
        resources["memory"] = memory
    if cpu:
        resources["cpu"] = cpu
    extra.resources = resources
    extra.init = bool(args.init)
    for group in args.group_add:
        if not group.isdigit():
            raise UsageError(
                f'--group-add "{group}": give a numeric GID (names come with a later release)'
            )
        extra.group_add.append(int(group))
    if args.oom_score_adj is not None:
        if not -1000 <= args.oom_score_adj <= 1000:
            raise UsageError(
                f"Invalid value {args.oom_score_adj}, range for oom score adj is [-1000, 1000]"
            )
        extra.oom_score_adj = args.oom_score_adj
    if args.stop_signal:
        extra.stop_signal = hostconfig.parse_signal_name(args.stop_signal)
    extra.stop_timeout = args.stop_timeout
    extra.healthcheck = hostconfig.healthcheck_options(
        args.health_cmd,
        args.health_interval,
        args.health_timeout,
        args.health_retries,
        args.health_start_period,
        args.no_healthcheck,
    )
    extra.log_config = log_config(args)
    extra.attach = attach_streams(args)
    return extra


def log_config(args: argparse.Namespace) -> dict[str, object]:
    """--log-driver and --log-opt KEY=VALUE as HostConfig.LogConfig, checked."""
    from dockyard.engine.logs import LogConfigError
    from dockyard.engine.logs import log_config as checked

    opts = dict(opt.partition("=")[::2] for opt in args.log_opt)
    try:
        return checked(args.log_driver, opts)
    except LogConfigError as err:
        raise UsageError(str(err)) from None


def attach_streams(args: argparse.Namespace) -> tuple[bool, bool, bool]:
    """(stdin, stdout, stderr) `run`/`create` attach to, as Docker's -a/-i/-d decide."""
    wanted = set()
    for name in args.attach:
        if name.lower() not in ("stdin", "stdout", "stderr"):
            raise UsageError(
                f'invalid argument "{name}" for "-a, --attach" flag: '
                "valid streams are STDIN, STDOUT and STDERR"
            )
        wanted.add(name.lower())
    if getattr(args, "detach", False):
        if wanted:
            raise UsageError("conflicting options: cannot specify both --attach and --detach")
        return False, False, False
    if not wanted:
        wanted = {"stdout", "stderr"}
    return "stdin" in wanted or args.interactive, "stdout" in wanted, "stderr" in wanted
