"""`ps` and `images` with Docker's options: -n/-l/-s, --filter and --format (Go templates
over Docker's fields, a `table` prefix for aligned columns with headers, `{{json .}}`)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.engine.containers import Container, Engine
    from dockyard.image.store import Image

PS_HEADERS = {
    "ID": "CONTAINER ID",
    "Image": "IMAGE",
    "Command": "COMMAND",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
    "Ports": "PORTS",
    "State": "STATE",
    "Status": "STATUS",
    "Size": "SIZE",
    "Names": "NAMES",
    "Labels": "LABELS",
    "Mounts": "MOUNTS",
    "Networks": "NETWORKS",
    "LocalVolumes": "LOCAL VOLUMES",
}
PS_DEFAULT = (
    "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}"
)
IMAGE_HEADERS = {
    "ID": "IMAGE ID",
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "Digest": "DIGEST",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "Size": "SIZE",
    "Containers": "CONTAINERS",
}


def add_ps_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-n", "--last", type=int, default=-1)
    p.add_argument("-l", "--latest", action="store_true")
    p.add_argument("-s", "--size", action="store_true")
    p.add_argument("-f", "--filter", action="append", default=[])
    p.add_argument("--format")


def add_images_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--digests", action="store_true")
    p.add_argument("-f", "--filter", action="append", default=[])
    p.add_argument("--format")
    p.add_argument("repository", nargs="?")


def print_table(source: str, rows: list[dict[str, str]], headers: dict[str, str]) -> None:
    """Render `source` per row; `table …` adds a header and aligns tab-separated columns
    (Docker's tabwriter: padding 3)."""
    from dockyard.cli.gotemplate import render

    table = source.startswith("table")
    if table:
        source = source[len("table") :].lstrip() or PS_DEFAULT[len("table ") :]
    source = source.replace("\\t", "\t").replace("\\n", "\n")
    lines = [render(source, row) for row in rows]
    if not table:
        for line in lines:
            print(line)
        return
    lines.insert(0, render(source, dict(headers)))
    cells = [line.split("\t") for line in lines]
    width = max(len(c) for c in cells)
    widths = [max((len(c[i]) for c in cells if i < len(c)), default=0) for i in range(width)]
    for c in cells:
        print("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(c)).rstrip())


def _created_at(stamp: str) -> str:
    """Go's time.String() of the creation time, as Docker prints CreatedAt."""
    from datetime import UTC, datetime

    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return stamp
    return then.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def _size(n: int) -> str:
    from dockyard.cli.images import _size as size

    return size(n)


def ps_row(engine: Engine, c: Container, no_trunc: bool, with_size: bool) -> dict[str, str]:
    from dockyard.cli.containers import _ago, status_line
    from dockyard.engine.networking import ports_column

    command = " ".join(c.command)
    if not no_trunc and len(command) > 20:
        command = command[:19] + "…"
    mounts = [str(m.get("Name") or m.get("Source") or "") for m in c.config.get("Mounts") or []]
    size = ""
    if with_size:
        try:
            used = engine.images.snapshots.usage(f"container-{c.id}")[0]
        except Exception:
            used = 0
        try:
            virtual = engine.images.get(c.image_id).size + used
        except Exception:
            virtual = used
        size = f"{_size(used)} (virtual {_size(virtual)})"
    labels = c.config.get("Labels") or {}
    return {
        "ID": c.id if no_trunc else c.id[:12],
        "Image": c.image_ref,
        "Command": f'"{command}"',
        "CreatedAt": _created_at(c.created),
        "RunningFor": f"{_ago(c.created)} ago",
        "Ports": ports_column(engine.conn, c, c.status() in ("running", "paused", "restarting")),
        "State": c.status(),
        "Status": status_line(c),
        "Size": size,
        "Names": c.name,
        "Labels": ",".join(f"{k}={v}" for k, v in labels.items()),
        "Mounts": ",".join(m for m in mounts if m),
        "Networks": _network(c),
        "LocalVolumes": str(sum(1 for m in c.config.get("Mounts") or [] if m.get("Name"))),
    }


def _network(c: Container) -> str:
    mode = c.config.get("NetworkMode") or "none"
    endpoints = c.config.get("EndpointsConfig") or {}
    return ",".join(endpoints) if endpoints else mode


def ps(engine: Engine, args: argparse.Namespace) -> int:
    from dockyard.cli import filters

    wanted = filters.parse(args.filter, filters.PS_FILTERS)
    last = 1 if args.latest else args.last
    show_all = args.all or last > 0 or bool({"status", "exited"} & set(wanted))
    containers = engine.list_containers(all=show_all)
    containers = filters.match_containers(engine, containers, wanted)
    if last > 0:
        containers = containers[:last]  # newest first already
    if args.quiet:
        for c in containers:
            print(c.id if args.no_trunc else c.id[:12])
        return 0
    source = args.format or PS_DEFAULT + ("\t{{.Size}}" if args.size else "")
    if source == "json":
        source = "{{json .}}"
    with_size = args.size or ".Size" in source or "json" in source
    rows = [ps_row(engine, c, args.no_trunc, with_size) for c in containers]
    _print(source, rows, PS_HEADERS)
    return 0


def _print(source: str, rows: list[dict[str, str]], headers: dict[str, str]) -> None:
    from dockyard.cli.errors import UsageError
    from dockyard.cli.gotemplate import TemplateError

    try:
        print_table(source, rows, headers)
    except TemplateError as err:
        raise UsageError(f"template parsing error: {err}") from None


def image_rows(images: list[tuple[Image, list[str]]], no_trunc: bool) -> list[dict[str, str]]:
    from dockyard.cli.containers import _ago
    from dockyard.image.reference import Reference, parse

    rows: list[dict[str, str]] = []
    for image, tags in images:
        # Pulled or pushed: the digest it has in that repository (the newest). Pulled
        # by digest only (no tag): a row per repository, as Docker shows `nginx <none>`.
        pulled: dict[str, str] = {}
        for name in image.repo_digests:
            repository, _, digest = name.partition("@")
            pulled.setdefault(repository, digest)
        names: list[str | None] = list(tags) or [f"{n}@{d}" for n, d in pulled.items()] or [None]
        for tag in names:
            ref = parse(tag, default_tag=None) if tag else None
            repo = Reference(ref.domain, ref.path, None, None).familiar() if ref else "<none>"
            rows.append(
                {
                    "ID": image.id if no_trunc else image.short_id,
                    "Repository": repo,
                    "Tag": (ref.tag if ref else None) or "<none>",
                    "Digest": (pulled.get(ref.name) if ref else None)
                    or image.manifest_digest
                    or "<none>",
                    "CreatedSince": f"{_ago(image.created)} ago",
                    "CreatedAt": _created_at(image.created),
                    "Size": _size(image.size),
                    "Containers": "N/A",
                }
            )
    return rows


def images(args: argparse.Namespace) -> int:
    from dockyard.cli import filters
    from dockyard.cli.images import store

    images_store = store(args)
    wanted = filters.parse(args.filter, filters.IMAGE_FILTERS)
    listed = images_store.list_images()
    if not args.all:  # the builder's intermediate images, as Docker hides them
        from dockyard.build.cache import intermediate_ids

        hidden = intermediate_ids(images_store)
        listed = [i for i in listed if i.tags or i.repo_digests or i.id not in hidden]
    kept = filters.match_images(images_store, listed, wanted)
    rows = image_rows(kept, args.no_trunc)
    if args.repository:
        repo, sep, tag = args.repository.rpartition(":")
        if not sep or "/" in tag:  # no tag; or a registry's port (localhost:5000/app)
            repo, tag = args.repository, ""
        rows = [r for r in rows if r["Repository"] == repo and (not tag or r["Tag"] == tag)]
    if args.quiet:
        for image_id in dict.fromkeys(r["ID"] for r in rows):
            print(image_id)
        return 0
    digest = "\t{{.Digest}}" if args.digests else ""
    source = args.format or (
        "table {{.Repository}}\t{{.Tag}}" + digest + "\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    )
    if source == "json":
        source = "{{json .}}"
    _print(source, rows, IMAGE_HEADERS)
    return 0
