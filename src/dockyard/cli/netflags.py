"""The network flags of `run`/`create`: --network, -p, -P, --expose, --dns…, --add-host."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.engine.spec import RunOptions


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", "--net", default="bridge")
    p.add_argument("-p", "--publish", action="append", default=[])
    p.add_argument("-P", "--publish-all", action="store_true")
    p.add_argument("--expose", action="append", default=[])
    p.add_argument("--dns", action="append", default=[])
    p.add_argument("--dns-search", action="append", default=[])
    p.add_argument("--dns-option", "--dns-opt", action="append", default=[])
    p.add_argument("--add-host", action="append", default=[])
    p.add_argument("--network-alias", "--net-alias", action="append", default=[])
    p.add_argument("--ip")


def apply(args: argparse.Namespace, opts: RunOptions) -> None:
    """Parse the flags into `opts`; UsageError names a bad value."""
    import ipaddress
    import os

    from dockyard.cli.errors import UsageError
    from dockyard.network.ports import PortSpecError, parse_publish

    opts.network = args.network
    try:
        opts.publish = [m for spec in args.publish for m in parse_publish(spec)]
    except PortSpecError as err:
        raise UsageError(str(err)) from None
    opts.publish_all = args.publish_all
    for spec in args.expose:
        port, _, proto = spec.partition("/")
        low, _, high = port.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise UsageError(f"invalid --expose {spec!r}: use PORT[-PORT][/PROTO]")
        for number in range(int(low), int(high or low) + 1):
            opts.expose.append(f"{number}/{(proto or 'tcp').lower()}")
    for server in args.dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise UsageError(f"{server} is not an ip address (--dns)") from None
    opts.dns = list(args.dns)
    opts.dns_search = list(args.dns_search)
    opts.dns_options = list(args.dns_option)
    for entry in args.add_host:
        name, sep, address = entry.partition(":")
        if address == "host-gateway":
            address = _host_gateway()
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise UsageError(
                f"invalid argument {entry!r} for --add-host: use NAME:IP (or NAME:host-gateway)"
            ) from None
        if not sep or not name:
            raise UsageError(f"invalid argument {entry!r} for --add-host: use NAME:IP")
        opts.extra_hosts.append(f"{name}:{address}")
    opts.network_aliases = list(args.network_alias)
    opts.ip = args.ip
    if args.network == "host" and not opts.hostname:
        opts.hostname = os.uname().nodename  # the host's name, as Docker's host mode


def _host_gateway() -> str:
    """host-gateway: the default bridge's address, where the host answers containers."""
    import ipaddress

    from dockyard.network.store import DEFAULT_SUBNET

    return str(next(ipaddress.ip_network(DEFAULT_SUBNET).hosts()))
