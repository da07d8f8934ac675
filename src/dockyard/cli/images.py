"""Image verbs: import, images, tag, rmi."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.image.store import ImageStore


def store(args: argparse.Namespace) -> ImageStore:
    from dockyard.cli.containers import DEFAULT_ROOT
    from dockyard.image.store import ImageStore

    return ImageStore(args.root or DEFAULT_ROOT)


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    if verb == "import":
        p.add_argument("-c", "--change", action="append", default=[])
        p.add_argument("-m", "--message", default="")
        p.add_argument("file", help="a root file system tar (plain, gzip or zstd), or - for stdin")
        p.add_argument("reference", nargs="?")
    elif verb == "images":
        from dockyard.cli.listing import add_images_arguments

        add_images_arguments(p)
    elif verb == "tag":
        p.add_argument("source")
        p.add_argument("target")
    elif verb == "rmi":
        p.add_argument("-f", "--force", action="store_true")
        p.add_argument("images", nargs="+")


def run(verb: str, args: argparse.Namespace) -> int:
    return int(globals()[f"_{verb}"](args))


def _import(args: argparse.Namespace) -> int:
    images = store(args)
    if args.file == "-":
        image = images.import_tar(sys.stdin.buffer, args.reference, args.change, args.message)
    else:
        with open(args.file, "rb") as f:
            image = images.import_tar(f, args.reference, args.change, args.message)
    print(image.id)
    return 0


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{n}B"
        n /= 1000  # type: ignore[assignment]  # Docker's sizes are decimal
    return f"{n}B"


def _images(args: argparse.Namespace) -> int:
    from dockyard.cli.listing import images

    return images(args)


def _tag(args: argparse.Namespace) -> int:
    store(args).tag(args.source, args.target)
    return 0


def _rmi(args: argparse.Namespace) -> int:
    from dockyard.cli.errors import for_each

    images = store(args)

    def one(name: str) -> None:
        for kind, value in images.remove(name, force=args.force):
            print(f"{kind}: {value}")

    return for_each(args.images, one)
