"""Networks, endpoints and published ports in the metadata DB; IPAM.

An endpoint is a container's attachment to a network while it runs: its
address, MAC, aliases and the host end of its veth pair. Addresses are handed
out inside a write transaction (BEGIN IMMEDIATE) and the table's UNIQUE
(network_id, ip) makes a duplicate impossible even across processes. Host
ports are published the same way (primary key proto + host_ip + host_port).

The default network `bridge` (bridge `dockyard0`, 10.77.0.0/16) is made on
first use. User-defined networks get a /24 from 10.78.0.0/16 unless given a
subnet; a subnet that overlaps another network's or a host route is refused.
"""

from __future__ import annotations

import ipaddress
import json
import os

from dockyard.storage import db

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable
    from typing import Any

DEFAULT_NETWORK = "bridge"
DEFAULT_BRIDGE = "dockyard0"
DEFAULT_SUBNET = "10.77.0.0/16"
USER_POOL = "10.78.0.0/16"
# State roots other than the default one (tests, a second dockyard) get their own
# default bridge, a /24 from here, and their own nft table: two roots never hand
# out the same address on one bridge, nor replace each other's rules.
OTHER_ROOTS_POOL = "10.79.0.0/16"
DEFAULT_ROOT = "/var/lib/dockyard"
USER_PREFIX = 24
RESERVED_NAMES = ("bridge", "host", "none")
EPHEMERAL_PORTS = (32768, 60999)


class NetworkError(Exception):
    """A network operation the user asked for can't be done; the message says why."""


class NetworkNotFound(NetworkError):
    def __init__(self, name: str) -> None:
        super().__init__(f"network {name} not found")


class PortInUse(NetworkError):
    pass


class Network:
    __slots__ = (
        "bridge",
        "created",
        "driver",
        "gateway",
        "id",
        "internal",
        "ip_range",
        "labels",
        "name",
        "options",
        "subnet",
    )

    def __init__(self, row: sqlite3.Row) -> None:
        self.id: str = row["id"]
        self.name: str = row["name"]
        self.driver: str = row["driver"]
        self.bridge: str = row["bridge"]
        self.subnet: str = row["subnet"]
        self.gateway: str = row["gateway"]
        self.ip_range: str | None = row["ip_range"]
        self.internal = bool(row["internal"])
        self.options: dict[str, str] = json.loads(row["options"])
        self.labels: dict[str, str] = json.loads(row["labels"])
        self.created: str = row["created"]

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @property
    def user_defined(self) -> bool:
        return self.name != DEFAULT_NETWORK

    def __repr__(self) -> str:
        return f"Network({self.name!r}, {self.subnet}, bridge={self.bridge})"


class Endpoint:
    __slots__ = ("aliases", "container_id", "host_ifname", "ip", "mac", "network_id")

    def __init__(self, row: sqlite3.Row) -> None:
        self.network_id: str = row["network_id"]
        self.container_id: str = row["container_id"]
        self.ip: str = row["ip"]
        self.mac: str = row["mac"]
        self.aliases: list[str] = json.loads(row["aliases"])
        self.host_ifname: str = row["host_ifname"]


class PortMapping:
    __slots__ = (
        "bridge",
        "container_id",
        "container_ip",
        "container_port",
        "host_ip",
        "host_port",
        "proto",
    )

    def __init__(self, row: sqlite3.Row | dict[str, Any]) -> None:
        self.container_id: str = row["container_id"]
        self.proto: str = row["proto"]
        self.host_ip: str = row["host_ip"]
        self.host_port: int = int(row["host_port"])
        self.container_port: int = int(row["container_port"])
        self.container_ip: str = row["container_ip"]
        self.bridge: str = row["bridge"]

    def host_label(self) -> str:
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}"


class NetworkStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # ------------------------------------------------------------ networks

    def get(self, name: str) -> Network:
        """By name, full id or unique id prefix (Docker's rules)."""
        row = self.conn.execute(
            "SELECT * FROM networks WHERE name = ? OR id = ?", (name, name)
        ).fetchone()
        if row is None and name == DEFAULT_NETWORK:
            return self.default()
        if row is None and len(name) >= 1 and all(c in "0123456789abcdef" for c in name):
            rows = self.conn.execute(
                "SELECT * FROM networks WHERE id >= ? AND id < ? LIMIT 2", (name, name + "g")
            ).fetchall()
            if len(rows) == 1:
                row = rows[0]
        if row is None:
            raise NetworkNotFound(name)
        return Network(row)

    def find(self, name: str) -> Network | None:
        try:
            return self.get(name)
        except NetworkNotFound:
            return None

    def all(self) -> list[Network]:
        self.default()
        rows = self.conn.execute("SELECT * FROM networks ORDER BY created").fetchall()
        return [Network(r) for r in rows]

    def default(self) -> Network:
        row = self.conn.execute(
            "SELECT * FROM networks WHERE name = ?", (DEFAULT_NETWORK,)
        ).fetchone()
        if row is not None:
            return Network(row)
        tag = root_tag(root_of(self.conn))
        with db.transaction(self.conn) as conn:
            row = conn.execute(
                "SELECT * FROM networks WHERE name = ?", (DEFAULT_NETWORK,)
            ).fetchone()
            if row is None:
                if tag:
                    taken = [
                        ipaddress.ip_network(r[0])
                        for r in conn.execute("SELECT subnet FROM networks")
                    ]
                    subnet = _free_subnet(taken + _host_networks(), OTHER_ROOTS_POOL)
                else:
                    subnet = ipaddress.IPv4Network(DEFAULT_SUBNET)
                self._insert(
                    conn,
                    db.new_id(),
                    DEFAULT_NETWORK,
                    f"dy0-{tag}" if tag else DEFAULT_BRIDGE,
                    str(subnet),
                    str(next(subnet.hosts())),
                    None,
                    False,
                    {"com.docker.network.bridge.default_bridge": "true"},
                    {},
                )
        return self.default()

    def create(
        self,
        name: str,
        subnet: str | None = None,
        gateway: str | None = None,
        ip_range: str | None = None,
        internal: bool = False,
        options: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        driver: str = "bridge",
    ) -> Network:
        if driver != "bridge":
            raise NetworkError(f'plugin "{driver}" not found: only the bridge driver exists here')
        if name in RESERVED_NAMES:
            raise NetworkError(f"network name {name} is reserved: choose another name")
        if not _valid_name(name):
            raise NetworkError(
                f'invalid network name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed'
            )
        options = dict(options or {})
        network_id = db.new_id()
        bridge = options.get("com.docker.network.bridge.name") or f"dy-{network_id[:12]}"
        if len(bridge) > 15:
            raise NetworkError(f"bridge name {bridge} is longer than 15 characters")
        with db.transaction(self.conn) as conn:
            if conn.execute("SELECT 1 FROM networks WHERE name = ?", (name,)).fetchone():
                raise NetworkError(f"network with name {name} already exists")
            taken = [
                ipaddress.ip_network(r[0]) for r in conn.execute("SELECT subnet FROM networks")
            ]
            taken.append(ipaddress.ip_network(DEFAULT_SUBNET))
            if subnet is None:
                if gateway or ip_range:
                    raise NetworkError("--gateway and --ip-range need --subnet")
                net = _free_subnet(taken + _host_networks())
            else:
                net = _parse_subnet(subnet)
                for other in taken:
                    if net.overlaps(other):
                        raise NetworkError(
                            f"Pool overlaps with other one on this address space: {net} and {other}"
                        )
            gw = _parse_gateway(gateway, net)
            rng = _parse_range(ip_range, net) if ip_range else None
            self._insert(
                conn, network_id, name, bridge, str(net), gw, rng, internal, options, labels or {}
            )
        return self.get(network_id)

    def _insert(
        self,
        conn: sqlite3.Connection,
        network_id: str,
        name: str,
        bridge: str,
        subnet: str,
        gateway: str,
        ip_range: str | None,
        internal: bool,
        options: dict[str, str],
        labels: dict[str, str],
    ) -> None:
        conn.execute(
            "INSERT INTO networks (id, name, driver, bridge, subnet, gateway, ip_range, internal,"
            " options, labels, created) VALUES (?, ?, 'bridge', ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                network_id,
                name,
                bridge,
                subnet,
                gateway,
                ip_range,
                int(internal),
                json.dumps(options),
                json.dumps(labels),
                db.now(),
            ),
        )

    def remove(self, network: Network) -> None:
        """Delete the row; refuses while endpoints use it (the caller checks containers)."""
        if network.name == DEFAULT_NETWORK:
            raise NetworkError("bridge is a pre-defined network and cannot be removed")
        with db.transaction(self.conn) as conn:
            if conn.execute(
                "SELECT 1 FROM endpoints WHERE network_id = ? LIMIT 1", (network.id,)
            ).fetchone():
                raise NetworkError(
                    f"error while removing network: network {network.name} id {network.id} "
                    "has active endpoints"
                )
            conn.execute("DELETE FROM networks WHERE id = ?", (network.id,))

    # ------------------------------------------------------------ endpoints

    def endpoints(self, network: Network | None = None) -> list[Endpoint]:
        if network is None:
            rows = self.conn.execute("SELECT * FROM endpoints").fetchall()
        else:
            rows = self.conn.execute(
                "SELECT * FROM endpoints WHERE network_id = ?", (network.id,)
            ).fetchall()
        return [Endpoint(r) for r in rows]

    def endpoints_of(self, container_id: str) -> list[Endpoint]:
        rows = self.conn.execute(
            "SELECT * FROM endpoints WHERE container_id = ? ORDER BY created", (container_id,)
        ).fetchall()
        return [Endpoint(r) for r in rows]

    def allocate(
        self,
        network: Network,
        container_id: str,
        aliases: Iterable[str] = (),
        ip: str | None = None,
    ) -> Endpoint:
        """The container's address on `network` (the same one again if it has one)."""
        host_ifname = veth_name(container_id, network.id)
        with db.transaction(self.conn) as conn:
            row = conn.execute(
                "SELECT * FROM endpoints WHERE network_id = ? AND container_id = ?",
                (network.id, container_id),
            ).fetchone()
            if row is not None:
                return Endpoint(row)
            used = {
                r[0]
                for r in conn.execute(
                    "SELECT ip FROM endpoints WHERE network_id = ?", (network.id,)
                )
            }
            address = self._pick(network, used, ip)
            conn.execute(
                "INSERT INTO endpoints (network_id, container_id, ip, mac, aliases, host_ifname,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    network.id,
                    container_id,
                    address,
                    mac_of(address),
                    json.dumps(list(dict.fromkeys(aliases))),
                    host_ifname,
                    db.now(),
                ),
            )
            row = conn.execute(
                "SELECT * FROM endpoints WHERE network_id = ? AND container_id = ?",
                (network.id, container_id),
            ).fetchone()
        return Endpoint(row)

    @staticmethod
    def _pick(network: Network, used: set[str], wanted: str | None) -> str:
        subnet = ipaddress.ip_network(network.subnet)
        if wanted:
            try:
                address = ipaddress.ip_address(wanted)
            except ValueError:
                raise NetworkError(f"invalid IP address: {wanted}") from None
            if address not in subnet:
                raise NetworkError(
                    f"the address {wanted} is not in network {network.name}'s subnet {subnet}"
                )
            if wanted in used or wanted == network.gateway:
                raise NetworkError(f"Address already in use: {wanted} on network {network.name}")
            return wanted
        pool = ipaddress.ip_network(network.ip_range) if network.ip_range else subnet
        reserved = used | {network.gateway}
        for address in pool.hosts():
            text = str(address)
            if text not in reserved:
                return text
        raise NetworkError(f"no available IPv4 addresses on network {network.name}")

    def release(self, container_id: str, network: Network | None = None) -> list[Endpoint]:
        """Drop the container's endpoints (on one network, or all) and its ports."""
        with db.transaction(self.conn) as conn:
            if network is None:
                rows = conn.execute(
                    "SELECT * FROM endpoints WHERE container_id = ?", (container_id,)
                ).fetchall()
                conn.execute("DELETE FROM endpoints WHERE container_id = ?", (container_id,))
                conn.execute("DELETE FROM port_mappings WHERE container_id = ?", (container_id,))
            else:
                rows = conn.execute(
                    "SELECT * FROM endpoints WHERE container_id = ? AND network_id = ?",
                    (container_id, network.id),
                ).fetchall()
                conn.execute(
                    "DELETE FROM endpoints WHERE container_id = ? AND network_id = ?",
                    (container_id, network.id),
                )
                conn.execute(
                    "DELETE FROM port_mappings WHERE container_id = ? AND bridge = ?",
                    (container_id, network.bridge),
                )
        return [Endpoint(r) for r in rows]

    # ------------------------------------------------------------ ports

    def ports(self, container_id: str | None = None) -> list[PortMapping]:
        if container_id is None:
            rows = self.conn.execute("SELECT * FROM port_mappings").fetchall()
        else:
            rows = self.conn.execute(
                "SELECT * FROM port_mappings WHERE container_id = ?", (container_id,)
            ).fetchall()
        return [PortMapping(r) for r in rows]

    def publish(
        self,
        container_id: str,
        wanted: list[tuple[str, str, int, int]],
        container_ip: str,
        bridge: str,
    ) -> list[PortMapping]:
        """Record (proto, host_ip, host_port or 0 for any free one, container_port)
        mappings; PortInUse (and nothing recorded) if one is taken."""
        from dockyard.network.ports import bindable

        with db.transaction(self.conn) as conn:
            taken = {
                (r[0], r[1], int(r[2]))
                for r in conn.execute("SELECT proto, host_ip, host_port FROM port_mappings")
            }
            made: list[PortMapping] = []
            for proto, host_ip, host_port, container_port in wanted:
                if host_port == 0:
                    host_port = _free_port(proto, host_ip, taken)
                elif _clashes(taken, proto, host_ip, host_port):
                    raise PortInUse(
                        f"Bind for {host_ip or '0.0.0.0'}:{host_port} failed: "
                        "port is already allocated"
                    )
                elif not bindable(proto, host_ip, host_port):
                    raise PortInUse(
                        f"Bind for {host_ip or '0.0.0.0'}:{host_port} failed: port is already "
                        "in use by another program on the host"
                    )
                taken.add((proto, host_ip, host_port))
                doc = {
                    "container_id": container_id,
                    "proto": proto,
                    "host_ip": host_ip,
                    "host_port": host_port,
                    "container_port": container_port,
                    "container_ip": container_ip,
                    "bridge": bridge,
                }
                conn.execute(
                    "INSERT INTO port_mappings (container_id, proto, host_ip, host_port,"
                    " container_port, container_ip, bridge) VALUES (:container_id, :proto,"
                    " :host_ip, :host_port, :container_port, :container_ip, :bridge)",
                    doc,
                )
                made.append(PortMapping(doc))
        return made


def _clashes(taken: set[tuple[str, str, int]], proto: str, host_ip: str, port: int) -> bool:
    """0.0.0.0 clashes with every address on the same port, as the kernel's bind does."""
    for t_proto, t_ip, t_port in taken:
        if t_proto == proto and t_port == port and (not host_ip or not t_ip or t_ip == host_ip):
            return True
    return False


def _free_port(proto: str, host_ip: str, taken: set[tuple[str, str, int]]) -> int:
    from dockyard.network.ports import bindable

    low, high = EPHEMERAL_PORTS
    start = low + int.from_bytes(os.urandom(2), "big") % (high - low)
    for offset in range(high - low + 1):
        port = low + (start - low + offset) % (high - low + 1)
        if not _clashes(taken, proto, host_ip, port) and bindable(proto, host_ip, port):
            return port
    raise PortInUse(f"no free host port for {proto} on {host_ip or '0.0.0.0'}")


def veth_name(container_id: str, network_id: str) -> str:
    """The host end of a container's veth pair on a network (<= 15 characters): both
    ids are random hex, so their prefixes name the pair (no hashlib: 2 ms to import)."""
    return f"veth{container_id[:6]}{network_id[:4]}"


def mac_of(address: str) -> str:
    """Docker's: 02:42 followed by the IPv4 address's four bytes."""
    octets = [int(part) for part in address.split(".")]
    return "02:42:" + ":".join(f"{o:02x}" for o in octets)


def _valid_name(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name))


def _parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise NetworkError(f"invalid subnet {text}: give an IPv4 CIDR like 10.10.0.0/24") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise NetworkError(f"invalid subnet {text}: only IPv4 networks are supported")
    if net.prefixlen > 30:
        raise NetworkError(f"subnet {text} is too small: use /30 or larger")
    return net


def _parse_gateway(gateway: str | None, net: ipaddress.IPv4Network) -> str:
    if not gateway:
        return str(next(net.hosts()))
    try:
        address = ipaddress.ip_address(gateway)
    except ValueError:
        raise NetworkError(f"invalid gateway address {gateway}") from None
    if address not in net or address in (net.network_address, net.broadcast_address):
        raise NetworkError(f"gateway {gateway} is not a host address of subnet {net}")
    return str(address)


def _parse_range(ip_range: str, net: ipaddress.IPv4Network) -> str:
    try:
        rng = ipaddress.ip_network(ip_range, strict=False)
    except ValueError:
        raise NetworkError(f"invalid --ip-range {ip_range}") from None
    if not rng.subnet_of(net):  # type: ignore[arg-type]
        raise NetworkError(f"--ip-range {ip_range} is not inside subnet {net}")
    return str(rng)


def _free_subnet(taken: list[Any], pool_text: str = USER_POOL) -> ipaddress.IPv4Network:
    pool = ipaddress.IPv4Network(pool_text)
    for candidate in pool.subnets(new_prefix=USER_PREFIX):
        if not any(candidate.overlaps(other) for other in taken):
            return candidate
    raise NetworkError(f"no free /{USER_PREFIX} left in {pool_text}: pass --subnet")


def root_of(conn: sqlite3.Connection) -> str:
    """The state root a metadata connection belongs to (the DB file's directory)."""
    return os.path.dirname(conn.execute("PRAGMA database_list").fetchone()[2])


def root_tag(root: str) -> str:
    """ "" for the default root; else 8 hex digits naming `root` in bridges and tables."""
    import hashlib

    real = os.path.realpath(root)
    if real == DEFAULT_ROOT:
        return ""
    return hashlib.sha256(real.encode()).hexdigest()[:8]


def table_name(root: str) -> str:
    """The root's own nft table (`ip dockyard` for the default root)."""
    tag = root_tag(root)
    return f"dockyard-{tag}" if tag else "dockyard"


def _host_networks() -> list[Any]:
    """IPv4 networks the host routes already (/proc/net/route), but not the default route."""
    nets = []
    try:
        with open("/proc/net/route") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] == "00000000":
            continue
        dest = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        try:
            nets.append(ipaddress.ip_network(f"{dest}/{mask}", strict=False))
        except ValueError:
            continue
    return nets
