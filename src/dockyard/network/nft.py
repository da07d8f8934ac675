"""NAT and filtering for container networks, in dockyard's own nftables table.

The table (family `ip`, default name `dockyard`) is rendered whole from the
networks and published ports dockyard knows of, and swapped in by one
transaction: add the table, delete it, add it again with every chain and rule.
So a sync is atomic and idempotent and leaves nothing stale, and no other
table (Docker's, netavark's, the host's firewall) is ever read or touched.

    prerouting   nat, hook prerouting, priority dstnat (-100)
                 fib daddr type local jump ports
    output       nat, hook output, priority -100 (connections from the host,
                 127.0.0.1 included)
                 fib daddr type local jump ports
    ports        one rule a published port:
                 [ip daddr HOST_IP] PROTO dport HOST_PORT dnat to CIP:CPORT
    postrouting  nat, hook postrouting, priority srcnat (100)
                 ip saddr SUBNET oifname != BR masquerade      (not internal)
                 oifname BR ip saddr 127.0.0.0/8 masquerade    (from 127.0.0.1)
                 oifname BR ct status dnat ip saddr SUBNET masquerade  (hairpin)
    forward      filter, hook forward, priority filter (0)
                 iifname BR oifname != BR drop                 (internal)
                 oifname BR iifname != BR drop                 (internal)
                 ct status dnat accept                         (published ports)
                 iifname BR oifname { OTHER BRIDGES } drop     (isolation)

Every chain's policy is accept, so the host's own traffic is left alone.
Reaching a published port from 127.0.0.1 also needs
net.ipv4.conf.BR.route_localnet=1, which links.py sets on each bridge.
A connection to a published port through a host address is allowed across
networks (as Docker's userland proxy allows it); direct traffic between two
dockyard bridges is not. IPv6 addresses are skipped (the table is IPv4 only).

libnftables is driven through ctypes with JSON in and out, as the
python3-nftables binding does (one context per process, loaded on first use);
without the library, `nft -j -f -` does the same work.
"""

from __future__ import annotations

import _thread
import os

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

TABLE = "dockyard"
FAMILY = "ip"
LIBRARY = "libnftables.so.1"
NFT = "nft"
CONNTRACK = "conntrack"

PRIO_DSTNAT = -100
PRIO_NAT_OUTPUT = -100
PRIO_SRCNAT = 100
PRIO_FILTER = 0

PROTOCOLS = ("tcp", "udp", "sctp")
IFNAMSIZ = 15  # longest interface name the kernel takes

_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON


class NftError(Exception):
    """nftables refused a command, or a rule could not be rendered (one line)."""


class BridgeNet:
    """A network as the table sees it: its bridge, its subnet, whether it is internal."""

    __slots__ = ("bridge", "internal", "subnet")

    def __init__(self, bridge: str, subnet: str, internal: bool = False) -> None:
        self.bridge = bridge
        self.subnet = subnet
        self.internal = internal

    def _key(self) -> tuple[str, str, bool]:
        return (self.bridge, self.subnet, self.internal)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BridgeNet) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"BridgeNet(bridge={self.bridge!r}, subnet={self.subnet!r}, internal={self.internal!r})"
        )


class PortRule:
    """A published port: host_ip "" (or 0.0.0.0) means every host address.

    `bridge` (the container's network) is carried for the caller; the DNAT rule
    does not need it.
    """

    __slots__ = ("bridge", "container_ip", "container_port", "host_ip", "host_port", "proto")

    def __init__(
        self,
        proto: str,
        host_ip: str,
        host_port: int,
        container_ip: str,
        container_port: int,
        bridge: str,
    ) -> None:
        self.proto = proto
        self.host_ip = host_ip
        self.host_port = host_port
        self.container_ip = container_ip
        self.container_port = container_port
        self.bridge = bridge

    def _key(self) -> tuple[str, str, int, str, int, str]:
        return (
            self.proto,
            self.host_ip,
            self.host_port,
            self.container_ip,
            self.container_port,
            self.bridge,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PortRule) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"PortRule(proto={self.proto!r}, host_ip={self.host_ip!r}, "
            f"host_port={self.host_port!r}, container_ip={self.container_ip!r}, "
            f"container_port={self.container_port!r}, bridge={self.bridge!r})"
        )


# ---------------------------------------------------------------- rendering


def _ipv4(addr: str, what: str) -> int:
    parts = addr.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        raise NftError(f"{what}: {addr!r} is not an IPv4 address")
    return (int(parts[0]) << 24) | (int(parts[1]) << 16) | (int(parts[2]) << 8) | int(parts[3])


def _dotted(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _prefix(subnet: str, what: str) -> dict[str, Any]:
    addr, slash, length = subnet.partition("/")
    bits = int(length) if length.isdigit() and len(length) <= 2 else -1
    if not slash or not 0 <= bits <= 32:
        raise NftError(f"{what}: {subnet!r} is not an IPv4 subnet (a.b.c.d/len)")
    mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    return {"prefix": {"addr": _dotted(_ipv4(addr, what) & mask), "len": bits}}


def _ifname(name: str, what: str) -> str:
    if (
        not name
        or len(name) > IFNAMSIZ
        or name in (".", "..")
        or any(c in name for c in "/: \t\n\0")
    ):
        raise NftError(f"{what}: {name!r} is not an interface name")
    return name


def _port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise NftError(f"{what}: port {port!r} is not in 1-65535")
    return port


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


_FIB_LOCAL = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
_CT_DNAT = _match({"ct": {"key": "status"}}, "dnat", "in")
_LOCALHOST = {"prefix": {"addr": "127.0.0.0", "len": 8}}


def _is_ipv6(addr: str) -> bool:
    return ":" in addr


def render(nets: list[BridgeNet], ports: list[PortRule], table: str = TABLE) -> dict[str, Any]:
    """The libnftables JSON document that makes `table` exactly this, in one transaction."""
    tbl = {"family": FAMILY, "name": table}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": tbl}},
        {"delete": {"table": tbl}},
        {"add": {"table": tbl}},
    ]

    def chain(name: str, kind: str = "", hook: str = "", prio: int = 0) -> None:
        body: dict[str, Any] = {"family": FAMILY, "table": table, "name": name}
        if kind:
            body.update(type=kind, hook=hook, prio=prio, policy="accept")
        cmds.append({"add": {"chain": body}})

    def rule(chain_name: str, *expr: dict[str, Any]) -> None:
        body = {"family": FAMILY, "table": table, "chain": chain_name, "expr": list(expr)}
        cmds.append({"add": {"rule": body}})

    chain("prerouting", "nat", "prerouting", PRIO_DSTNAT)
    chain("output", "nat", "output", PRIO_NAT_OUTPUT)
    chain("ports")
    chain("postrouting", "nat", "postrouting", PRIO_SRCNAT)
    chain("forward", "filter", "forward", PRIO_FILTER)

    jump_ports = {"jump": {"target": "ports"}}
    rule("prerouting", _FIB_LOCAL, jump_ports)
    rule("output", _FIB_LOCAL, jump_ports)

    # Published ports; a rule for one host address goes before a catch-all on the same port.
    seen: set[tuple[str, str, int]] = set()
    specific: list[dict[str, Any]] = []
    catch_all: list[dict[str, Any]] = []
    for p in ports:
        what = f"port {p.proto}/{p.host_port}"
        if p.proto not in PROTOCOLS:
            raise NftError(f"{what}: protocol must be one of {', '.join(PROTOCOLS)}")
        _port(p.host_port, what)
        _port(p.container_port, what)
        host_ip = "" if p.host_ip == "0.0.0.0" else p.host_ip
        if _is_ipv6(host_ip) or _is_ipv6(p.container_ip):
            continue
        key = (p.proto, host_ip, p.host_port)
        if key in seen:
            raise NftError(f"{what}: host port {host_ip or '*'}:{p.host_port} published twice")
        seen.add(key)
        expr: list[dict[str, Any]] = []
        if host_ip:
            expr.append(_match(_payload("ip", "daddr"), _dotted(_ipv4(host_ip, what))))
        expr.append(_match(_payload(p.proto, "dport"), p.host_port))
        cip = _dotted(_ipv4(p.container_ip, what))
        expr.append({"dnat": {"addr": cip, "port": p.container_port}})
        (specific if host_ip else catch_all).append(
            {"add": {"rule": {"family": FAMILY, "table": table, "chain": "ports", "expr": expr}}}
        )
    cmds.extend(specific)
    cmds.extend(catch_all)

    bridges: list[str] = []
    for n in nets:
        br = _ifname(n.bridge, f"network {n.bridge}")
        if br in bridges:
            raise NftError(f"network {br}: bridge listed twice")
        bridges.append(br)
        if _is_ipv6(n.subnet):
            continue  # still isolated below, by its bridge's name
        oif = _meta("oifname")
        subnet = _prefix(n.subnet, f"network {br}")
        saddr = _payload("ip", "saddr")
        if not n.internal:
            rule("postrouting", _match(saddr, subnet), _match(oif, br, "!="), {"masquerade": None})
        rule("postrouting", _match(oif, br), _match(saddr, _LOCALHOST), {"masquerade": None})
        rule("postrouting", _match(oif, br), _CT_DNAT, _match(saddr, subnet), {"masquerade": None})

    iif, oif = _meta("iifname"), _meta("oifname")
    for n in nets:
        if n.internal:
            rule("forward", _match(iif, n.bridge), _match(oif, n.bridge, "!="), {"drop": None})
            rule("forward", _match(oif, n.bridge), _match(iif, n.bridge, "!="), {"drop": None})
    if len(bridges) > 1:
        rule("forward", _CT_DNAT, {"accept": None})
        for br in bridges:
            others = [b for b in bridges if b != br]
            right: Any = others[0] if len(others) == 1 else {"set": others}
            rule("forward", _match(iif, br), _match(oif, right), {"drop": None})
    return {"nftables": cmds}


# ---------------------------------------------------------------- libnftables


class _Nft:
    """One libnftables context, JSON in and out; OSError when the library can't be loaded."""

    def __init__(self) -> None:
        import ctypes

        lib = ctypes.CDLL(LIBRARY, use_errno=True)
        vp, cp = ctypes.c_void_p, ctypes.c_char_p
        lib.nft_ctx_new.restype, lib.nft_ctx_new.argtypes = vp, [ctypes.c_uint32]
        lib.nft_ctx_free.restype, lib.nft_ctx_free.argtypes = None, [vp]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [vp]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [vp, ctypes.c_uint]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).restype, getattr(lib, name).argtypes = ctypes.c_int, [vp]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).restype, getattr(lib, name).argtypes = cp, [vp]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [vp, cp]
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise OSError("nft_ctx_new failed")
        flags = lib.nft_ctx_output_get_flags(ctx)
        lib.nft_ctx_output_set_flags(ctx, flags | _OUTPUT_JSON)
        if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
            lib.nft_ctx_free(ctx)
            raise OSError("nft_ctx_buffer_output failed")
        self.lib = lib
        self.ctx = ctx
        self.pid = os.getpid()

    def run(self, command: bytes) -> tuple[int, str, str]:
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, command)
        out = self.lib.nft_ctx_get_output_buffer(self.ctx) or b""
        err = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def free(self) -> None:
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None


_lock = _thread.allocate_lock()  # a libnftables context is not thread-safe
_nft: _Nft | None = None
_use_library = True  # False once loading failed: use the nft command


def _context() -> _Nft | None:
    """The process's context; a forked child makes its own (the netlink socket is not shared)."""
    global _nft, _use_library
    if _nft is not None and _nft.pid != os.getpid():
        _nft.free()
        _nft = None
    if _nft is None and _use_library:
        try:
            _nft = _Nft()
        except (OSError, AttributeError):
            _use_library = False
    return _nft


def _one_line(err: str, fallback: str) -> str:
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    for ln in lines:  # "internal:0:0-0: Error: No such file or directory; ..."
        if "Error:" in ln:
            return ln.partition("Error:")[2].strip()
    return lines[0] if lines else fallback


def _tool(name: str) -> str:
    """`name` on PATH, else in /usr/sbin (a user's PATH on Debian lacks it)."""
    import shutil

    return shutil.which(name) or os.path.join("/usr/sbin", name)


def _run_cli(command: bytes) -> tuple[int, str, str]:
    import subprocess

    try:
        proc = subprocess.run(
            [_tool(NFT), "-j", "-f", "-"],
            input=command,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError:
        raise NftError("nftables: neither libnftables nor the nft command is available") from None
    except subprocess.TimeoutExpired:
        raise NftError("nftables: nft did not answer in 60 s") from None
    out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    return proc.returncode, out, err


def _run(doc: dict[str, Any]) -> tuple[int, str, str]:
    import json

    command = json.dumps(doc, separators=(",", ":")).encode()
    with _lock:
        nft = _context()
        if nft is not None:
            return nft.run(command)
    return _run_cli(command)


def _check(doc: dict[str, Any], action: str) -> str:
    rc, out, err = _run(doc)
    if rc != 0:
        raise NftError(f"nftables: {action}: {_one_line(err, f'failed (status {rc})')}")
    return out


def sync(nets: list[BridgeNet], ports: list[PortRule], table: str = TABLE) -> None:
    """Make `table` exactly what render() says, atomically."""
    _check(render(nets, ports, table), f"cannot load table {FAMILY} {table}")


def delete_table(table: str = TABLE) -> None:
    """Remove `table` if it is there (adding it first makes the delete never fail)."""
    tbl = {"family": FAMILY, "name": table}
    doc = {"nftables": [{"add": {"table": tbl}}, {"delete": {"table": tbl}}]}
    _check(doc, f"cannot delete table {FAMILY} {table}")


def list_rules(table: str = TABLE) -> dict[str, Any]:
    """The table as nft JSON ({"nftables": [...]}), or {} when it does not exist."""
    import json

    doc = {"nftables": [{"list": {"table": {"family": FAMILY, "name": table}}}]}
    rc, out, err = _run(doc)
    if rc != 0:
        if "No such file or directory" in err:
            return {}
        raise NftError(f"nftables: cannot list table {FAMILY} {table}: {_one_line(err, 'failed')}")
    try:
        result: dict[str, Any] = json.loads(out)
    except ValueError:
        raise NftError(f"nftables: cannot list table {FAMILY} {table}: bad JSON") from None
    return result


# ---------------------------------------------------------------- conntrack


def flush_conntrack(ip: str) -> None:
    """Forget connections to or from `ip`, either direction (so DNATed ones go too)."""
    import subprocess

    if ":" in ip:
        if not all(c in "0123456789abcdefABCDEF:." for c in ip):
            raise NftError(f"conntrack: {ip!r} is not an IP address")
    else:
        _ipv4(ip, "conntrack")
    conntrack = _tool(CONNTRACK)
    # One run at a time: runs side by side race (one deletes what another has just
    # listed, and that one stops at "such conntrack doesn't exist"); so does the
    # kernel expiring an entry, hence a few tries.
    for flag in ("-s", "-d", "--reply-src", "--reply-dst"):
        for _attempt in range(3):
            try:
                proc = subprocess.run(
                    [conntrack, "-D", flag, ip],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    timeout=30,
                    check=False,
                )
            except FileNotFoundError:
                raise NftError("conntrack: command not found (install conntrack)") from None
            except subprocess.TimeoutExpired:
                raise NftError(f"conntrack: cannot flush {ip}: no answer in 30 s") from None
            err = proc.stderr.decode("utf-8", "replace")
            if proc.returncode == 0 or "0 flow entries" in err:  # none matched: fine
                break
            if "doesn't exist" not in err:
                # "conntrack v1.4.7 (conntrack-tools): Invalid IP address `x'"
                line = _one_line(err, f"failed (status {proc.returncode})")
                why = line.partition("(conntrack-tools): ")[2] or line
                raise NftError(f"conntrack: cannot flush {ip}: {why}")
