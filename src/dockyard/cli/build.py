"""`build` (Docker's classic builder) and `builder prune`."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.engine.containers import Engine


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    if verb == "builder":
        p.add_argument("action", choices=["prune"])
        p.add_argument("-a", "--all", action="store_true", help="(all cache is removed anyway)")
        p.add_argument("-f", "--force", action="store_true")
        return
    p.add_argument("-t", "--tag", action="append", default=[])
    p.add_argument("-f", "--file", default=None)
    p.add_argument("--build-arg", action="append", default=[])
    p.add_argument("--target")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--iidfile")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--progress", choices=["auto", "plain", "tty", "quiet"], default="auto")
    p.add_argument("context")


def run(verb: str, args: argparse.Namespace) -> int:
    from dockyard.cli.containers import DEFAULT_ROOT
    from dockyard.engine.containers import Engine

    engine = Engine(args.root or DEFAULT_ROOT)
    try:
        return _prune(engine) if verb == "builder" else _build(engine, args)
    finally:
        engine.close()


def _prune(engine: Engine) -> int:
    from dockyard.build import cache

    count, deleted = cache.prune(engine.images)
    for image_id in deleted:
        print(f"Deleted: {image_id}")
    print(f"Total: {count} build cache entries removed")
    return 0


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq:
            v = os.environ.get(k, "")
            if k not in os.environ and flag == "--build-arg":
                continue
        out[k] = v
    return out


def _build(engine: Engine, args: argparse.Namespace) -> int:
    from dockyard.build.context import open_context
    from dockyard.build.dockerignore import IgnoreMatcher, load_matcher
    from dockyard.build.executor import Builder, BuildOptions
    from dockyard.build.parser import parse
    from dockyard.cli.errors import UsageError
    from dockyard.image import reference as refs

    tags = [str(refs.parse(t)) for t in args.tag]
    if args.file == "-" and args.context == "-":
        raise UsageError("invalid argument: can't use stdin for both build context and dockerfile")
    quiet = args.quiet or args.progress == "quiet"
    out = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    is_dir = args.context != "-" and os.path.isdir(args.context)
    if args.file == "-":
        text = sys.stdin.buffer.read()
        filename = "Dockerfile"
        df_path = None
    elif is_dir:
        df_path = args.file or os.path.join(args.context, "Dockerfile")
        if args.file and not os.path.isabs(args.file) and not os.path.exists(args.file):
            df_path = os.path.join(args.context, args.file)
        filename = os.path.basename(df_path)
        text = b""
    else:
        df_path, filename, text = None, args.file or "Dockerfile", b""
    matcher = load_matcher(args.context, df_path) if is_dir else IgnoreMatcher()
    with open_context(args.context, matcher) as ctx:
        if is_dir and df_path is not None:
            try:
                with open(df_path, "rb") as f:
                    text = f.read()
            except FileNotFoundError:
                raise UsageError(f"Cannot locate specified Dockerfile: {df_path}") from None
        elif not text:
            text = ctx.read_file(filename)
        instructions = parse(text, filename=filename)
        opts = BuildOptions(
            tags=tags,
            build_args=_pairs(args.build_arg, "--build-arg"),
            target=args.target,
            no_cache=args.no_cache,
            labels=_pairs(args.label, "--label"),
            out=out,
        )
        builder = Builder(engine, ctx, instructions, opts, filename)
        out("Sending build context to Docker daemon")
        image_id = builder.build()
    short = image_id.split(":", 1)[1][:12]
    out(f"Successfully built {short}")
    for tag in tags:
        engine.images.tag(image_id, tag)
        out(f"Successfully tagged {refs.parse(tag).familiar()}")
    if args.iidfile:
        with open(args.iidfile, "w") as f:
            f.write(image_id)
    if quiet:
        print(image_id)
    return 0
