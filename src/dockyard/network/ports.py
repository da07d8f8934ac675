"""`-p/--publish` as Docker parses it, and whether a host port is free.

-p 80                      container port 80, any free host port, every address
-p 8080:80                 host 8080 → container 80
-p 127.0.0.1:8080:80/udp   only on 127.0.0.1, UDP
-p 127.0.0.1::80           any free host port on 127.0.0.1
-p 8000-8002:80-82         ranges of the same length
"""

from __future__ import annotations

import errno
import ipaddress

PROTOCOLS = ("tcp", "udp", "sctp")


class PortSpecError(ValueError):
    """A -p value that can't be parsed; the message names it and the syntax."""


def parse_publish(spec: str) -> list[tuple[str, str, int, int]]:
    """(proto, host_ip or "", host_port or 0, container_port) for one -p value."""
    text, _, proto = spec.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in PROTOCOLS:
        raise PortSpecError(f"invalid proto '{proto}' in {spec!r}: use tcp, udp or sctp")
    if text.startswith("["):
        raise PortSpecError(f"invalid publish {spec!r}: IPv6 host addresses are not supported")
    parts = text.split(":")
    if len(parts) == 1:
        host_ip, host, container = "", "", parts[0]
    elif len(parts) == 2:
        host_ip, host, container = "", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host, container = parts
    else:
        raise PortSpecError(f"invalid publish {spec!r}: use [IP:][HOSTPORT:]CONTAINERPORT[/PROTO]")
    if host_ip:
        try:
            address = ipaddress.ip_address(host_ip)
        except ValueError:
            raise PortSpecError(f"invalid IP address {host_ip!r} in {spec!r}") from None
        if address.version != 4:
            raise PortSpecError(f"invalid publish {spec!r}: only IPv4 addresses are supported")
        host_ip = "" if str(address) == "0.0.0.0" else str(address)
    container_ports = _port_range(container, spec, "container")
    if not host:
        return [(proto, host_ip, 0, port) for port in container_ports]
    host_ports = _port_range(host, spec, "host")
    if len(host_ports) != len(container_ports):
        raise PortSpecError(
            f"invalid publish {spec!r}: host and container port ranges differ in length"
        )
    return [(proto, host_ip, h, c) for h, c in zip(host_ports, container_ports, strict=True)]


def _port_range(text: str, spec: str, which: str) -> list[int]:
    low_text, dash, high_text = text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise PortSpecError(f"invalid {which} port {text!r} in {spec!r}") from None
    if not (1 <= low <= high <= 65535):
        raise PortSpecError(f"invalid {which} port {text!r} in {spec!r}: use 1-65535")
    return list(range(low, high + 1))


def parse_exposed(key: str) -> tuple[int, str]:
    """An image's ExposedPorts key ("80/tcp", "53/udp", "8080") → (port, proto)."""
    port, _, proto = key.partition("/")
    return int(port), (proto or "tcp").lower()


def bindable(proto: str, host_ip: str, port: int) -> bool:
    """Whether a host program could bind `host_ip:port` now (so it isn't one's already).

    A published port is DNAT in the kernel, not a listening socket: this is
    the check that turns a clash with a host program into an error at `run`.
    """
    import _socket

    kind = _socket.SOCK_DGRAM if proto == "udp" else _socket.SOCK_STREAM
    sock = _socket.socket(_socket.AF_INET, kind)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((host_ip or "0.0.0.0", port))
    except OSError as err:
        if err.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        if err.errno == errno.EADDRNOTAVAIL:
            raise PortSpecError(
                f"cannot publish on {host_ip}:{port}: no interface has address {host_ip}"
            ) from None
        raise
    finally:
        sock.close()
    return True
