"""`dockyard registry serve|gc`: run a registry server, collect its garbage."""

from __future__ import annotations

import sys

from dockyard.cli.errors import UsageError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.registry.server import Config


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="COMMAND", required=True)
    s = sub.add_parser("serve", help="serve the OCI distribution API (Docker registry v2)")
    s.add_argument(
        "--listen",
        default="127.0.0.1:5000",
        metavar="HOST:PORT",
        help="address to listen on (port 0: any free port; :5000 for every address)",
    )
    s.add_argument("--storage", required=True, metavar="DIR", help="where the registry keeps data")
    s.add_argument(
        "--auth",
        choices=["none", "basic", "token"],
        help="none (default), basic (htpasswd users), token (Docker's token flow)",
    )
    s.add_argument("--htpasswd", metavar="FILE", help="users (bcrypt entries: htpasswd -B)")
    s.add_argument("--token-realm", metavar="URL", help="token endpoint (default: this /token)")
    s.add_argument("--token-service", default="dockyard", metavar="NAME")
    s.add_argument("--token-key", metavar="FILE", help="secret that signs tokens (default: random)")
    s.add_argument("--tls-cert", metavar="FILE")
    s.add_argument("--tls-key", metavar="FILE")
    s.add_argument("--read-only", action="store_true", help="refuse pushes and deletes")
    s.add_argument("--delete", action="store_true", help="allow deleting manifests and blobs")
    s.add_argument("--workers", type=int, default=1, metavar="N", help="server processes")
    s.add_argument(
        "--max-uploads",
        type=int,
        default=0,
        metavar="N",
        help="uploads at once per process; more get 429 TOOMANYREQUESTS (default: no limit)",
    )
    s.add_argument(
        "--proxy",
        metavar="URL",
        help="be a pull-through cache of this registry (https://HOST[:PORT]); no pushes",
    )
    s.add_argument("--proxy-username", metavar="USER", help="the upstream registry's user")
    s.add_argument(
        "--proxy-password",
        metavar="PASSWORD",
        help="and password (default: $DOCKYARD_PROXY_PASSWORD when a user is given)",
    )
    g = sub.add_parser("gc", help="remove blobs no manifest references")
    g.add_argument("--storage", required=True, metavar="DIR")
    g.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    g.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="MINUTES",
        help="keep unreferenced blobs younger than this (a push may be using them)",
    )


def run(verb: str, args: argparse.Namespace) -> int:
    return _serve(args) if args.action == "serve" else _gc(args)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"invalid --listen {value!r}: use HOST:PORT (port 0 for any free one)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _config(args: argparse.Namespace) -> Config:
    import os

    from dockyard.registry.server import Config

    host, port = parse_listen(args.listen)
    auth = args.auth or ("basic" if args.htpasswd else "none")
    key = None
    if args.token_key:
        try:
            with open(args.token_key, "rb") as f:
                key = f.read().strip()
        except OSError as e:
            raise UsageError(f"cannot read --token-key {args.token_key}: {e.strerror}") from e
        if len(key) < 16:
            raise UsageError(f"--token-key {args.token_key}: the secret needs 16 bytes or more")
    password = args.proxy_password
    if password is None and args.proxy_username is not None:
        password = os.environ.get("DOCKYARD_PROXY_PASSWORD")
    return Config(
        storage=args.storage,
        host=host,
        port=port,
        auth=auth,
        htpasswd=args.htpasswd,
        token_realm=args.token_realm,
        token_service=args.token_service,
        token_key=key,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        read_only=args.read_only,
        delete=args.delete,
        workers=args.workers,
        max_uploads=args.max_uploads,
        proxy=args.proxy,
        proxy_username=args.proxy_username,
        proxy_password=password,
    )


def _serve(args: argparse.Namespace) -> int:
    import ssl

    from dockyard.registry.auth import AuthConfigError
    from dockyard.registry.server import make_auth, serve

    config = _config(args)
    try:
        config.check()
        make_auth(config)  # an unreadable htpasswd file is a one-line error before binding
        return serve(config)
    except AuthConfigError as e:
        raise UsageError(str(e)) from None
    except ssl.SSLError as e:
        raise UsageError(f"cannot use the TLS certificate or key: {e.reason or e}") from None
    except OSError as e:
        where = f"{config.host}:{config.port}"
        raise UsageError(f"cannot serve on {where}: {e.strerror or e}") from None


def _gc(args: argparse.Namespace) -> int:
    import os

    from dockyard.registry.gc import collect

    if args.grace < 0:
        raise UsageError("--grace must be 0 or more minutes")
    if not os.path.isfile(os.path.join(args.storage, "registry.db")):
        raise UsageError(f"{args.storage} is not a registry's storage (no registry.db)")
    report = collect(args.storage, dry_run=args.dry_run, grace=args.grace * 60)
    verb = "would remove" if args.dry_run else "removed"
    out = sys.stdout
    for digest, size in report.blobs:
        out.write(f"{verb} blob {digest} ({size} bytes)\n")
    for upload in report.uploads:
        out.write(f"{verb} upload {upload}\n")
    for path in report.ingests:
        out.write(f"{verb} ingest {path}\n")
    for digest in report.kept_young:
        out.write(f"kept blob {digest}: younger than the grace period\n")
    out.write(
        f"{verb} {len(report.blobs)} blobs ({report.freed} bytes), {len(report.uploads)} uploads\n"
    )
    return 0
