"""`build` (BuildKit's Dockerfile features, its plain progress on stderr) and `builder prune`."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.build.context import DirContext, TarContext
    from dockyard.build.export import OutputSpec
    from dockyard.build.progress import Progress
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
    p.add_argument("--pull", action="store_true")
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--iidfile")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--platform")
    p.add_argument("--secret", action="append", default=[])
    p.add_argument("--network", default="default")
    p.add_argument("--allow", action="append", default=[])
    p.add_argument("-o", "--output", action="append", default=[])
    p.add_argument("--load", action="store_true", help="(the image is always kept)")
    p.add_argument("--push", action="store_true")
    p.add_argument("--progress", choices=["auto", "plain", "tty", "quiet"], default="auto")
    p.add_argument("--add-host", action="append", default=[], metavar="HOST:IP")
    p.add_argument("--cache-from", action="append", default=[])
    p.add_argument("--ssh", action="append", default=[])
    # The classic builder's: intermediate containers are always removed here.
    p.add_argument("--rm", action="store_true", default=True, help="(always)")
    p.add_argument("--force-rm", action="store_true", help="(always)")
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
    from dockyard.build.mounts import prune_cache_mounts

    count, deleted = cache.prune(engine.images)
    for image_id in deleted:
        print(f"Deleted: {image_id}")
    mounts = prune_cache_mounts(engine.root)
    try:
        os.unlink(os.path.join(engine.root, "build", "digests"))  # the context digests
    except FileNotFoundError:
        pass
    print(f"Total: {count} build cache entries and {mounts} cache mounts removed")
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


def _secrets(items: list[str]) -> dict[str, bytes]:
    """`--secret id=x,src=FILE`, `id=x,env=VAR`, `id=x` (the env var x, else the file x)."""
    from dockyard.cli.errors import UsageError

    out = {}
    for item in items:
        fields = dict(part.partition("=")[::2] for part in item.split(","))
        sid = fields.get("id", "")
        if not sid:
            raise UsageError(
                f"--secret {item}: id= is required (id=NAME,src=FILE or id=NAME,env=VAR)"
            )
        src = fields.get("src") or fields.get("source")
        env = fields.get("env")
        if not src and not env:
            env = sid if fields.get("type") != "file" and sid in os.environ else None
            src = None if env else sid
        if env:
            if env not in os.environ:
                raise UsageError(f"--secret {item}: environment variable {env} is not set")
            out[sid] = os.environ[env].encode()
            continue
        try:
            with open(str(src), "rb") as f:
                out[sid] = f.read()
        except OSError as err:
            raise UsageError(f"--secret {item}: cannot read {src}: {err.strerror}") from None
    return out


def _epoch(build_args: dict[str, str]) -> int | None:
    from dockyard.cli.errors import UsageError

    text = build_args.get("SOURCE_DATE_EPOCH", os.environ.get("SOURCE_DATE_EPOCH", ""))
    if not text:
        return None
    if not text.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={text}: give seconds since 1970 (e.g. $(date +%s))")
    return int(text)


def _read_dockerfile(args: argparse.Namespace) -> tuple[str | None, str, bytes, bytes | None]:
    """(Dockerfile path, its name, its text if read from stdin, stdin's context if any)."""
    from dockyard.cli.errors import UsageError

    if args.file == "-" and args.context == "-":
        raise UsageError("invalid argument: can't use stdin for both build context and dockerfile")
    if args.file == "-":
        return None, "Dockerfile", sys.stdin.buffer.read(), None
    if args.context == "-":
        from dockyard.build.context import looks_like_archive

        data = sys.stdin.buffer.read()
        if looks_like_archive(data[:512]):
            return None, args.file or "Dockerfile", b"", data
        return None, "Dockerfile", data, b""  # a Dockerfile alone: an empty context
    if os.path.isdir(args.context):
        df_path = args.file or os.path.join(args.context, "Dockerfile")
        if args.file and not os.path.isabs(args.file) and not os.path.exists(args.file):
            df_path = os.path.join(args.context, args.file)
        lower = os.path.join(args.context, "dockerfile")
        if not args.file and not os.path.exists(df_path) and os.path.exists(lower):
            df_path = lower  # Docker's fallback to a lowercase name
        return df_path, os.path.basename(df_path), b"", None
    return None, args.file or "Dockerfile", b"", None


def _open_context(
    args: argparse.Namespace, df_path: str | None, stdin_context: bytes | None
) -> DirContext | TarContext:
    import io
    import tarfile

    from dockyard.build.context import TarContext, open_context
    from dockyard.build.dockerignore import IgnoreMatcher, load_matcher

    if os.path.isdir(args.context):
        return open_context(args.context, load_matcher(args.context, df_path))
    if stdin_context is not None:
        if not stdin_context:  # an empty context: an empty tar
            buf = io.BytesIO()
            tarfile.open(fileobj=buf, mode="w").close()
            stdin_context = buf.getvalue()
        ctx: DirContext | TarContext = TarContext(io.BytesIO(stdin_context))
    else:
        ctx = open_context(args.context)
    # A tar context carries its own .dockerignore (or <Dockerfile>.dockerignore).
    name = os.path.basename(args.file or "Dockerfile")
    for ignore in (f"{name}.dockerignore", ".dockerignore"):
        try:
            ctx.matcher = IgnoreMatcher.from_lines(ctx.read_file(ignore).decode())
            break
        except Exception:  # absent: nothing ignored
            continue
    return ctx


def _build(engine: Engine, args: argparse.Namespace) -> int:
    from dockyard.build.executor import Builder, BuildOptions
    from dockyard.build.parser import parse
    from dockyard.build.progress import Progress, size_text
    from dockyard.cli.errors import UsageError
    from dockyard.image import reference as refs

    tags = [str(refs.parse(t)) for t in args.tag]
    outputs = []
    if args.output:
        from dockyard.build.export import parse_output

        outputs = [parse_output(o) for o in args.output]
    quiet = args.quiet or args.progress == "quiet"
    progress = Progress(None if quiet else sys.stderr)
    build_args = _pairs(args.build_arg, "--build-arg")
    network = {"bridge": "default"}.get(args.network, args.network)
    if network not in ("default", "none", "host"):
        raise UsageError(f"--network {args.network}: use default, none or host")
    if args.ssh:
        raise UsageError("--ssh: SSH agent forwarding is not supported; use --secret")
    if args.context.startswith(("http://", "https://", "git@", "git://", "github.com/")):
        raise UsageError(
            f"{args.context}: remote build contexts are not supported;"
            " clone or download it and build the directory"
        )
    hosts = []
    for item in args.add_host:
        name, sep, address = item.partition(":")
        if not sep or not name or not address:
            raise UsageError(f"--add-host {item}: give HOST:IP, e.g. db:10.0.0.5")
        hosts.append(f"{name}:{address}")
    if args.cache_from:
        # CI scripts pass it for BuildKit's registry cache; here steps come from the local
        # cache, which a pull of the image does not fill: say so rather than fail.
        froms = ", ".join(args.cache_from)
        progress.raw(f"[Warning] --cache-from {froms}: not used; steps come from the local cache\n")
    df_path, filename, text, stdin_context = _read_dockerfile(args)
    v = progress.vertex(f"[internal] load build definition from {filename}")
    with _open_context(args, df_path, stdin_context) as ctx:
        if df_path is not None:
            try:
                with open(df_path, "rb") as f:
                    text = f.read()
            except FileNotFoundError:
                raise UsageError(f"Cannot locate specified Dockerfile: {df_path}") from None
        elif not text:
            text = ctx.read_file(filename)
        v.status(f"transferring dockerfile: {size_text(len(text))} done")
        v.done()
        instructions = parse(text, filename=filename)
        v = progress.vertex("[internal] load .dockerignore")
        v.status(f"transferring context: {len(ctx.matcher.patterns)} patterns done")
        v.done()
        opts = BuildOptions(
            tags=tags,
            build_args=build_args,
            target=args.target,
            no_cache=args.no_cache,
            labels=_pairs(args.label, "--label"),
            progress=progress,
            pull=args.pull,
            platform=args.platform,
            network=network,
            secrets=_secrets(args.secret),
            allow=set(args.allow),
            source_date_epoch=_epoch(build_args),
            dockerfile=text.decode("utf-8", "replace"),
            extra_hosts=hosts,
        )
        from dockyard.build.context import DEFAULT_CACHE

        # File digests outlive the process: a rebuild hashes only what changed.
        digests = os.path.join(engine.root, "build", "digests")
        DEFAULT_CACHE.load(digests)
        builder = Builder(engine, ctx, instructions, opts, filename)
        image_id = builder.build()
        DEFAULT_CACHE.save(digests)
    _export_image(engine, image_id, tags, progress)
    for spec in outputs:
        _export(engine, image_id, spec, tags, progress)
    if args.push:
        for tag in tags:
            _push(engine, tag, progress)
    if args.iidfile:
        from dockyard.runtime.state import write_atomic

        write_atomic(args.iidfile, image_id.encode())
    if quiet:
        print(image_id)
    return 0


def _export_image(engine: Engine, image_id: str, tags: list[str], progress: Progress) -> None:
    from dockyard.image import reference as refs

    v = progress.vertex("exporting to image")
    v.status("exporting layers done")
    v.status(f"writing image {image_id} done")
    for tag in tags:
        engine.images.tag(image_id, tag)
        v.status(f"naming to {refs.parse(tag)} done")
    v.done()


def _export(
    engine: Engine, image_id: str, spec: OutputSpec, tags: list[str], progress: Progress
) -> None:
    from dockyard.build.export import export

    if not spec.handled_by_export:  # image, registry, docker without dest, cacheonly
        from dockyard.image import reference as refs

        for name in spec.names or ([] if spec.type == "cacheonly" else tags):
            engine.images.tag(image_id, str(refs.parse(name)))
            if spec.push:
                _push(engine, name, progress)
        return
    where = "stdout" if spec.to_stdout else spec.dest
    v = progress.vertex(
        "exporting to client directory" if spec.type == "local" else "exporting to client tarball"
    )
    v.status(f"copying files to {where}")
    export(engine.images, image_id, spec, sys.stdout.buffer)
    v.done()


def _push(engine: Engine, name: str, progress: Progress) -> None:
    from dockyard.image import reference as refs
    from dockyard.image.push import push
    from dockyard.registry import config

    ref = refs.parse(name)
    v = progress.vertex(f"pushing {ref} with docker")
    push(engine.images, str(ref), config.load(None, engine.images.root), None)
    v.status("pushing layers done")
    v.done()
