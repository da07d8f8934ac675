"""Test helpers for the DNS server: interfaces, a netns client, a fake upstream, DB rows.

Everything is made with names and addresses unique to the test (a random hex
suffix; 10.214.x.0/24 subnets and 127.53.x.y upstreams not in use) and removed
again; every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import struct
import subprocess
import threading
import time

import dns.message
import dns.query
import dns.rcode
import dns.rrset

from dockyard.storage import db
from tests.network.netlab import run_in_netns

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    T = TypeVar("T")

UPSTREAM_NAME = "example.test."
UPSTREAM_ADDRESS = "192.0.2.77"


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def free_subnets(count: int) -> list[int]:
    """Third octets x of 10.214.x.0/24 that no address or route on the host uses."""
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    used = {
        int(word.split(".")[2])
        for word in out.split()
        if word.startswith("10.214.") and word.count(".") == 3
    }
    start = int.from_bytes(os.urandom(1), "big")
    picked: list[int] = []
    for i in range(256):
        octet = (start + i) % 250 + 1
        if octet not in used and octet not in picked:
            picked.append(octet)
            if len(picked) == count:
                return picked
    raise RuntimeError("no free 10.214.x.0/24 subnet for the test")


def free_loopback() -> str:
    """A 127.53.x.y address that nothing listens on (port 53, UDP and TCP)."""
    for _ in range(50):
        raw = os.urandom(2)
        address = f"127.53.{raw[0]}.{raw[1] % 250 + 2}"
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((address, 53))
            return address
        except OSError:
            continue
        finally:
            probe.close()
    raise RuntimeError("no free 127.53.x.y address for the fake upstream")


class Netns:
    """A network namespace with one veth into a host bridge: a container's view."""

    def __init__(self, name: str, bridge: str, address: str, gateway: str) -> None:
        self.name = name
        self.host_if = f"{name}h"
        ip("netns", "add", name)
        try:
            ip("link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", name)
            ip("link", "set", self.host_if, "master", bridge, "up")
            ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "route", "add", "default", "via", gateway)
        except BaseException:
            self.remove()
            raise

    def run(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """fn() in a thread that joined the namespace (setns is per thread)."""
        return run_in_netns(self.name, fn, timeout)

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


class FakeUpstream:
    """A resolver on `address`:53 (UDP and TCP): example.test. → 192.0.2.77, else
    NXDOMAIN; with `silent`, it takes queries and never answers."""

    def __init__(self, address: str, silent: bool = False) -> None:
        self.address = address
        self.silent = silent
        self.seen: list[str] = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((address, 53))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((address, 53))
        self.tcp.listen(8)
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        qname = query.question[0].name.to_text().lower()
        self.seen.append(qname)
        response = dns.message.make_response(query, recursion_available=True)
        if qname == UPSTREAM_NAME:
            response.answer.append(
                dns.rrset.from_text_list(query.question[0].name, 30, "IN", "A", [UPSTREAM_ADDRESS])
            )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ)
        sel.register(self.tcp, selectors.EVENT_READ)
        deadline = time.monotonic() + 600
        while not self.stopping and time.monotonic() < deadline:
            for key, _ in sel.select(0.1):
                if key.fileobj is self.udp:
                    wire, peer = self.udp.recvfrom(65535)
                    if not self.silent:
                        self.udp.sendto(self._answer(wire), peer)
                    else:
                        self.seen.append("(silent)")
                else:
                    conn, _ = self.tcp.accept()
                    with conn:
                        conn.settimeout(5)
                        size = struct.unpack(">H", _recv(conn, 2))[0]
                        answer = self._answer(_recv(conn, size))
                        conn.sendall(struct.pack(">H", len(answer)) + answer)
        sel.close()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.udp.close()
        self.tcp.close()


def _recv(conn: socket.socket, size: int) -> bytes:
    data = b""
    for _ in range(1000):
        if len(data) >= size:
            break
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


# ------------------------------------------------------------------ DB rows


def add_network(
    conn: sqlite3.Connection, name: str, subnet_octet: int, bridge: str, internal: bool = False
) -> str:
    network_id = db.new_id()
    with db.transaction(conn):
        conn.execute(
            "INSERT INTO networks (id, name, bridge, subnet, gateway, internal, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                network_id,
                name,
                bridge,
                f"10.214.{subnet_octet}.0/24",
                f"10.214.{subnet_octet}.1",
                int(internal),
                db.now(),
            ),
        )
    return network_id


def add_container(
    conn: sqlite3.Connection,
    name: str,
    network_id: str,
    address: str,
    aliases: Sequence[str] = (),
) -> str:
    container_id = db.new_id()
    with db.transaction(conn):
        conn.execute(
            "INSERT INTO containers (id, name, created) VALUES (?, ?, ?)",
            (container_id, name, db.now()),
        )
        conn.execute(
            "INSERT INTO endpoints (network_id, container_id, ip, mac, aliases, host_ifname,"
            " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                network_id,
                container_id,
                address,
                "02:42:00:00:00:01",
                json.dumps(list(aliases)),
                "veth-test",
                db.now(),
            ),
        )
    return container_id


def remove_endpoints(conn: sqlite3.Connection, network_id: str | None = None) -> None:
    with db.transaction(conn):
        if network_id is None:
            conn.execute("DELETE FROM endpoints")
        else:
            conn.execute("DELETE FROM endpoints WHERE network_id = ?", (network_id,))


# ------------------------------------------------------------------ queries


def ask(
    server: str,
    name: str,
    rdtype: str = "A",
    port: int = 53,
    tcp: bool = False,
    timeout: float = 3.0,
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, server, port=port, timeout=timeout)
    return dns.query.udp(query, server, port=port, timeout=timeout)


def addresses(response: dns.message.Message, rdtype: str = "A") -> list[str]:
    return sorted(
        rdata.to_text()
        for rrset in response.answer
        if rrset.rdtype.name == rdtype
        for rdata in rrset
    )


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    return predicate()


def server_processes(root: str) -> list[int]:
    """Pids of DNS server processes of `root` (by their command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"dockyard.network.dns" in a for a in argv) and root.encode() in argv:
            found.append(int(entry))
    return found
