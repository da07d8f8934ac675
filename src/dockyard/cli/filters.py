"""Docker's `--filter` and time arguments for ps, images and logs."""

from __future__ import annotations

from dockyard.cli.errors import UsageError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.engine.containers import Container, Engine
    from dockyard.image.store import Image, ImageStore

PS_FILTERS = ("id", "name", "label", "status", "ancestor", "exited", "before", "since")
IMAGE_FILTERS = ("dangling", "label", "before", "since", "reference")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def parse_timestamp(value: str, flag: str = "--since") -> float:
    """Docker's GetTimestamp: a Go duration before now (10m, 1h30m), Unix seconds with an
    optional fraction, or an RFC 3339 date/time (parts may be left off; no zone = local)."""
    import re
    import time
    from datetime import datetime

    text = value.strip()
    if text != "0" and re.fullmatch(r"(\d+(\.\d*)?(ns|us|µs|ms|s|m|h))+", text):
        from dockyard.engine.hostconfig import parse_duration

        return time.time() - parse_duration(text, flag) / 1e9
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    stamp = text.replace("z", "Z").replace("t", "T")
    match = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(\.\d+)?)?)?)?(Z|[+-]\d{2}:?\d{2})?",
        stamp,
    )
    if match is None:
        raise UsageError(
            f'invalid value for {flag}: "{value}": use RFC 3339 (2006-01-02T15:04:05Z), '
            "Unix seconds or a duration such as 10m"
        )
    date, hour, minute, second, fraction, zone = match.groups()
    iso = f"{date}T{hour or '00'}:{minute or '00'}:{second or '00'}"
    try:
        moment = datetime.fromisoformat(iso + ("+00:00" if zone == "Z" else zone or ""))
    except ValueError as err:
        raise UsageError(f'invalid value for {flag}: "{value}": {err}') from None
    return moment.timestamp() + float(fraction or 0)


def parse(values: list[str], allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """`key=value` filters grouped by key (same key: any value may match)."""
    found: dict[str, list[str]] = {}
    for text in values:
        key, sep, value = text.partition("=")
        key = key.strip().lower()
        if not sep:
            raise UsageError(f'Error: bad format of filter (expected name=value): "{text}"')
        if key not in allowed:
            raise UsageError(f"invalid filter '{key}'")
        found.setdefault(key, []).append(value)
    return found


def _labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    """Every label filter must hold: `key` present, or `key=value` equal."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _created(c: Container) -> str:
    return c.created


def match_containers(
    engine: Engine, containers: list[Container], filters: dict[str, list[str]]
) -> list[Container]:
    import re

    if not filters:
        return containers
    for status in filters.get("status", []):
        if status not in STATUSES:
            raise UsageError(f"Invalid filter 'status={status}'")
    ancestors: set[str] = set()
    for name in filters.get("ancestor", []):
        try:
            ancestors.add(engine.images.get(name).id)
        except Exception:
            ancestors.add(name)  # no such image: matches by the name it was created from
    bounds: dict[str, str] = {}
    for key in ("before", "since"):
        if key in filters:
            bounds[key] = engine.get(filters[key][-1]).created
    kept: list[Container] = []
    for c in containers:
        if "id" in filters and not any(c.id.startswith(v) for v in filters["id"]):
            continue
        if "name" in filters and not any(re.search(v, c.name) for v in filters["name"]):
            continue
        if "label" in filters and not _labels_match(c.config.get("Labels") or {}, filters["label"]):
            continue
        status = c.status() if ("status" in filters or "exited" in filters) else ""
        if "status" in filters and status not in filters["status"]:
            continue
        if "exited" in filters and (
            status != "exited" or str(c.exit_code) not in filters["exited"]
        ):
            continue
        if ancestors and not (c.image_id in ancestors or c.image_ref in ancestors):
            continue
        if "before" in bounds and not c.created < bounds["before"]:
            continue
        if "since" in bounds and not c.created > bounds["since"]:
            continue
        kept.append(c)
    return kept


def match_images(
    store: ImageStore, images: list[Image], filters: dict[str, list[str]]
) -> list[tuple[Image, list[str]]]:
    """(image, the tags of it that pass) for each image that passes."""
    import fnmatch

    from dockyard.image.reference import parse as parse_ref

    bounds = {k: store.get(filters[k][-1]).created for k in ("before", "since") if k in filters}
    dangling = filters.get("dangling")
    for value in dangling or []:
        if value.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"Invalid filter 'dangling={value}'")
    kept: list[tuple[Image, list[str]]] = []
    for image in images:
        tags = sorted(image.tags)
        if dangling is not None:
            want = dangling[-1].lower() in ("true", "1")
            if want != (not tags and not image.repo_digests):  # pulled by digest: not dangling
                continue
        labels = (image.config.get("config") or {}).get("Labels") or {}
        if "label" in filters and not _labels_match(labels, filters["label"]):
            continue
        if "before" in bounds and not image.created < bounds["before"]:
            continue
        if "since" in bounds and not image.created > bounds["since"]:
            continue
        if "reference" in filters:
            matching = []
            for tag in tags:
                familiar = parse_ref(tag).familiar()
                repo = familiar.rsplit(":", 1)[0]
                if any(
                    fnmatch.fnmatchcase(familiar, p) or fnmatch.fnmatchcase(repo, p)
                    for p in filters["reference"]
                ):
                    matching.append(tag)
            if not matching:
                continue
            tags = matching
        kept.append((image, tags))
    return kept
