"""`dockyard volume create|ls|inspect|rm|prune`, as Docker prints them."""

from __future__ import annotations

import sys

from dockyard.cli.errors import UsageError
from dockyard.cli.options import key_values, render_format

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from dockyard.engine.volumes import VolumeStore

PRUNE_WARNING = (
    "WARNING! This will remove anonymous local volumes not used by at least one container.\n"
)
PRUNE_ALL_WARNING = (
    "WARNING! This will remove all local volumes not used by at least one container.\n"
)


def store(args: argparse.Namespace) -> VolumeStore:
    from dockyard.cli.containers import DEFAULT_ROOT
    from dockyard.engine.volumes import VolumeStore
    from dockyard.image.store import ImageStore

    images = ImageStore(args.root or DEFAULT_ROOT)  # opens and migrates the database
    volumes = VolumeStore(images.root, images.conn)
    volumes.purge_trash()
    return volumes


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="COMMAND", required=True)
    c = sub.add_parser("create", help="create a volume")
    c.add_argument("--name", dest="name_flag")
    c.add_argument("-d", "--driver", default="local")
    c.add_argument("-l", "--label", action="append", default=[])
    c.add_argument("-o", "--opt", action="append", default=[])
    c.add_argument("name", nargs="?")
    ls = sub.add_parser("ls", aliases=["list"], help="list volumes")
    ls.add_argument("-q", "--quiet", action="store_true")
    ls.add_argument("-f", "--filter", action="append", default=[])
    ls.add_argument("--format")
    i = sub.add_parser("inspect", help="show volumes in detail (JSON)")
    i.add_argument("-f", "--format")
    i.add_argument("names", nargs="+", metavar="VOLUME")
    rm = sub.add_parser("rm", aliases=["remove"], help="remove volumes")
    rm.add_argument("-f", "--force", action="store_true")
    rm.add_argument("names", nargs="+", metavar="VOLUME")
    pr = sub.add_parser("prune", help="remove unused anonymous volumes")
    pr.add_argument("-a", "--all", action="store_true", help="all unused volumes, named too")
    pr.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    pr.add_argument("--filter", action="append", default=[])


def run(verb: str, args: argparse.Namespace) -> int:
    action = {"list": "ls", "remove": "rm"}.get(args.action, args.action)
    return int(globals()[f"_{action}"](args))


def _create(args: argparse.Namespace) -> int:
    if args.name_flag and args.name and args.name_flag != args.name:
        raise UsageError(
            "conflicting options: either specify --name or provide positional arg, not both"
        )
    volume = store(args).create(
        args.name_flag or args.name,
        labels=key_values(args.label, "--label"),
        options=key_values(args.opt, "--opt"),
        driver=args.driver,
    )
    print(volume.name)
    return 0


def _ls(args: argparse.Namespace) -> int:
    volumes = store(args).list_volumes(args.filter)
    if args.quiet:
        for vol in volumes:
            print(vol.name)
        return 0
    if args.format and args.format != "table":
        for vol in volumes:
            data = {
                "Driver": vol.driver,
                "Name": vol.name,
                "Scope": "local",
                "Mountpoint": vol.mountpoint,
                "Labels": ",".join(f"{k}={v}" for k, v in vol.labels.items()),
            }
            print(render_format(args.format, data))
        return 0
    print(f"{'DRIVER':<10}VOLUME NAME")
    for vol in volumes:
        print(f"{vol.driver:<10}{vol.name}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from dockyard.engine.volumes import VolumeError

    volumes = store(args)
    found: list[dict[str, Any]] = []
    failed = False
    for name in args.names:
        try:
            found.append(volumes.get(name).inspect())
        except VolumeError:
            sys.stderr.write(f"Error: No such volume: {name}\n")
            failed = True
    if args.format:
        for item in found:
            print(render_format(args.format, item))
    else:
        print(json.dumps(found, indent=4))
    return 1 if failed else 0


def _rm(args: argparse.Namespace) -> int:
    from dockyard.engine.volumes import VolumeError

    volumes = store(args)
    failed = False
    for name in args.names:
        try:
            volumes.remove(name, force=args.force)
        except VolumeError as err:
            sys.stderr.write(f"Error response from daemon: {err}\n")
            failed = True
            continue
        print(name)
    return 1 if failed else 0


def human_size(n: int) -> str:
    """go-units' HumanSize: decimal units, four significant digits."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.4g}{unit}"
        value /= 1000
    return f"{n}B"


def _prune(args: argparse.Namespace) -> int:
    if args.filter:
        raise UsageError("volume prune --filter is not supported yet")
    if not args.force:
        sys.stdout.write(PRUNE_ALL_WARNING if args.all else PRUNE_WARNING)
        sys.stdout.write("Are you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    removed, size = store(args).prune(all=args.all)
    if removed:
        print("Deleted Volumes:")
        for name in removed:
            print(name)
        print()
    print(f"Total reclaimed space: {human_size(size)}")
    return 0
