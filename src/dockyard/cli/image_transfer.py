"""Image transfer verbs: save, load, history, export, commit, and `image prune`.

`dockyard image SUBCOMMAND` also takes Docker's long forms of the image verbs
(`image ls`, `image rm`, `image save` …) and hands them to the verb; other
modules add their own subcommands to IMAGE_SUBCOMMANDS.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import BinaryIO

    from dockyard.image.store import ImageStore

TERMINAL = "cowardly refusing to save to a terminal. Use the -o flag or redirect"

# `dockyard image SUB …` → top-level verb that does it ("prune" is this module's own).
IMAGE_SUBCOMMANDS: dict[str, str] = {
    "ls": "images",
    "list": "images",
    "rm": "rmi",
    "remove": "rmi",
    "tag": "tag",
    "import": "import",
    "save": "save",
    "load": "load",
    "history": "history",
    "inspect": "inspect",  # cli/inspect.py with --type image: images only, as Docker's
    "pull": "pull",
    "push": "push",
    "prune": "",
}


def _store(args: argparse.Namespace) -> ImageStore:
    from dockyard.cli.images import store

    return store(args)


def _bool(text: str) -> bool:
    from dockyard.cli.errors import UsageError

    value = text.lower()
    if value in ("1", "t", "true", "yes"):
        return True
    if value in ("0", "f", "false", "no"):
        return False
    raise UsageError(f'invalid boolean value "{text}"')


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    import argparse

    if verb == "save":
        p.add_argument("-o", "--output", help="write to a file, instead of stdout")
        p.add_argument("images", nargs="+")
    elif verb == "load":
        p.add_argument("-i", "--input", help="read from a tar archive file, instead of stdin")
        p.add_argument("-q", "--quiet", action="store_true")
    elif verb == "history":
        p.add_argument("--no-trunc", action="store_true")
        p.add_argument("-q", "--quiet", action="store_true")
        p.add_argument("-H", "--human", type=_bool, default=True)
        p.add_argument("image")
    elif verb == "export":
        p.add_argument("-o", "--output", help="write to a file, instead of stdout")
        p.add_argument("container")
    elif verb == "commit":
        p.add_argument("-a", "--author", default="")
        p.add_argument("-c", "--change", action="append", default=[])
        p.add_argument("-m", "--message", default="")
        p.add_argument("-p", "--pause", type=_bool, nargs="?", const=True, default=True)
        p.add_argument("container")
        p.add_argument("reference", nargs="?")
    elif verb == "image":
        p.add_argument("subcommand", metavar="SUBCOMMAND", choices=sorted(IMAGE_SUBCOMMANDS))
        p.add_argument("image_args", nargs=argparse.REMAINDER)


def run(verb: str, args: argparse.Namespace) -> int:
    handler: Callable[[argparse.Namespace], int] = globals()[f"_{verb}"]
    return int(handler(args))


# ---------------------------------------------------------------------------- output files


def _write_output(path: str | None, write: Callable[[BinaryIO], None]) -> None:
    """To `path` (temp name, then renamed: never half a file) or to a non-terminal stdout."""
    if path is None:
        if sys.stdout.isatty():
            from dockyard.cli.errors import UsageError

            raise UsageError(TERMINAL)
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    from dockyard.runtime.state import write_atomic_stream

    write_atomic_stream(path, write)


# ---------------------------------------------------------------------------- verbs


def _save(args: argparse.Namespace) -> int:
    from dockyard.image.archive import save

    images = _store(args)
    for name in args.images:  # an unknown image fails before anything is written
        images.get(name)
    _write_output(args.output, lambda out: save(images, args.images, out))
    return 0


def _load(args: argparse.Namespace) -> int:
    from dockyard.image.archive import load

    images = _store(args)
    if args.input is None:
        if sys.stdin.isatty():
            from dockyard.cli.errors import UsageError

            raise UsageError("requested load from stdin, but stdin is empty")
        lines = load(images, sys.stdin.buffer)
    else:
        with open(args.input, "rb") as f:
            lines = load(images, f)
    for line in lines:
        print(line)
    return 0


def _history(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import _ago
    from dockyard.cli.images import _size

    images = _store(args)
    image = images.get(args.image)
    sizes = _layer_sizes(images, image.manifest_digest, image.chain_ids)
    history = list(image.config.get("history") or [])
    if not history:
        history = [{"created": image.created} for _ in image.diff_ids]
    rows: list[list[str]] = []
    layer = 0
    for entry in history:
        size = 0
        if not entry.get("empty_layer"):
            size = sizes[layer] if layer < len(sizes) else 0
            layer += 1
        created_by = str(entry.get("created_by") or "")
        comment = str(entry.get("comment") or "")
        if not args.no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        created = str(entry.get("created") or "")
        when = (f"{_ago(created)} ago" if args.human else created) if created else ""
        rows.append(
            ["<missing>", when, created_by, _size(size) if args.human else str(size), comment]
        )
    rows.reverse()
    if rows:
        rows[0][0] = image.id if args.no_trunc else image.short_id
    if args.quiet:
        for r in rows:
            print(r[0])
        return 0
    rows.insert(0, ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"])
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _layer_sizes(images: ImageStore, manifest_digest: str, chain_ids: list[str]) -> list[int]:
    """Each layer's unpacked size when unpacked, else its blob's size."""
    import json

    from dockyard.storage.snapshots import SnapshotError

    manifest = json.loads(images.content.read(manifest_digest))
    sizes = [int(layer.get("size") or 0) for layer in manifest.get("layers") or []]
    for i, chain_id in enumerate(chain_ids[: len(sizes)]):
        try:
            info = images.snapshots.stat(chain_id)
            if info.kind == "committed":
                sizes[i] = images.snapshots.usage(chain_id)[0]
        except SnapshotError:
            continue
    return sizes


def _export(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.engine.commit import export

    eng = engine(args)
    eng.get(args.container)  # an unknown container fails before any output
    _write_output(args.output, lambda out: export(eng, args.container, out))
    return 0


def _commit(args: argparse.Namespace) -> int:
    from dockyard.cli.containers import engine
    from dockyard.engine.commit import commit

    image = commit(
        engine(args),
        args.container,
        args.reference,
        changes=args.change,
        message=args.message,
        author=args.author,
        pause=args.pause,
    )
    print(image.id)
    return 0


def _image(args: argparse.Namespace) -> int:
    target = IMAGE_SUBCOMMANDS[args.subcommand]
    if target:
        from dockyard.cli.main import _dispatch

        root = ["--root", args.root] if args.root else []
        # `image inspect NAME` never means a container, even one named NAME
        extra = ["--type", "image"] if args.subcommand == "inspect" else []
        return _dispatch([*root, target, *extra, *args.image_args])
    return _prune(args)


def _prune(args: argparse.Namespace) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="dockyard image prune", description="remove unused images")
    p.add_argument("-a", "--all", action="store_true", help="also unused tagged images")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    opts = p.parse_args(args.image_args)
    if not opts.force:
        what = (
            "all images without at least one container associated to them"
            if opts.all
            else ("all dangling images")
        )
        sys.stdout.write(
            f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] "
        )
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    for line in prune(_store(args), every=opts.all):
        print(line)
    return 0


def prune(images: ImageStore, every: bool = False) -> list[str]:
    """Remove dangling (untagged) images, or with `every` all no container uses."""
    from dockyard.cli.images import _size
    from dockyard.image.store import ImageError
    from dockyard.storage.content import ContentError

    def stored() -> int:
        total = 0
        for digest in images.content.digests():
            try:
                total += images.content.size(digest)
            except ContentError:
                continue  # removed meanwhile
        return total

    before = stored()
    used = {r[0] for r in images.conn.execute("SELECT DISTINCT image_id FROM containers")}
    done: list[str] = []
    for image in images.list_images():
        if image.id in used or ((image.tags or image.repo_digests) and not every):
            continue
        try:
            for kind, value in images.remove(image.id, force=True):
                done.append(f"{kind.lower()}: {value}")
        except ImageError:
            continue  # in use by a container created meanwhile
    lines = ["Deleted Images:", *done, ""] if done else []
    lines.append(f"Total reclaimed space: {_size(max(0, before - stored()))}")
    return lines
