"""Registry verbs: pull, push, login, logout, search.

Output is Docker's: progress per layer (redrawn on a terminal, one line per
change elsewhere, nothing with -q), then `Digest:`/`Status:` and the full
reference for pull, `TAG: digest: … size: N` for push. Which registries.conf is
read is in registry/config.py; where logins are kept, registry/client_auth.py.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.image.pull import Clients
    from dockyard.image.store import ImageStore
    from dockyard.registry.client import RegistryClient
    from dockyard.registry.config import RegistriesConf

SEARCH_HEADERS = {
    "Name": "NAME",
    "Description": "DESCRIPTION",
    "StarCount": "STARS",
    "IsOfficial": "OFFICIAL",
}
SEARCH_DEFAULT = "table {{.Name}}\t{{.Description}}\t{{.StarCount}}\t{{.IsOfficial}}"


def _bool(text: str) -> bool:
    from dockyard.cli.errors import UsageError

    value = text.lower()
    if value in ("1", "t", "true", "yes"):
        return True
    if value in ("0", "f", "false", "no"):
        return False
    raise UsageError(f'invalid boolean value "{text}"')


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--registries-conf", metavar="FILE", help="registries.conf to read")
    p.add_argument("--authfile", metavar="FILE", help="credentials file (auth.json)")
    if verb in ("pull", "push", "login", "search"):
        p.add_argument(
            "--tls-verify",
            type=_bool,
            nargs="?",
            const=True,
            default=None,
            help="require HTTPS with a verified certificate (false: also plain HTTP)",
        )
    if verb == "pull":
        p.add_argument("-a", "--all-tags", action="store_true", help="every tag of the repository")
        p.add_argument("--platform", help="os/arch[/variant] to pull from an index")
        p.add_argument("-q", "--quiet", action="store_true", help="print only the reference")
        p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")
    elif verb == "push":
        p.add_argument("-a", "--all-tags", action="store_true", help="every tag of the repository")
        p.add_argument("-q", "--quiet", action="store_true", help="print only the reference")
        p.add_argument("name", metavar="NAME[:TAG]")
    elif verb == "login":
        p.add_argument("-u", "--username")
        p.add_argument("-p", "--password")
        p.add_argument("--password-stdin", action="store_true", help="read the password on stdin")
        p.add_argument("server", nargs="?", default="docker.io")
    elif verb == "logout":
        p.add_argument("server", nargs="?", default="docker.io")
    elif verb == "search":
        p.add_argument("--limit", type=int, default=25, help="at most this many results")
        p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
        p.add_argument("--format", help="Go template for each result")
        p.add_argument("-f", "--filter", action="append", default=[], help="is-official=…")
        p.add_argument("term", metavar="[REGISTRY/]TERM")


def run(verb: str, args: argparse.Namespace) -> int:
    return int(globals()[f"_{verb}"](args))


def _store(args: argparse.Namespace) -> ImageStore:
    from dockyard.cli.images import store

    return store(args)


def _conf(args: argparse.Namespace, root: str | None) -> RegistriesConf:
    from dockyard.registry import config

    return config.load(args.registries_conf, root)


def _clients(args: argparse.Namespace) -> Clients:
    from dockyard.image.pull import Clients

    return Clients(args.authfile, getattr(args, "tls_verify", None))


def _root(args: argparse.Namespace) -> str:
    from dockyard.cli.containers import DEFAULT_ROOT

    return str(args.root or DEFAULT_ROOT)


# ---------------------------------------------------------------------------- pull / push


def _pull(args: argparse.Namespace) -> int:
    import os

    from dockyard.image import platforms
    from dockyard.image.pull import pull
    from dockyard.registry.progress import for_stream

    platform_text = args.platform or os.environ.get("DOCKER_DEFAULT_PLATFORM")
    platform = platforms.parse(platform_text) if platform_text else None
    store = _store(args)
    conf = _conf(args, store.root)
    progress = for_stream(sys.stdout, args.quiet)
    clients = _clients(args)
    try:
        names = _all_tags(args.name, conf, clients) if args.all_tags else [args.name]
        last = None
        for name in names:
            last = pull(store, name, platform, conf, progress, clients)
    finally:
        clients.close()
    if last is not None:
        print(last.reference.name if args.all_tags else str(last.reference))
    return 0


def _all_tags(name: str, conf: RegistriesConf, clients: Clients) -> list[str]:
    from dockyard.cli.errors import UsageError
    from dockyard.image import reference as refs

    ref = conf.resolve(name)[0]
    if ref.digest or ":" in name.rsplit("/", 1)[-1]:
        raise UsageError("tag can't be used with --all-tags/-a")
    source = conf.pull_sources(refs.Reference(ref.domain, ref.path, None, None))[-1]
    tags = clients.get(source.host, source.insecure).tags(source.repository)
    return [f"{ref.name}:{tag}" for tag in sorted(tags)]


def _push(args: argparse.Namespace) -> int:
    from dockyard.image import reference as refs
    from dockyard.image.push import push
    from dockyard.registry.progress import for_stream

    store = _store(args)
    conf = _conf(args, store.root)
    progress = for_stream(sys.stdout, args.quiet)
    names = [args.name]
    if args.all_tags:
        ref = refs.parse(args.name, default_tag=None)
        if ref.tag or ref.digest:
            from dockyard.cli.errors import UsageError

            raise UsageError("tag can't be used with --all-tags/-a")
        prefix = f"{ref.name}:"
        names = sorted(
            str(r[0])
            for r in store.conn.execute("SELECT name FROM tags WHERE name LIKE ?", (prefix + "%",))
            if str(r[0]).startswith(prefix)
        )
        if not names:
            from dockyard.image.push import PushError

            raise PushError(f"An image does not exist locally with the tag: {ref.familiar()}")
    clients = _clients(args)
    try:
        for name in names:
            result = push(store, name, conf, progress, clients)
            if args.quiet:
                print(str(result.reference))
    finally:
        clients.close()
    return 0


# ---------------------------------------------------------------------------- login / logout


def _server(text: str) -> str:
    """`https://127.0.0.1:5000/v2/` → 127.0.0.1:5000; Docker Hub's names → docker.io."""
    host = text.split("://", 1)[-1].split("/", 1)[0]
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def _login(args: argparse.Namespace) -> int:
    from dockyard.cli.errors import UsageError
    from dockyard.registry import client_auth
    from dockyard.registry.client import RegistryClient

    server = _server(args.server)
    username = args.username
    password = args.password
    if args.password_stdin:
        if password is not None:
            raise UsageError("--password and --password-stdin are mutually exclusive")
        if not username:
            raise UsageError("Must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    elif password is not None:
        sys.stderr.write(
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin.\n"
        )
    if not username or password is None:
        if not sys.stdin.isatty():
            raise UsageError("Cannot perform an interactive login from a non TTY device")
        if not username:
            username = input("Username: ").strip()
        if password is None:
            import getpass

            password = getpass.getpass("Password: ")
    if not username:
        raise UsageError("Error: Non-null Username Required")
    if not password:
        raise UsageError("Error: Non-null Password Required")
    creds = client_auth.Credentials(username, password)
    conf = _conf(args, _root(args))
    insecure = conf.host_insecure(server) if args.tls_verify is None else not args.tls_verify
    client = RegistryClient(server, insecure=insecure, credentials=creds)
    try:
        client.check_login(creds)
    finally:
        client.close()
    client_auth.store(server, creds, args.authfile)
    print("Login Succeeded")
    return 0


def _logout(args: argparse.Namespace) -> int:
    from dockyard.registry import client_auth

    server = _server(args.server)
    if client_auth.remove(server, args.authfile):
        print(f"Removing login credentials for {server}")
    else:
        print(f"Not logged in to {server}")
    return 0


# ---------------------------------------------------------------------------- search


def _search(args: argparse.Namespace) -> int:
    from dockyard.cli.errors import UsageError
    from dockyard.cli.listing import print_table
    from dockyard.registry.client import RegistryClient
    from dockyard.registry.config import is_short_name

    if args.limit < 1 or args.limit > 100:
        raise UsageError(f"Limit {args.limit} is outside the range of [1, 100]")
    official: bool | None = None
    min_stars = 0
    for item in args.filter:
        key, _, value = item.partition("=")
        if key == "is-official":
            official = _bool(value)
        elif key == "stars" and value.isdigit():
            min_stars = int(value)
        elif key != "is-automated":
            raise UsageError(f'invalid filter "{item}"')
    conf = _conf(args, _root(args))
    term = args.term
    if not is_short_name(term):
        hosts = [term.split("/", 1)[0]]
        term = term.split("/", 1)[1]
    else:
        hosts = conf.search or ["docker.io"]
    rows: list[dict[str, str]] = []
    for host in hosts:
        insecure = conf.host_insecure(host) if args.tls_verify is None else not args.tls_verify
        client = RegistryClient(host, insecure=insecure, auth_file=args.authfile)
        try:
            rows += _search_one(client, term, args.limit - len(rows), args.no_trunc)
        finally:
            client.close()
        if len(rows) >= args.limit:
            break
    rows = [
        r
        for r in rows
        if int(r["StarCount"]) >= min_stars
        and (official is None or (r["IsOfficial"] == "[OK]") == official)
    ]
    print_table(args.format or SEARCH_DEFAULT, rows[: args.limit], SEARCH_HEADERS)
    return 0


def _search_one(
    client: RegistryClient, term: str, limit: int, no_trunc: bool
) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    if client.host == "docker.io":
        for item in client.search_v1(term, limit):
            description = str(item.get("description") or "").replace("\n", " ")
            if not no_trunc and len(description) > 45:
                description = description[:44] + "…"
            rows.append(
                {
                    "Name": str(item.get("name") or ""),
                    "Description": description,
                    "StarCount": str(item.get("star_count") or 0),
                    "IsOfficial": "[OK]" if item.get("is_official") else "",
                }
            )
        return rows
    needle = term.lower()
    for name in client.catalog():
        if needle in name.lower():
            rows.append(
                {
                    "Name": f"{client.host}/{name}",
                    "Description": "",
                    "StarCount": "0",
                    "IsOfficial": "",
                }
            )
            if len(rows) >= limit:
                break
    return rows
