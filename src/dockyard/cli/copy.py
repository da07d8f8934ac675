"""`dockyard cp` and `dockyard diff`."""

from __future__ import annotations

import sys

from dockyard.cli.errors import UsageError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    if verb == "cp":
        p.add_argument("-a", "--archive", action="store_true", help="keep uid/gid of the source")
        p.add_argument(
            "-L", "--follow-link", action="store_true", help="follow a symlink in SRC_PATH"
        )
        p.add_argument("-q", "--quiet", action="store_true", help="(accepted; nothing is shown)")
        p.add_argument("source", metavar="SRC")
        p.add_argument("dest", metavar="DEST")
    else:
        p.add_argument("container")


def _split(arg: str) -> tuple[str | None, str]:
    """CONTAINER:PATH → (container, path); a local path → (None, path), as Docker splits."""
    if arg.startswith(("/", ".")):
        return None, arg  # absolute or explicitly relative: local even with a colon
    name, colon, path = arg.partition(":")
    if not colon:
        return None, arg
    return name, path


def run(verb: str, args: argparse.Namespace) -> int:
    from dockyard.engine.copy import CopyError

    try:
        return _cp(args) if verb == "cp" else _diff(args)
    except CopyError as err:
        prefix = "Error response from daemon: " if err.daemon else "Error: "
        sys.stderr.write(f"{prefix}{err}\n")
        return 1


def _cp(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.engine import copy

    src_container, src = _split(args.source)
    dst_container, dst = _split(args.dest)
    if src_container is not None and dst_container is not None:
        raise UsageError("copying between containers is not supported")
    if src_container is None and dst_container is None:
        raise UsageError("must specify at least one container source")
    if src_container is not None:
        if not src:
            raise UsageError("invalid source: an empty path")
        if dst == "-":
            copy.copy_out_stream(
                engine(args), src_container, src, sys.stdout.buffer, follow=args.follow_link
            )
            sys.stdout.flush()
        else:
            if not dst:
                raise UsageError("invalid destination: an empty path")
            copy.copy_out(
                engine(args),
                src_container,
                src,
                dst,
                follow=args.follow_link,
                archive=args.archive,
            )
        return 0
    assert dst_container is not None
    if not dst:
        raise UsageError("invalid destination: an empty path")
    if src == "-":
        copy.copy_in_stream(engine(args), dst_container, dst, sys.stdin.buffer, args.archive)
    else:
        copy.copy_in(
            engine(args), src, dst_container, dst, follow=args.follow_link, archive=args.archive
        )
    return 0


def _diff(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.engine.fsdiff import container_changes

    for kind, path in container_changes(engine(args), args.container):
        print(f"{kind} {path}")
    return 0
