"""Docker's management command `container SUBCOMMAND`.

Most subcommands are another name for a top-level verb (`container ls` is
`ps`, `container rm` is `rm`) and are dispatched to it; `container inspect` is
`inspect --type container`; `container prune` lives here. (`image SUBCOMMAND`
is image_transfer's.)
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

# group -> subcommand -> (top-level verb, extra arguments put before the user's)
ALIASES: dict[str, dict[str, tuple[str, list[str]]]] = {
    "container": {
        "ls": ("ps", []),
        "list": ("ps", []),
        "remove": ("rm", []),
        "inspect": ("inspect", ["--type", "container"]),
    },
}
# Subcommands handled here rather than by a top-level verb.
OWN = {"container": ("prune",)}


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    import argparse

    p.add_argument("subcommand", metavar="COMMAND")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def run(verb: str, args: argparse.Namespace) -> int:
    from dockyard.cli.errors import UsageError
    from dockyard.cli.main import VERBS, _dispatch

    sub = args.subcommand
    if sub in OWN.get(verb, ()):
        return _container_prune(args)
    target, extra = ALIASES.get(verb, {}).get(sub, (sub, []))
    if target not in VERBS or target in ("container", "image", "volume", "system"):
        raise UsageError(f'unknown command "{verb} {sub}": see dockyard --help')
    root = ["--root", args.root] if args.root else []
    return _dispatch([*root, target, *extra, *args.rest])


def _container_prune(args: argparse.Namespace) -> int:
    import argparse

    from dockyard.cli.containers import engine
    from dockyard.engine import control
    from dockyard.engine.stats import human_decimal

    p = argparse.ArgumentParser(prog="dockyard container prune")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("--filter", action="append", default=[])
    opts = p.parse_args(args.rest)
    if opts.filter:
        from dockyard.cli.errors import UsageError

        raise UsageError("container prune --filter is not supported yet")
    if not opts.force:
        sys.stdout.write(
            "WARNING! This will remove all stopped containers.\n"
            "Are you sure you want to continue? [y/N] "
        )
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            return 0
    deleted, reclaimed = control.prune(engine(args))
    if deleted:
        print("Deleted Containers:")
        for cid in deleted:
            print(cid)
        print()
    print(f"Total reclaimed space: {human_decimal(reclaimed)}")
    return 0
