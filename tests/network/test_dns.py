"""The DNS server of user-defined networks, for real: addresses on interfaces the
test makes, queries with dnspython, a fake upstream on 127.53.x.y.

Most tests run the serving loop in process (a thread, port 10053); the
`ensure_running` tests start the real detached server on port 53 and query it
from a network namespace wired to a bridge, as a container would.
"""

from __future__ import annotations

import os
import threading
import time

import dns.exception
import dns.flags
import dns.rcode
import dns.reversename
import pytest

from dockyard.network import dns as dnsd
from dockyard.network.dns_records import parse_resolv_conf
from dockyard.network.dns_server import Server
from dockyard.storage import db
from tests.network.dns_lab import (
    UPSTREAM_ADDRESS,
    UPSTREAM_NAME,
    FakeUpstream,
    Netns,
    add_container,
    add_network,
    addresses,
    ask,
    free_loopback,
    free_subnets,
    ip,
    remove_endpoints,
    server_processes,
    wait_until,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (interfaces, port 53)")

PORT = 10053


class Lab:
    """Two networks (gateways on a bridge without ports: no dummy module here), a DB,
    a resolv.conf, an upstream."""

    def __init__(self, tmp_path: Path) -> None:
        self.suffix = suffix = os.urandom(3).hex()
        self.ifname = f"dnsd{suffix}"
        self.a, self.b = free_subnets(2)
        self.gw_a, self.gw_b = f"10.214.{self.a}.1", f"10.214.{self.b}.1"
        ip("link", "add", self.ifname, "type", "bridge")
        self.upstream: FakeUpstream | None = None
        self.conn: sqlite3.Connection | None = None
        try:
            for gateway in (self.gw_a, self.gw_b):
                ip("addr", "add", f"{gateway}/24", "dev", self.ifname)
            ip("link", "set", self.ifname, "up")
            self.upstream = FakeUpstream(free_loopback())
            self.root = str(tmp_path / "root")
            self.conn = db.open_db(self.root)
            self.resolv_conf = str(tmp_path / "resolv.conf")
            self.set_upstream(self.upstream.address)
            self.net_a = add_network(self.conn, "front", self.a, f"dnsb{suffix}a")
            self.net_b = add_network(self.conn, "back", self.b, f"dnsb{suffix}b")
        except BaseException:
            self.close()
            raise

    @property
    def db(self) -> sqlite3.Connection:
        assert self.conn is not None
        return self.conn

    def set_upstream(self, *nameservers: str) -> None:
        lines = ["# test", "search example.com corp.test"]
        lines += [f"nameserver {ns}" for ns in nameservers]
        tmp = self.resolv_conf + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, self.resolv_conf)  # a new inode: the server sees the change

    def close(self) -> None:
        if self.conn is not None:
            try:
                dnsd.stop(self.root)
            finally:
                for pid in server_processes(self.root):
                    os.kill(pid, 9)
                self.conn.close()
        if self.upstream is not None:
            self.upstream.close()
        ip("link", "del", self.ifname)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def served(lab: Lab) -> Iterator[Server]:
    """The serving loop in a thread of this process, on PORT."""
    server = Server(
        lab.root, port=PORT, resolv_conf=lab.resolv_conf, idle_exit=60, forward_timeout=0.5
    )
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.request_stop()
        thread.join(10)
        assert not thread.is_alive()
        server.close()


def listening(server: Server, *gateways: str) -> bool:
    return wait_until(lambda: all(g in server.listeners for g in gateways), 5)


# ------------------------------------------------------------------ pure parts


def test_parse_resolv_conf() -> None:
    conf = parse_resolv_conf(
        "# c\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\n"
        "domain one.test\nsearch Example.COM. corp.test ; x\noptions edns0\n"
        "nameserver 127.0.0.53\n"
    )
    assert conf.nameservers == ("127.0.0.53", "fe80::1")
    assert conf.search == ("example.com", "corp.test")


# ------------------------------------------------------------------ local names


def test_names_short_ids_and_aliases(lab: Lab, served: Server) -> None:
    web = add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2", ["frontend", "www"])
    add_container(lab.db, "api", lab.net_a, f"10.214.{lab.a}.3")
    assert listening(served, lab.gw_a)
    for name in ("web", web[:12], "frontend", "www"):
        response = ask(lab.gw_a, name, port=PORT)
        assert response.rcode() == dns.rcode.NOERROR, name
        assert response.flags & dns.flags.AA
        assert addresses(response) == [f"10.214.{lab.a}.2"], name
    assert addresses(ask(lab.gw_a, "api", port=PORT)) == [f"10.214.{lab.a}.3"]
    # Over TCP too.
    assert addresses(ask(lab.gw_a, "www", port=PORT, tcp=True)) == [f"10.214.{lab.a}.2"]
    # Only the 12-digit prefix is a name (the full id is longer than a DNS label).
    assert ask(lab.gw_a, web[:20], port=PORT).rcode() == dns.rcode.NXDOMAIN


def test_case_trailing_dot_and_search_domains(lab: Lab, served: Server) -> None:
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2", ["Db.Local"])
    assert listening(served, lab.gw_a)
    want = [f"10.214.{lab.a}.2"]
    for name in (
        "WeB",
        "web.",
        "WEB.",
        "db.local",
        "DB.LOCAL.",
        "web.example.com",
        "web.Corp.Test.",
    ):
        response = ask(lab.gw_a, name, port=PORT)
        assert addresses(response) == want, name
        # The answer is for the name asked (0x20 case and all).
        assert response.answer[0].name == response.question[0].name
    # A suffix that is not a search domain of the host: not ours, forwarded.
    assert lab.upstream is not None
    assert ask(lab.gw_a, "web.other.org", port=PORT).rcode() == dns.rcode.NXDOMAIN
    assert "web.other.org." in lab.upstream.seen


def test_aaaa_is_empty_and_ptr_names_the_container(lab: Lab, served: Server) -> None:
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2", ["www"])
    assert listening(served, lab.gw_a)
    for name in ("web", "www"):
        response = ask(lab.gw_a, name, "AAAA", port=PORT)
        assert response.rcode() == dns.rcode.NOERROR
        assert response.answer == []
    reverse = dns.reversename.from_address(f"10.214.{lab.a}.2").to_text()
    response = ask(lab.gw_a, reverse, "PTR", port=PORT)
    assert response.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in response.answer[0]] == ["web."]
    # An address no container has: not ours, forwarded.
    assert lab.upstream is not None
    other = dns.reversename.from_address(f"10.214.{lab.a}.99").to_text()
    assert ask(lab.gw_a, other, "PTR", port=PORT).rcode() == dns.rcode.NXDOMAIN
    assert other.lower() in lab.upstream.seen


def test_shared_alias_answers_every_address(lab: Lab, served: Server) -> None:
    add_container(lab.db, "one", lab.net_a, f"10.214.{lab.a}.2", ["pool"])
    add_container(lab.db, "two", lab.net_a, f"10.214.{lab.a}.3", ["pool"])
    assert listening(served, lab.gw_a)
    assert addresses(ask(lab.gw_a, "pool", port=PORT)) == [
        f"10.214.{lab.a}.2",
        f"10.214.{lab.a}.3",
    ]


def test_networks_are_isolated(lab: Lab, served: Server) -> None:
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2", ["site"])
    add_container(lab.db, "db", lab.net_b, f"10.214.{lab.b}.2", ["store"])
    assert listening(served, lab.gw_a, lab.gw_b)
    assert lab.upstream is not None
    assert addresses(ask(lab.gw_a, "web", port=PORT)) == [f"10.214.{lab.a}.2"]
    assert addresses(ask(lab.gw_b, "db", port=PORT)) == [f"10.214.{lab.b}.2"]
    for gateway, name in ((lab.gw_a, "db"), (lab.gw_a, "store"), (lab.gw_b, "web")):
        response = ask(gateway, name, port=PORT)
        assert response.rcode() == dns.rcode.NXDOMAIN, (gateway, name)  # the upstream's word
        assert f"{name}." in lab.upstream.seen
    reverse = dns.reversename.from_address(f"10.214.{lab.b}.2").to_text()
    assert ask(lab.gw_a, reverse, "PTR", port=PORT).rcode() == dns.rcode.NXDOMAIN


def test_default_bridge_network_gets_no_dns(lab: Lab, served: Server) -> None:
    with db.transaction(lab.db):
        lab.db.execute("UPDATE networks SET name = 'bridge' WHERE id = ?", (lab.net_b,))
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2")
    add_container(lab.db, "db", lab.net_b, f"10.214.{lab.b}.2")
    assert listening(served, lab.gw_a)
    time.sleep(0.6)  # a sync or more later: still not listening on the default bridge
    assert lab.gw_b not in served.listeners


# ------------------------------------------------------------------ forwarding


def test_unknown_names_are_forwarded(lab: Lab, served: Server) -> None:
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2")
    assert listening(served, lab.gw_a)
    for tcp in (False, True):
        response = ask(lab.gw_a, UPSTREAM_NAME, port=PORT, tcp=tcp)
        assert response.rcode() == dns.rcode.NOERROR
        assert addresses(response) == [UPSTREAM_ADDRESS]
    response = ask(lab.gw_a, "nowhere.test", port=PORT)
    assert response.rcode() == dns.rcode.NXDOMAIN


def test_forward_failure_is_servfail(lab: Lab, served: Server) -> None:
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2")
    assert listening(served, lab.gw_a)
    lab.set_upstream(free_loopback())  # nothing listens there: refused at once
    started = time.monotonic()
    assert ask(lab.gw_a, UPSTREAM_NAME, port=PORT).rcode() == dns.rcode.SERVFAIL
    assert ask(lab.gw_a, UPSTREAM_NAME, port=PORT, tcp=True).rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 2
    silent = FakeUpstream(free_loopback(), silent=True)
    try:
        lab.set_upstream(silent.address)  # takes the query, never answers: the timeout
        started = time.monotonic()
        assert ask(lab.gw_a, UPSTREAM_NAME, port=PORT).rcode() == dns.rcode.SERVFAIL
        assert 0.4 < time.monotonic() - started < 2.5
        assert silent.seen
    finally:
        silent.close()
    lab.set_upstream()  # no nameserver at all
    assert ask(lab.gw_a, UPSTREAM_NAME, port=PORT).rcode() == dns.rcode.SERVFAIL
    # Local names still work without upstreams.
    assert addresses(ask(lab.gw_a, "web", port=PORT)) == [f"10.214.{lab.a}.2"]


def test_internal_network_does_not_forward(lab: Lab, served: Server) -> None:
    with db.transaction(lab.db):
        lab.db.execute("UPDATE networks SET internal = 1 WHERE id = ?", (lab.net_a,))
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2")
    assert listening(served, lab.gw_a)
    assert lab.upstream is not None
    assert addresses(ask(lab.gw_a, "web", port=PORT)) == [f"10.214.{lab.a}.2"]
    assert ask(lab.gw_a, UPSTREAM_NAME, port=PORT).rcode() == dns.rcode.SERVFAIL
    assert UPSTREAM_NAME not in lab.upstream.seen


# ------------------------------------------------------------------ freshness


def test_new_endpoint_resolves_at_once(lab: Lab, served: Server) -> None:
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2")
    assert listening(served, lab.gw_a)
    assert ask(lab.gw_a, "late", port=PORT).rcode() == dns.rcode.NXDOMAIN  # forwarded
    add_container(lab.db, "late", lab.net_a, f"10.214.{lab.a}.7")
    assert addresses(ask(lab.gw_a, "late", port=PORT)) == [f"10.214.{lab.a}.7"]  # no wait


def test_listen_set_follows_the_db(lab: Lab, served: Server) -> None:
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2")
    assert listening(served, lab.gw_a)
    assert lab.gw_b not in served.listeners
    add_container(lab.db, "db", lab.net_b, f"10.214.{lab.b}.2")
    assert listening(served, lab.gw_b)  # picked up by the periodic look at the DB
    assert addresses(ask(lab.gw_b, "db", port=PORT)) == [f"10.214.{lab.b}.2"]
    remove_endpoints(lab.db, lab.net_b)
    assert wait_until(lambda: lab.gw_b not in served.listeners, 5)
    with pytest.raises((OSError, dns.exception.Timeout)):  # nothing listens there any more
        ask(lab.gw_b, "db", port=PORT, timeout=1)


def test_reload_request_is_picked_up_at_once(lab: Lab) -> None:
    add_container(lab.db, "db", lab.net_b, f"10.214.{lab.b}.2")
    server = Server(lab.root, port=PORT, resolv_conf=lab.resolv_conf, reload_interval=60)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        assert listening(server, lab.gw_b)  # the first look is done
        add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2")
        assert not wait_until(lambda: lab.gw_a in server.listeners, 0.3)  # no look yet
        server.request_reload()  # what SIGHUP does
        assert listening(server, lab.gw_a)
        assert addresses(ask(lab.gw_a, "web", port=PORT)) == [f"10.214.{lab.a}.2"]
    finally:
        server.request_stop()
        thread.join(10)
        server.close()
    assert not thread.is_alive()


def test_malformed_query_gets_formerr(lab: Lab, served: Server) -> None:
    import socket

    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2")
    assert listening(served, lab.gw_a)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07trunc", (lab.gw_a, PORT))
        reply = sock.recv(512)
    assert reply[:2] == b"\x12\x34"
    assert reply[2] & 0x80 and reply[3] & 0x0F == dns.rcode.FORMERR


# ------------------------------------------------------------------ the real process


@pytest.fixture
def container_ns(lab: Lab) -> Iterator[tuple[str, Netns]]:
    """A bridge with network A's gateway moved onto it, and a netns wired to it."""
    bridge = f"dnsb{lab.suffix}"
    ip("addr", "del", f"{lab.gw_a}/24", "dev", lab.ifname)
    ip("link", "add", bridge, "type", "bridge")
    netns = None
    try:
        ip("addr", "add", f"{lab.gw_a}/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        netns = Netns(f"dnsn{lab.suffix}", bridge, f"10.214.{lab.a}.2", lab.gw_a)
        yield bridge, netns
    finally:
        if netns is not None:
            netns.remove()
        ip("link", "del", bridge)


def test_real_server_on_port_53(lab: Lab, container_ns: tuple[str, Netns]) -> None:
    _, netns = container_ns
    web = add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2", ["www"])
    started = time.monotonic()
    dnsd.ensure_running(lab.root, resolv_conf=lab.resolv_conf, idle_exit=1.0)
    assert time.monotonic() - started < 0.5  # spawned, not waited for
    pid = dnsd.server_pid(lab.root)
    # A second call at once sends SIGHUP to a server still loading: it must live on.
    dnsd.ensure_running(lab.root)
    assert pid is not None and server_processes(lab.root) == [pid]

    def resolves(name: str, gateway: str, want: list[str]) -> bool:
        def query() -> list[str]:
            return addresses(ask(gateway, name, timeout=0.5))

        try:
            return netns.run(query) == want
        except (OSError, dns.exception.Timeout):
            return False

    # From inside the container's namespace, to its gateway on the bridge.
    assert wait_until(lambda: resolves("web", lab.gw_a, [f"10.214.{lab.a}.2"]), 10)
    assert netns.run(lambda: addresses(ask(lab.gw_a, web[:12], tcp=True))) == [f"10.214.{lab.a}.2"]
    assert netns.run(lambda: addresses(ask(lab.gw_a, UPSTREAM_NAME))) == [UPSTREAM_ADDRESS]
    # Again, and in parallel: still the one server.
    children = []
    for _ in range(4):
        child = os.fork()
        if child == 0:  # pragma: no cover - ends in _exit
            code = 1
            try:
                dnsd.ensure_running(lab.root, resolv_conf=lab.resolv_conf, idle_exit=1.0)
                code = 0
            finally:
                os._exit(code)
        children.append(child)
    for child in children:
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
    assert server_processes(lab.root) == [pid]
    # A network that gets its first endpoint later is served too (SIGHUP).
    add_container(lab.db, "db", lab.net_b, f"10.214.{lab.b}.2")
    dnsd.ensure_running(lab.root)
    assert wait_until(lambda: resolves("db", lab.gw_b, [f"10.214.{lab.b}.2"]), 5)
    assert not resolves("db", lab.gw_a, [f"10.214.{lab.b}.2"])
    # No endpoints left: it exits by itself and takes its pid file along.
    remove_endpoints(lab.db)
    assert wait_until(lambda: not server_processes(lab.root), 10)
    assert not os.path.exists(os.path.join(lab.root, dnsd.PID_FILE))
    assert dnsd.server_pid(lab.root) is None
    # And starts again on demand.
    add_container(lab.db, "back", lab.net_a, f"10.214.{lab.a}.5")
    dnsd.ensure_running(lab.root, resolv_conf=lab.resolv_conf)
    assert wait_until(lambda: resolves("back", lab.gw_a, [f"10.214.{lab.a}.5"]), 10)
    new_pid = dnsd.server_pid(lab.root)
    assert new_pid is not None and new_pid != pid


def test_stop(lab: Lab) -> None:
    assert dnsd.stop(lab.root) is False
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2")
    dnsd.ensure_running(lab.root, resolv_conf=lab.resolv_conf, port=PORT)
    assert wait_until(lambda: dnsd.server_pid(lab.root) is not None, 5)
    pid = dnsd.server_pid(lab.root)
    assert pid is not None
    assert wait_until(lambda: _answers(lab.gw_a, "web"), 10)
    assert dnsd.stop(lab.root) is True
    assert not server_processes(lab.root)
    assert not os.path.exists(os.path.join(lab.root, dnsd.PID_FILE))
    assert dnsd.stop(lab.root) is False


def test_server_exits_when_its_root_goes(lab: Lab, tmp_path: Path) -> None:
    add_container(lab.db, "web", lab.net_a, f"10.214.{lab.a}.2")
    dnsd.ensure_running(lab.root, resolv_conf=lab.resolv_conf, port=PORT, idle_exit=60)
    assert wait_until(lambda: _answers(lab.gw_a, "web"), 10)
    os.rename(os.path.join(lab.root, db.DB_NAME), str(tmp_path / "moved.db"))
    assert wait_until(lambda: not server_processes(lab.root), 5)


def _answers(gateway: str, name: str) -> bool:
    try:
        return bool(addresses(ask(gateway, name, port=PORT, timeout=0.3)))
    except (OSError, dns.exception.Timeout):
        return False
