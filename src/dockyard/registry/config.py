"""Which registry to talk to: podman's registries.conf (TOML), read the way podman reads it.

The file is the first of these that is given or exists:

1. `--registries-conf FILE` (pull, push, login, logout, search);
2. `$DOCKYARD_REGISTRIES_CONF`;
3. `<root>/registries.conf` (beside dockyard.db);
4. `/etc/containers/registries.conf` (podman's and skopeo's).

A file named by 1 or 2 must exist; 3 and 4 are skipped when missing. Without any
file dockyard behaves as Docker: short names mean docker.io, 127.0.0.0/8 and
`localhost` registries may use plain HTTP, everything else needs HTTPS.

What is understood (podman's v2 format; v1's `[registries.search]`,
`[registries.insecure]` and `[registries.block]` tables too):

    unqualified-search-registries = ["docker.io"]   # `pull nginx` tries these, in order
    [[registry]]
    prefix = "docker.io"                 # which references this entry is for
    location = "docker.io"               # where they really are (prefix rewritten)
    insecure = false                     # plain HTTP, or HTTPS without verification
    blocked = false                      # refuse to pull or push
    mirror-by-digest-only = false
    [[registry.mirror]]                  # tried first, in order, for pulls only
    location = "127.0.0.1:5000"
    insecure = true
    pull-from-mirror = "all"             # or "digest-only", "tag-only"
    [aliases]
    "nginx" = "docker.io/library/nginx"  # short-name aliases

Short names are tried against every search registry in order (podman's
"permissive" mode; no prompt). The drop-in directory `registries.conf.d` is not read.
"""

from __future__ import annotations

import os

from dockyard.image import reference as refs

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

ENV = "DOCKYARD_REGISTRIES_CONF"
SYSTEM_FILE = "/etc/containers/registries.conf"
PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")


class RegistriesConfError(Exception):
    """registries.conf can't be read or says something that can't work."""


class Mirror:
    def __init__(self, location: str, insecure: bool = False, pull_from: str = "all") -> None:
        self.location = location
        self.insecure = insecure
        self.pull_from = pull_from

    def __repr__(self) -> str:
        return f"Mirror({self.location!r}, insecure={self.insecure}, pull_from={self.pull_from!r})"


class Entry:
    """One `[[registry]]`: references under `prefix` live at `location`."""

    def __init__(
        self,
        prefix: str,
        location: str,
        insecure: bool = False,
        blocked: bool = False,
        mirrors: list[Mirror] | None = None,
    ) -> None:
        self.prefix = prefix
        self.location = location
        self.insecure = insecure
        self.blocked = blocked
        self.mirrors = mirrors or []

    def __repr__(self) -> str:
        return f"Entry({self.prefix!r} -> {self.location!r}, mirrors={self.mirrors})"

    def matches(self, name: str) -> bool:
        """`name` is a repository ("docker.io/library/nginx")."""
        if self.prefix.startswith("*."):
            domain = name.split("/", 1)[0]
            return domain.endswith(self.prefix[1:])
        return name == self.prefix or name.startswith(self.prefix + "/")

    def rewrite(self, name: str, location: str) -> str:
        if self.prefix.startswith("*."):
            return name  # a wildcard entry can't move references (podman's rule)
        return location + name[len(self.prefix) :]


class Source:
    """One place to try: a registry host, the repository there, and how to talk to it."""

    def __init__(self, host: str, repository: str, insecure: bool, mirror: bool = False) -> None:
        self.host = host
        self.repository = repository
        self.insecure = insecure
        self.mirror = mirror

    def __repr__(self) -> str:
        kind = "mirror " if self.mirror else ""
        return f"Source({kind}{self.host}/{self.repository}, insecure={self.insecure})"

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}"


def is_loopback(host: str) -> bool:
    """Docker's rule: registries on 127.0.0.0/8, ::1 or `localhost` may speak plain HTTP."""
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_short_name(text: str) -> bool:
    """`nginx`, `library/nginx:1`: no registry named (reference.py's rule for a domain)."""
    first, sep, _ = text.partition("/")
    if not sep:
        return True
    return not ("." in first or ":" in first or first == "localhost" or first.lower() != first)


class RegistriesConf:
    def __init__(
        self,
        path: str | None = None,
        search: list[str] | None = None,
        entries: list[Entry] | None = None,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self.search = search or []
        self.entries = entries or []
        self.aliases = aliases or {}

    def __repr__(self) -> str:
        return f"RegistriesConf({self.path!r}, search={self.search}, entries={self.entries})"

    def entry_for(self, name: str) -> Entry | None:
        """The entry with the longest prefix matching repository `name`."""
        found = [e for e in self.entries if e.matches(name)]
        return max(found, key=lambda e: len(e.prefix), default=None)

    def resolve(self, text: str) -> list[refs.Reference]:
        """The references a name may mean, in the order to try them."""
        if not is_short_name(text):
            return [refs.parse(text)]
        name, suffix = _split_suffix(text)
        alias = self.aliases.get(name) or self.aliases.get(name.removeprefix("library/"))
        if alias:
            return [refs.parse(alias + suffix)]
        if not self.search:
            return [refs.parse(text)]  # Docker: docker.io
        return [refs.parse(f"{registry}/{text}") for registry in self.search]

    def pull_sources(self, ref: refs.Reference) -> list[Source]:
        """Mirrors first (those that serve this kind of reference), then the registry."""
        entry = self.entry_for(ref.name)
        if entry is None:
            return [_source(ref.name, False)]
        if entry.blocked:
            raise RegistriesConfError(
                f"registry {ref.domain} is blocked in {self.path or 'registries.conf'}"
            )
        sources: list[Source] = []
        for mirror in entry.mirrors:
            if mirror.pull_from == "digest-only" and not ref.digest:
                continue
            if mirror.pull_from == "tag-only" and ref.digest:
                continue
            sources.append(
                _source(entry.rewrite(ref.name, mirror.location), mirror.insecure, mirror=True)
            )
        sources.append(_source(entry.rewrite(ref.name, entry.location), entry.insecure))
        return sources

    def push_source(self, ref: refs.Reference) -> Source:
        """Where a push goes: the registry's location (never a mirror)."""
        entry = self.entry_for(ref.name)
        if entry is None:
            return _source(ref.name, False)
        if entry.blocked:
            raise RegistriesConfError(
                f"registry {ref.domain} is blocked in {self.path or 'registries.conf'}"
            )
        return _source(entry.rewrite(ref.name, entry.location), entry.insecure)

    def host_insecure(self, host: str) -> bool:
        """Whether `host` (login, search) may be reached over plain HTTP."""
        if is_loopback(host):
            return True
        for entry in self.entries:
            if entry.insecure and host in (entry.location.split("/", 1)[0], entry.prefix):
                return True
            for mirror in entry.mirrors:
                if mirror.location.split("/", 1)[0] == host and mirror.insecure:
                    return True
        return False


def _source(name: str, insecure: bool, mirror: bool = False) -> Source:
    host, _, repository = name.partition("/")
    if host in (refs.LEGACY_DOMAIN, refs.DEFAULT_DOMAIN) and "/" not in repository:
        repository = refs.OFFICIAL_PREFIX + repository
    return Source(host, repository, insecure or is_loopback(host), mirror)


def _split_suffix(text: str) -> tuple[str, str]:
    """("nginx", ":1.25") from "nginx:1.25"; ("nginx", "@sha256:…") from a digest."""
    at = text.find("@")
    if at >= 0:
        return text[:at], text[at:]
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        cut = len(text) - len(last) + last.index(":")
        return text[:cut], text[cut:]
    return text, ""


# ---------------------------------------------------------------------------- loading


def find_file(flag: str | None, root: str | None) -> str | None:
    """The file to read (see the module's docstring for the order), or None."""
    for given, what in ((flag, "--registries-conf"), (os.environ.get(ENV), f"${ENV}")):
        if given:
            if not os.path.isfile(given):
                raise RegistriesConfError(f"{what} names {given}, which does not exist")
            return given
    for candidate in (os.path.join(root, "registries.conf") if root else None, SYSTEM_FILE):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def load(flag: str | None = None, root: str | None = None) -> RegistriesConf:
    path = find_file(flag, root)
    if path is None:
        return RegistriesConf()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise RegistriesConfError(f"cannot read {path}: {err.strerror or err}") from None
    lines = (line.strip() for line in data.splitlines())
    if all(not line or line.startswith(b"#") for line in lines):
        return RegistriesConf(path)  # comments only (Debian's default): no parser needed
    import tomllib

    try:
        doc = tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise RegistriesConfError(f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise RegistriesConfError(f"{path} is not valid TOML: {err}") from None
    return parse(doc, path)


def parse(doc: dict[str, Any], path: str = "registries.conf") -> RegistriesConf:
    """A parsed registries.conf document (v2, or v1's `[registries.*]` tables)."""
    search = _strings(doc.get("unqualified-search-registries", []), path, "search registries")
    entries: list[Entry] = []
    for table in _tables(doc.get("registry", []), path, "[[registry]]"):
        entries.append(_entry(table, path))
    v1 = doc.get("registries")
    if isinstance(v1, dict):
        search += _strings(_v1_list(v1, "search", path), path, "[registries.search]")
        for kind in ("insecure", "block"):
            for host in _strings(_v1_list(v1, kind, path), path, f"[registries.{kind}]"):
                entry = next((e for e in entries if e.prefix == host), None)
                if entry is None:
                    entry = Entry(host, host)
                    entries.append(entry)
                if kind == "insecure":
                    entry.insecure = True
                else:
                    entry.blocked = True
    aliases = doc.get("aliases", {})
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()
    ):
        raise RegistriesConfError(f"{path}: [aliases] must map short names to references")
    for name in search:
        _check_host(name, path, "unqualified-search-registries")
    return RegistriesConf(path, search, entries, dict(aliases))


def _entry(table: dict[str, Any], path: str) -> Entry:
    location = _string(table, "location", path, "")
    prefix = _string(table, "prefix", path, "") or location
    if not prefix:
        raise RegistriesConfError(f"{path}: a [[registry]] needs a prefix or a location")
    if prefix.startswith("*.") and location:
        raise RegistriesConfError(
            f'{path}: [[registry]] prefix "{prefix}" is a wildcard: it can\'t have a location'
        )
    if not prefix.startswith("*."):
        prefix = _normalized_prefix(prefix)
    entry = Entry(
        prefix,
        location or prefix,
        insecure=_bool(table, "insecure", path),
        blocked=_bool(table, "blocked", path),
    )
    by_digest = _bool(table, "mirror-by-digest-only", path)
    for mirror in _tables(table.get("mirror", []), path, "[[registry.mirror]]"):
        pull_from = _string(mirror, "pull-from-mirror", path, "digest-only" if by_digest else "all")
        if pull_from not in PULL_FROM_MIRROR:
            raise RegistriesConfError(
                f'{path}: pull-from-mirror = "{pull_from}": '
                f"use one of {', '.join(PULL_FROM_MIRROR)}"
            )
        where = _string(mirror, "location", path, "")
        if not where:
            raise RegistriesConfError(f"{path}: a [[registry.mirror]] of {prefix} has no location")
        entry.mirrors.append(Mirror(where, _bool(mirror, "insecure", path), pull_from))
    return entry


def _normalized_prefix(prefix: str) -> str:
    """`index.docker.io` is docker.io; `docker.io/nginx` is docker.io/library/nginx."""
    host, sep, rest = prefix.partition("/")
    if host == refs.LEGACY_DOMAIN:
        host = refs.DEFAULT_DOMAIN
    if host == refs.DEFAULT_DOMAIN and sep and "/" not in rest:
        rest = refs.OFFICIAL_PREFIX + rest
    return f"{host}{sep}{rest}"


def _check_host(name: str, path: str, what: str) -> None:
    if not name or "/" in name or any(c.isspace() for c in name):
        raise RegistriesConfError(f'{path}: {what}: "{name}" is not a registry host[:port]')


def _v1_list(v1: dict[str, Any], kind: str, path: str) -> Any:
    table = v1.get(kind, {})
    if not isinstance(table, dict):
        raise RegistriesConfError(f"{path}: [registries.{kind}] must be a table")
    return table.get("registries", [])


def _tables(value: Any, path: str, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RegistriesConfError(f"{path}: {what} must be an array of tables")
    return value


def _strings(value: Any, path: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistriesConfError(f"{path}: {what} must be a list of strings")
    return list(value)


def _string(table: dict[str, Any], key: str, path: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise RegistriesConfError(f"{path}: {key} must be a string, not {value!r}")
    return value


def _bool(table: dict[str, Any], key: str, path: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise RegistriesConfError(f"{path}: {key} must be true or false, not {value!r}")
    return value
