"""`restart` and `update`."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    if verb == "restart":
        p.add_argument("-t", "--time", type=float)
    else:
        p.add_argument("-m", "--memory")
        p.add_argument("--memory-swap")
        p.add_argument("--memory-reservation")
        p.add_argument("--cpus")
        p.add_argument("--cpu-shares", "-c", type=int)
        p.add_argument("--cpuset-cpus")
        p.add_argument("--pids-limit", type=int)
        p.add_argument("--restart")
    p.add_argument("containers", nargs="+")


def resources(args: argparse.Namespace) -> dict[str, Any]:
    from dockyard.cli.containers import MIN_MEMORY, parse_size
    from dockyard.cli.errors import UsageError

    found: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    if args.memory:
        memory["limit"] = parse_size(args.memory)
        if memory["limit"] < MIN_MEMORY:
            raise UsageError("Minimum memory limit allowed is 6MB")
    if args.memory_swap:
        memory["swap"] = -1 if args.memory_swap == "-1" else parse_size(args.memory_swap)
    if args.memory_reservation:
        memory["reservation"] = parse_size(args.memory_reservation)
    if memory:
        found["memory"] = memory
    cpu: dict[str, Any] = {}
    if args.cpus:
        try:
            cpus = float(args.cpus)
        except ValueError:
            raise UsageError(f'--cpus "{args.cpus}": give a number like 0.5') from None
        cpu.update(quota=int(cpus * 100000), period=100000)
    if args.cpu_shares:
        cpu["shares"] = args.cpu_shares
    if args.cpuset_cpus:
        cpu["cpus"] = args.cpuset_cpus
    if cpu:
        found["cpu"] = cpu
    if args.pids_limit is not None:
        found["pids"] = {"limit": args.pids_limit}
    return found


def run(verb: str, args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine, restart_policy
    from dockyard.cli.errors import for_each
    from dockyard.engine import update

    eng = engine(args)
    if verb == "update":
        limits = resources(args)
        policy = restart_policy(args.restart) if args.restart else None
        if not limits and not policy:
            sys.stderr.write("Error: you must provide one or more flags when using this command\n")
            return 1

    def one(name: str) -> None:
        if verb == "restart":
            update.restart(eng, name, timeout=args.time)
        else:
            update.update(eng, name, limits, policy)
        print(name)

    return for_each(args.containers, one)
