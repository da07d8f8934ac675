"""`dockyard network create|ls|inspect|rm|prune|connect|disconnect` and `dockyard port`."""

from __future__ import annotations

import sys

from dockyard.cli.errors import UsageError
from dockyard.cli.options import key_values, render_format

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from dockyard.engine.containers import Engine

PRUNE_WARNING = (
    "WARNING! This will remove all custom networks not used by at least one container.\n"
)


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    if verb == "port":
        p.add_argument("container")
        p.add_argument("private_port", nargs="?", metavar="PRIVATE_PORT[/PROTO]")
        return
    sub = p.add_subparsers(dest="action", metavar="COMMAND", required=True)
    c = sub.add_parser("create", help="create a network")
    c.add_argument("-d", "--driver", default="bridge")
    c.add_argument("--subnet", action="append", default=[])
    c.add_argument("--gateway", action="append", default=[])
    c.add_argument("--ip-range", action="append", default=[])
    c.add_argument("--internal", action="store_true")
    c.add_argument("-o", "--opt", action="append", default=[])
    c.add_argument("--label", action="append", default=[])
    c.add_argument("--attachable", action="store_true")
    c.add_argument("--ipv6", action="store_true")
    c.add_argument("name")
    ls = sub.add_parser("ls", aliases=["list"], help="list networks")
    ls.add_argument("-q", "--quiet", action="store_true")
    ls.add_argument("-f", "--filter", action="append", default=[])
    ls.add_argument("--format")
    ls.add_argument("--no-trunc", action="store_true")
    i = sub.add_parser("inspect", help="show networks in detail (JSON)")
    i.add_argument("-f", "--format")
    i.add_argument("names", nargs="+", metavar="NETWORK")
    rm = sub.add_parser("rm", aliases=["remove"], help="remove networks")
    rm.add_argument("-f", "--force", action="store_true")
    rm.add_argument("names", nargs="+", metavar="NETWORK")
    pr = sub.add_parser("prune", help="remove unused networks")
    pr.add_argument("-f", "--force", action="store_true")
    pr.add_argument("--filter", action="append", default=[])
    cn = sub.add_parser("connect", help="connect a container to a network")
    cn.add_argument("--alias", action="append", default=[])
    cn.add_argument("--ip")
    cn.add_argument("network")
    cn.add_argument("container")
    dc = sub.add_parser("disconnect", help="disconnect a container from a network")
    dc.add_argument("-f", "--force", action="store_true")
    dc.add_argument("network")
    dc.add_argument("container")


def _engine(args: argparse.Namespace) -> Engine:
    from dockyard.cli.containers import engine

    return engine(args)


def run(verb: str, args: argparse.Namespace) -> int:
    if verb == "port":
        return _port(args)
    action = {"list": "ls", "remove": "rm"}.get(args.action, args.action)
    return int(globals()[f"_{action}"](args))


def _one(values: list[str], flag: str) -> str | None:
    if len(values) > 1:
        raise UsageError(f"{flag} given {len(values)} times: only one IPv4 pool is supported")
    return values[0] if values else None


def _create(args: argparse.Namespace) -> int:
    from dockyard.engine import network_admin

    if args.ipv6:
        raise UsageError("--ipv6: IPv6 networks are not supported")
    network = network_admin.create(
        _engine(args),
        args.name,
        subnet=_one(args.subnet, "--subnet"),
        gateway=_one(args.gateway, "--gateway"),
        ip_range=_one(args.ip_range, "--ip-range"),
        internal=args.internal,
        options=key_values(args.opt, "--opt"),
        labels=key_values(args.label, "--label"),
        driver=args.driver,
    )
    print(network.id)
    return 0


def _matches(network: Any, filters: list[str]) -> bool:
    for item in filters:
        key, _, value = item.partition("=")
        if key == "name" and value not in network.name:
            return False
        if key == "id" and not network.id.startswith(value):
            return False
        if key == "driver" and network.driver != value:
            return False
        if key == "type" and value != ("custom" if network.user_defined else "builtin"):
            return False
        if key == "label":
            k, eq, v = value.partition("=")
            if k not in network.labels or (eq and network.labels[k] != v):
                return False
        if key not in ("name", "id", "driver", "type", "label", "scope"):
            raise UsageError(f"invalid filter '{key}': use name, id, driver, type or label")
    return True


def _ls(args: argparse.Namespace) -> int:
    from dockyard.engine import network_admin

    found = [n for n in network_admin.networks(_engine(args)) if _matches(n, args.filter)]
    rows = [
        {
            "ID": n.id if args.no_trunc else n.id[:12],
            "Name": n.name,
            "Driver": n.driver,
            "Scope": "local",
            "IPv6": "false",
            "Internal": str(n.internal).lower(),
            "Labels": ",".join(f"{k}={v}" for k, v in n.labels.items()),
            "CreatedAt": n.created,
        }
        for n in found
    ]
    for builtin in ("host", "none"):  # Docker lists these two as networks too
        if all(_matches_builtin(builtin, f) for f in args.filter):
            rows.append(
                {
                    "ID": builtin,
                    "Name": builtin,
                    "Driver": builtin,
                    "Scope": "local",
                    "IPv6": "false",
                    "Internal": "false",
                    "Labels": "",
                    "CreatedAt": "",
                }
            )
    if args.quiet:
        for row in rows:
            print(row["ID"])
        return 0
    if args.format and args.format != "table":
        for row in rows:
            print(render_format(args.format, row))
        return 0
    print(f"{'NETWORK ID':<14}{'NAME':<20}{'DRIVER':<10}SCOPE")
    for row in rows:
        print(f"{row['ID']:<14}{row['Name']:<20}{row['Driver']:<10}{row['Scope']}")
    return 0


def _matches_builtin(name: str, item: str) -> bool:
    key, _, value = item.partition("=")
    if key == "name":
        return value in name
    if key == "type":
        return value == "builtin"
    return key not in ("id", "label", "driver") or (key == "driver" and value == name)


def _inspect(args: argparse.Namespace) -> int:
    import json

    from dockyard.engine import network_admin
    from dockyard.network.store import NetworkNotFound

    eng = _engine(args)
    found: list[dict[str, Any]] = []
    failed = False
    for name in args.names:
        try:
            found.append(network_admin.document(eng, network_admin.get(eng, name)))
        except NetworkNotFound:
            sys.stderr.write(f"Error: No such network: {name}\n")
            failed = True
    if args.format:
        for item in found:
            print(render_format(args.format, item))
    else:
        print(json.dumps(found, indent=4))
    return 1 if failed else 0


def _rm(args: argparse.Namespace) -> int:
    from dockyard.cli.errors import for_each
    from dockyard.engine import network_admin
    from dockyard.network.store import NetworkNotFound

    eng = _engine(args)

    def one(name: str) -> None:
        try:
            network_admin.remove(eng, name)
        except NetworkNotFound:
            if not args.force:
                raise
            return
        print(name)

    return for_each(args.names, one)


def _prune(args: argparse.Namespace) -> int:
    from dockyard.engine import network_admin

    if not args.force:
        sys.stderr.write(PRUNE_WARNING + "Are you sure you want to continue? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    removed = network_admin.prune(_engine(args))
    if removed:
        print("Deleted Networks:")
        for name in removed:
            print(name)
    return 0


def _connect(args: argparse.Namespace) -> int:
    from dockyard.engine import network_admin

    network_admin.connect(_engine(args), args.network, args.container, args.alias, args.ip)
    return 0


def _disconnect(args: argparse.Namespace) -> int:
    from dockyard.engine import network_admin

    network_admin.disconnect(_engine(args), args.network, args.container, args.force)
    return 0


def _port(args: argparse.Namespace) -> int:
    from dockyard.engine import network_admin

    mappings = network_admin.port(_engine(args), args.container)
    if args.private_port:
        port, _, proto = args.private_port.partition("/")
        key = f"{port}/{proto or 'tcp'}"
        hits = [host for private, host in mappings if private == key]
        if not hits:
            raise UsageError(f"No public port '{key}' published for {args.container}")
        for host in hits:
            print(host)
        return 0
    for private, host in mappings:
        print(f"{private} -> {host}")
    return 0
