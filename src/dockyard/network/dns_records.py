"""What the DNS server of user-defined networks knows: names per gateway, upstreams.

Pure data, no dnspython: `load_views(conn)` reads the networks and endpoints
tables into one `NetworkView` per gateway address (the address the server
listens on for that network), `Records` keeps them fresh (SQLite's
`PRAGMA data_version` says when another connection committed), and
`read_resolv_conf` reads the host's nameservers and search domains.

The default network `bridge` has no container DNS (as in Docker): its
gateway is never in the listen set, so its containers' names resolve nowhere.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import sqlite3

DEFAULT_NETWORK = "bridge"
ID_PREFIX = 12  # `docker ps`'s short id, which Docker's DNS also answers to

_QUERY = """
SELECT n.id AS network_id, n.name AS network, n.gateway, n.internal,
       e.ip, e.aliases, e.container_id, c.name AS container_name
FROM networks n
JOIN endpoints e ON e.network_id = n.id
LEFT JOIN containers c ON c.id = e.container_id
WHERE n.name != ?
ORDER BY e.created, e.container_id
"""


def normalize(name: str) -> str:
    """A name as looked up: lower case, no trailing dot."""
    return name.rstrip(".").lower()


def bare_ip(value: str) -> str:
    """`10.0.0.2` from `10.0.0.2` or `10.0.0.2/24`, in the canonical text form."""
    return str(ipaddress.ip_address(value.split("/", 1)[0]))


class NetworkView:
    """One user-defined network as its DNS server sees it (the one on `gateway`)."""

    __slots__ = ("gateway", "internal", "name", "names", "network_id", "ptr")

    def __init__(self, network_id: str, name: str, gateway: str, internal: bool) -> None:
        self.network_id = network_id
        self.name = name
        self.gateway = gateway
        self.internal = internal
        self.names: dict[str, list[str]] = {}  # normalized name → addresses, in order
        self.ptr: dict[str, str] = {}  # address → container name

    def add(self, ip: str, container_id: str, container_name: str, aliases: list[str]) -> None:
        labels = [container_name, container_id[:ID_PREFIX], *aliases]
        for label in labels:
            key = normalize(label)
            if not key:
                continue
            addresses = self.names.setdefault(key, [])
            if ip not in addresses:
                addresses.append(ip)
        if container_name:
            self.ptr.setdefault(ip, container_name)

    def lookup(self, qname: str, search: tuple[str, ...] = ()) -> list[str] | None:
        """The addresses of `qname` on this network, or None when it is not one of ours.

        Also finds `web.example.com` as `web` when `example.com` is a search
        domain (the client's resolver appended it: containers get the host's).
        """
        key = normalize(qname)
        found = self.names.get(key)
        if found is not None:
            return found
        for domain in search:
            suffix = "." + domain
            if key.endswith(suffix) and len(key) > len(suffix):
                found = self.names.get(key[: -len(suffix)])
                if found is not None:
                    return found
        return None

    def __repr__(self) -> str:
        return f"NetworkView({self.name!r}, {self.gateway!r}, {len(self.ptr)} endpoints)"


def load_views(conn: sqlite3.Connection) -> dict[str, NetworkView]:
    """gateway address → its network's view, for every user-defined network with endpoints."""
    views: dict[str, NetworkView] = {}
    for row in conn.execute(_QUERY, (DEFAULT_NETWORK,)):
        try:
            gateway = bare_ip(row["gateway"])
            ip = bare_ip(row["ip"])
        except ValueError:
            continue  # not an address: nothing to listen on or answer with
        view = views.get(gateway)
        if view is None:
            view = NetworkView(row["network_id"], row["network"], gateway, bool(row["internal"]))
            views[gateway] = view
        elif view.network_id != row["network_id"]:
            continue  # two networks claim one gateway: the first one wins
        try:
            aliases = [str(a) for a in json.loads(row["aliases"] or "[]")]
        except (ValueError, TypeError):
            aliases = []
        view.add(ip, str(row["container_id"]), str(row["container_name"] or ""), aliases)
    return views


class Records:
    """The views, re-read from the DB whenever another connection committed.

    `current()` costs one `PRAGMA data_version` when nothing changed, so it is
    called on every query: a container that started a moment ago resolves at
    once. Safe to call from several threads.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.version = -1
        self.views: dict[str, NetworkView] = {}

    def current(self) -> dict[str, NetworkView]:
        with self.lock:
            version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
            if version != self.version:
                self.views = load_views(self.conn)
                self.version = version
            return self.views


class ResolvConf:
    """The host's nameservers and search domains (from resolv.conf's `nameserver`,
    `search` and `domain` lines)."""

    __slots__ = ("nameservers", "search")

    def __init__(self, nameservers: tuple[str, ...] = (), search: tuple[str, ...] = ()) -> None:
        self.nameservers = nameservers
        self.search = search

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResolvConf):
            return NotImplemented
        return (self.nameservers, self.search) == (other.nameservers, other.search)

    def __repr__(self) -> str:
        return f"ResolvConf({self.nameservers!r}, {self.search!r})"


def parse_resolv_conf(text: str) -> ResolvConf:
    nameservers: list[str] = []
    search: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        if words[0] == "nameserver":
            try:
                address = str(ipaddress.ip_address(words[1].split("%", 1)[0]))
            except ValueError:
                continue
            if address not in nameservers:
                nameservers.append(address)
        elif words[0] in ("search", "domain"):  # the last of them wins, as in glibc
            search = [d for d in (normalize(w) for w in words[1:]) if d]
    return ResolvConf(tuple(nameservers), tuple(search))


class ResolvWatcher:
    """resolv.conf, read again when its mtime, size or inode changed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: tuple[int, int, int] | None = None
        self.conf = ResolvConf()

    def current(self) -> ResolvConf:
        try:
            st = os.stat(self.path)
        except OSError:
            self.stamp = None
            self.conf = ResolvConf()
            return self.conf
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self.stamp:
            try:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    self.conf = parse_resolv_conf(f.read())
                self.stamp = stamp
            except OSError:
                self.conf = ResolvConf()
        return self.conf
