"""network/nft.py: the rendered table (pure), real syncs, and real traffic through netns.

Real tests use table names, interfaces and namespaces tagged with this process's
pid and remove them afterwards; traffic goes only to 127.0.0.1 and to addresses
inside the namespaces and bridges made here.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dockyard.network import nft
from dockyard.network.nft import BridgeNet, NftError, PortRule

PID = os.getpid()
TAG = f"{PID:x}"  # <= 6 hex digits: interface names stay within 15 characters
TABLE = f"dytest{PID}"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (nftables, netns)")


def cmds(doc: dict[str, Any], verb: str, kind: str) -> list[dict[str, Any]]:
    return [c[verb][kind] for c in doc["nftables"] if verb in c and kind in c[verb]]


def rules(doc: dict[str, Any], chain: str) -> list[list[dict[str, Any]]]:
    """The expressions of each rule of `chain`, from a rendered or a listed document."""
    out = []
    for c in doc["nftables"]:
        body = c.get("add", c).get("rule")
        if body is not None and body["chain"] == chain:
            out.append(body["expr"])
    return out


def nft_tables() -> list[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def have(tool: str) -> bool:
    return os.access(nft._tool(tool), os.X_OK)


def match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


IIF, OIF = {"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}
SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
DADDR = {"payload": {"protocol": "ip", "field": "daddr"}}
CT_DNAT = match({"ct": {"key": "status"}}, "dnat", "in")
FIB_LOCAL = match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
MASQ = {"masquerade": None}


def prefix(addr: str, length: int) -> dict[str, Any]:
    return {"prefix": {"addr": addr, "len": length}}


def dport(proto: str, port: int) -> dict[str, Any]:
    return match({"payload": {"protocol": proto, "field": "dport"}}, port)


# ---------------------------------------------------------------- render (pure)


def test_render_swaps_the_table_in_one_transaction() -> None:
    doc = nft.render([], [], table="t1")
    json.dumps(doc)  # plain JSON
    first = doc["nftables"][:3]
    tbl = {"family": "ip", "name": "t1"}
    assert first == [{"add": {"table": tbl}}, {"delete": {"table": tbl}}, {"add": {"table": tbl}}]
    for c in doc["nftables"][3:]:
        assert list(c) == ["add"]
        body = next(iter(c["add"].values()))
        assert body["table"] == "t1" and body["family"] == "ip"


def test_render_chains_hooks_and_policies() -> None:
    chains = {c["name"]: c for c in cmds(nft.render([], []), "add", "chain")}
    assert set(chains) == {"prerouting", "output", "ports", "postrouting", "forward"}
    hooks = {n: (c.get("type"), c.get("hook"), c.get("prio")) for n, c in chains.items()}
    assert hooks == {
        "prerouting": ("nat", "prerouting", -100),
        "output": ("nat", "output", -100),
        "ports": (None, None, None),
        "postrouting": ("nat", "postrouting", 100),
        "forward": ("filter", "forward", 0),
    }
    assert all(c["policy"] == "accept" for c in chains.values() if "hook" in c)
    doc = nft.render([], [])
    jump = {"jump": {"target": "ports"}}
    assert rules(doc, "prerouting") == [[FIB_LOCAL, jump]]
    assert rules(doc, "output") == [[FIB_LOCAL, jump]]
    assert rules(doc, "ports") == rules(doc, "postrouting") == rules(doc, "forward") == []


def test_render_port_rules() -> None:
    ports = [
        PortRule("tcp", "", 8080, "10.213.1.2", 80, "br1"),
        PortRule("udp", "127.0.0.1", 5353, "10.213.1.3", 53, "br1"),
        PortRule("sctp", "0.0.0.0", 9000, "10.213.1.4", 9001, "br1"),
        PortRule("tcp", "192.0.2.2", 8080, "10.213.1.5", 81, "br1"),
        PortRule("tcp", "::1", 8443, "10.213.1.2", 443, "br1"),  # IPv6: not in an ip table
    ]
    got = rules(nft.render([], ports), "ports")
    assert got == [
        # one host address before every address, so the more specific rule wins
        [
            match(DADDR, "127.0.0.1"),
            dport("udp", 5353),
            {"dnat": {"addr": "10.213.1.3", "port": 53}},
        ],
        [
            match(DADDR, "192.0.2.2"),
            dport("tcp", 8080),
            {"dnat": {"addr": "10.213.1.5", "port": 81}},
        ],
        [dport("tcp", 8080), {"dnat": {"addr": "10.213.1.2", "port": 80}}],
        [dport("sctp", 9000), {"dnat": {"addr": "10.213.1.4", "port": 9001}}],
    ]


def test_render_postrouting() -> None:
    nets = [BridgeNet("br1", "10.213.1.0/24", False), BridgeNet("br2", "10.213.2.7/24", True)]
    got = rules(nft.render(nets, []), "postrouting")
    net1, net2 = prefix("10.213.1.0", 24), prefix("10.213.2.0", 24)  # host bits cleared
    lo = prefix("127.0.0.0", 8)
    assert got == [
        [match(SADDR, net1), match(OIF, "br1", "!="), MASQ],  # outbound
        [match(OIF, "br1"), match(SADDR, lo), MASQ],  # from 127.0.0.1
        [match(OIF, "br1"), CT_DNAT, match(SADDR, net1), MASQ],  # hairpin
        # internal: no outbound NAT
        [match(OIF, "br2"), match(SADDR, lo), MASQ],
        [match(OIF, "br2"), CT_DNAT, match(SADDR, net2), MASQ],
    ]


def test_render_forward_isolation() -> None:
    nets = [
        BridgeNet("br1", "10.213.1.0/24", False),
        BridgeNet("br2", "10.213.2.0/24", False),
        BridgeNet("br3", "10.213.3.0/24", True),
    ]
    drop = {"drop": None}
    assert rules(nft.render(nets, []), "forward") == [
        [match(IIF, "br3"), match(OIF, "br3", "!="), drop],
        [match(OIF, "br3"), match(IIF, "br3", "!="), drop],
        [CT_DNAT, {"accept": None}],
        [match(IIF, "br1"), match(OIF, {"set": ["br2", "br3"]}), drop],
        [match(IIF, "br2"), match(OIF, {"set": ["br1", "br3"]}), drop],
        [match(IIF, "br3"), match(OIF, {"set": ["br1", "br2"]}), drop],
    ]
    two = rules(nft.render(nets[:2], []), "forward")
    assert two[1:] == [
        [match(IIF, "br1"), match(OIF, "br2"), drop],
        [match(IIF, "br2"), match(OIF, "br1"), drop],
    ]
    assert rules(nft.render(nets[:1], []), "forward") == []  # one network: nothing to isolate


def test_render_ipv6_network_is_isolated_but_not_natted() -> None:
    nets = [BridgeNet("br1", "10.213.1.0/24", False), BridgeNet("br6", "fd00:213::/64", False)]
    doc = nft.render(nets, [])
    assert not any(match(OIF, "br6") in r for r in rules(doc, "postrouting"))
    assert [match(IIF, "br6"), match(OIF, "br1"), {"drop": None}] in rules(doc, "forward")


@pytest.mark.parametrize(
    ("nets", "ports", "message"),
    [
        ([], [PortRule("icmp", "", 1, "10.0.0.2", 1, "br1")], "protocol must be one of"),
        ([], [PortRule("tcp", "", 0, "10.0.0.2", 1, "br1")], "not in 1-65535"),
        ([], [PortRule("tcp", "", 1, "10.0.0.2", 70000, "br1")], "not in 1-65535"),
        ([], [PortRule("tcp", "", 1, "10.0.0.300", 1, "br1")], "not an IPv4 address"),
        ([], [PortRule("tcp", "1.2.3", 1, "10.0.0.2", 1, "br1")], "not an IPv4 address"),
        (
            [],
            [
                PortRule("tcp", "", 1, "10.0.0.2", 1, "b"),
                PortRule("tcp", "0.0.0.0", 1, "10.0.0.3", 1, "b"),
            ],
            "published twice",
        ),
        ([BridgeNet("a-very-long-bridge-name", "10.0.0.0/24", False)], [], "not an interface name"),
        ([BridgeNet("br1", "10.0.0.0", False)], [], "not an IPv4 subnet"),
        ([BridgeNet("br1", "10.0.0.0/33", False)], [], "not an IPv4 subnet"),
        (
            [BridgeNet("br1", "10.0.0.0/24", False), BridgeNet("br1", "10.0.1.0/24", False)],
            [],
            "twice",
        ),
    ],
)
def test_render_rejects_bad_input(
    nets: list[BridgeNet], ports: list[PortRule], message: str
) -> None:
    with pytest.raises(NftError, match=message) as exc:
        nft.render(nets, ports)
    assert "\n" not in str(exc.value)


def test_value_classes() -> None:
    a = BridgeNet("br1", "10.0.0.0/24", True)
    assert a == BridgeNet("br1", "10.0.0.0/24", True) != BridgeNet("br1", "10.0.0.0/24", False)
    assert "internal=True" in repr(a) and len({a, BridgeNet("br1", "10.0.0.0/24", True)}) == 1
    p = PortRule("tcp", "", 80, "10.0.0.2", 8080, "br1")
    assert (
        p
        == PortRule("tcp", "", 80, "10.0.0.2", 8080, "br1")
        != PortRule("udp", "", 80, "10.0.0.2", 8080, "br1")
    )
    assert "host_port=80" in repr(p)


def test_import_is_cheap() -> None:
    heavy = ("typing", "dataclasses", "ctypes", "subprocess", "json", "socket")
    code = f"import sys, dockyard.network.nft; print([m for m in {heavy!r} if m in sys.modules])"
    src = os.path.join(os.path.dirname(nft.__file__), "..", "..")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- real syncs

NETS = [BridgeNet(f"dyq{TAG}{i}", f"10.213.{240 + i}.0/24", i == 4) for i in range(5)]
PORTS = [
    PortRule(
        ("tcp", "udp", "sctp")[j % 3],
        "" if j % 2 else "127.0.0.1",
        41000 + j,
        f"10.213.{240 + j % 4}.{2 + j}",
        80 + j,
        f"dyq{TAG}{j % 4}",
    )
    for j in range(20)
]


def strip(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A listing without handles and metainfo, to compare two listings."""
    out = []
    for c in doc["nftables"]:
        if "metainfo" in c:
            continue
        ((kind, body),) = c.items()
        out.append({kind: {k: v for k, v in body.items() if k != "handle"}})
    return out


@pytest.fixture
def table() -> Iterator[str]:
    try:
        yield TABLE
    finally:
        nft.delete_table(TABLE)
        assert TABLE not in nft_tables()


@needs_root
def test_sync_loads_exactly_the_rendered_table(table: str) -> None:
    assert nft.list_rules(table) == {}
    nft.sync(NETS, PORTS, table)
    listed = nft.list_rules(table)
    doc = nft.render(NETS, PORTS, table)
    for chain in ("prerouting", "output", "ports", "postrouting", "forward"):
        assert rules(listed, chain) == rules(doc, chain), chain
    assert [c["name"] for c in cmds(doc, "add", "chain")] == [
        c["chain"]["name"] for c in listed["nftables"] if "chain" in c
    ]
    assert sum("table" in c for c in listed["nftables"]) == 1

    nft.sync(NETS, PORTS, table)  # idempotent
    assert strip(nft.list_rules(table)) == strip(listed)

    nft.sync(NETS[:2], PORTS[:1], table)  # nothing stale survives
    smaller = nft.list_rules(table)
    assert len(rules(smaller, "ports")) == 1
    assert rules(smaller, "forward") == rules(nft.render(NETS[:2], PORTS[:1], table), "forward")

    nft.delete_table(table)
    assert nft.list_rules(table) == {}
    nft.delete_table(table)  # absent: fine


@needs_root
def test_other_tables_are_left_alone(table: str) -> None:
    other = f"dytestf{PID}"
    script = (
        f"table ip {other} {{ chain forward {{ type filter hook forward priority 5;"
        f' policy accept; iifname "dyq{TAG}0" counter accept; }}; }}'
    )
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
    try:
        before = subprocess.run(
            ["nft", "list", "table", "ip", other], capture_output=True, text=True
        ).stdout
        nft.sync(NETS, PORTS, table)
        nft.sync([], [], table)
        nft.delete_table(table)
        after = subprocess.run(
            ["nft", "list", "table", "ip", other], capture_output=True, text=True
        ).stdout
        assert after == before and "counter" in after
    finally:
        subprocess.run(["nft", "delete", "table", "ip", other], check=False)
    assert other not in nft_tables()


@needs_root
def test_without_libnftables_the_nft_command_is_used(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not have(nft.NFT):
        pytest.skip("no nft command")
    monkeypatch.setattr(nft, "_nft", None)
    monkeypatch.setattr(nft, "LIBRARY", "libnftables-missing.so.0")
    monkeypatch.setattr(nft, "_use_library", True)
    nft.sync(NETS, PORTS, table)
    assert nft._nft is None and nft._use_library is False  # loading failed, the CLI did it
    assert rules(nft.list_rules(table), "ports") == rules(nft.render(NETS, PORTS, table), "ports")
    nft.delete_table(table)
    assert nft.list_rules(table) == {}


@needs_root
def test_errors_are_one_line(table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NftError) as exc:
        nft.sync([], [], "x" * 300)  # longer than the kernel's table names
    assert str(exc.value).startswith("nftables: cannot load table ip xxx")
    assert "\n" not in str(exc.value)
    monkeypatch.setattr(nft, "NFT", "/nonexistent/nft")
    monkeypatch.setattr(nft, "_nft", None)
    monkeypatch.setattr(nft, "_use_library", False)
    with pytest.raises(NftError, match="neither libnftables nor the nft command"):
        nft.sync([], [], table)


@needs_root
def test_forked_child_gets_its_own_context(table: str) -> None:
    nft.sync(NETS[:1], [], table)  # the parent's context exists now
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            nft.sync(NETS, PORTS, table)
            code = 0 if len(rules(nft.list_rules(table), "ports")) == len(PORTS) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(rules(nft.list_rules(table), "ports")) == len(PORTS)  # parent's context still works


@needs_root
def test_sync_time(table: str) -> None:
    nft.sync(NETS, PORTS, table)
    times = []
    for _ in range(30):
        t = time.perf_counter()
        nft.sync(NETS, PORTS, table)
        times.append(time.perf_counter() - t)
    median = sorted(times)[len(times) // 2]
    print(f"sync of {len(NETS)} networks, {len(PORTS)} ports: median {median * 1000:.2f} ms")
    assert median < 0.05


@needs_root
def test_flush_conntrack_arguments() -> None:
    if not have(nft.CONNTRACK):
        pytest.skip("no conntrack command")
    nft.flush_conntrack("10.213.251.77")  # no entries: fine
    nft.flush_conntrack("fd00:213::77")
    with pytest.raises(NftError, match="not an IPv4 address"):
        nft.flush_conntrack("10.213.251")
    with pytest.raises(NftError, match="not an IP address"):
        nft.flush_conntrack("fd00::/64 -x")


def test_flush_conntrack_without_the_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft, "CONNTRACK", "/nonexistent/conntrack")
    with pytest.raises(NftError, match="command not found"):
        nft.flush_conntrack("10.213.251.77")


# ---------------------------------------------------------------- real traffic

SERVER = r"""
import selectors, socket, sys, time
name, port = sys.argv[1], int(sys.argv[2])
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port))
t.listen(32)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", port))
sel = selectors.DefaultSelector()
sel.register(t, selectors.EVENT_READ)
sel.register(u, selectors.EVENT_READ)
print("ready", flush=True)
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=1):
        if key.fileobj is t:
            c, peer = t.accept()
            c.sendall(f"{name} {peer[0]}\n".encode())
            c.close()
        else:
            data, peer = u.recvfrom(100)
            u.sendto(f"{name} {peer[0]}\n".encode(), peer)
"""


def probe(ip: str, port: int, proto: str) -> str:
    """What a server answers ("NAME PEER_IP"), or "FAIL why"; also run inside namespaces."""
    import socket

    try:
        if proto == "tcp":
            with socket.create_connection((ip, port), timeout=1.0) as s:
                return s.recv(200).decode().strip()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            s.sendto(b"ping", (ip, port))
            return s.recv(200).decode().strip()
    except OSError as e:
        return f"FAIL {e}"


MAIN = "print(probe(sys.argv[1], int(sys.argv[2]), sys.argv[3]))"
PROBE = f"import sys\n{inspect.getsource(probe)}{MAIN}\n"

SERVICE_PORT = 8080


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=check)


def free_subnets(count: int) -> list[int]:
    """Third octets of 10.213.X.0/24 subnets that no address or route on the host uses."""
    used = run("ip", "-4", "-o", "addr").stdout + run("ip", "-4", "route").stdout
    start = PID % 200
    found = []
    for i in range(200):
        x = 10 + (start + i) % 200
        if f"10.213.{x}." not in used:
            found.append(x)
            if len(found) == count:
                return found
    pytest.skip("no free 10.213.X.0/24 subnets")


def free_host_port() -> int:
    ruleset = run("nft", "list", "ruleset").stdout
    rng = random.Random(PID)
    for _ in range(100):
        port = rng.randrange(20000, 60000)
        if str(port) not in ruleset:
            return port
    pytest.skip("no free host port")


class Lab:
    """Bridges, namespaces and servers; everything named with TAG, all removed by close()."""

    def __init__(self) -> None:
        self.bridges: list[str] = []
        self.links: list[str] = []
        self.netns: list[str] = []
        self.servers: list[subprocess.Popen[str]] = []
        self.ips: list[str] = []
        self.nets: list[BridgeNet] = []
        self.ports: list[PortRule] = []
        self.ns: dict[str, str] = {}  # "a" -> the namespace's name
        self.ip: dict[str, str] = {}  # "a" -> its address
        self.gw: dict[str, str] = {}  # "1" -> bridge 1's address
        self.host_port = 0

    def bridge(self, suffix: str, octet: int, internal: bool) -> tuple[str, str]:
        name = f"dyb{TAG}{suffix}"
        gw = f"10.213.{octet}.1"
        self.bridges.append(name)
        run("ip", "link", "add", name, "type", "bridge")
        run("ip", "addr", "add", f"{gw}/24", "dev", name)
        run("ip", "link", "set", name, "up")
        with open(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "w") as f:
            f.write("1")  # links.py's job in dockyard proper
        self.nets.append(BridgeNet(name, f"10.213.{octet}.0/24", internal))
        return name, gw

    def namespace(self, suffix: str, ip: str, gw: str, bridge: str | None) -> str:
        ns = f"dytest-{PID}-{suffix}"
        self.ns[suffix], self.ip[suffix] = ns, ip
        host_end = f"dyv{TAG}{suffix}"
        run("ip", "netns", "add", ns)
        self.netns.append(ns)
        run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.links.append(host_end)
        if bridge:
            run("ip", "link", "set", host_end, "master", bridge)
        else:
            run("ip", "addr", "add", f"{gw}/24", "dev", host_end)
        run("ip", "link", "set", host_end, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        if bridge:  # the "outside" namespace gets no route back: only NAT can answer it
            run("ip", "-n", ns, "route", "add", "default", "via", gw)
        self.ips.append(ip)
        return ns

    def serve(self, ns: str, name: str) -> None:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-I",
                "-S",
                "-c",
                SERVER,
                name,
                str(SERVICE_PORT),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.servers.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready and proc.stdout.readline().strip() == "ready", f"server in {ns} did not start"

    def probe(self, ns: str | None, ip: str, port: int = SERVICE_PORT, proto: str = "tcp") -> str:
        if ns is None:
            return probe(ip, port, proto)
        out = run(
            "ip", "netns", "exec", ns, sys.executable, "-I", "-S", "-c", PROBE, ip, str(port), proto
        )
        return out.stdout.strip()

    def sync(self, ports: list[PortRule] | None = None) -> None:
        nft.sync(self.nets, self.ports if ports is None else ports, TABLE)

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait(timeout=10)
        nft.delete_table(TABLE)
        for ns in self.netns:
            run("ip", "netns", "delete", ns, check=False)
        for link in self.links + self.bridges:
            if os.path.exists(f"/sys/class/net/{link}"):
                run("ip", "link", "delete", link, check=False)
        if have(nft.CONNTRACK):
            for ip in self.ips:
                nft.flush_conntrack(ip)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (netns, bridges, nftables)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} command")
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        forward = f.read().strip()
    lab = Lab()
    try:
        if forward != "1":
            with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
                f.write("1")
        o1, o2, o3, o4 = free_subnets(4)
        br1, lab.gw["1"] = lab.bridge("1", o1, internal=False)
        br2, lab.gw["2"] = lab.bridge("2", o2, internal=False)
        br3, lab.gw["3"] = lab.bridge("3", o3, internal=True)
        lab.namespace("a", f"10.213.{o1}.2", lab.gw["1"], br1)
        lab.namespace("b", f"10.213.{o1}.3", lab.gw["1"], br1)
        lab.namespace("c", f"10.213.{o2}.2", lab.gw["2"], br2)
        lab.namespace("d", f"10.213.{o3}.2", lab.gw["3"], br3)  # internal
        lab.namespace("e", f"10.213.{o3}.3", lab.gw["3"], br3)  # internal
        # "x", outside: a plain veth like the host's uplink, with no route back to the bridges
        lab.gw["x"] = f"10.213.{o4}.1"
        lab.namespace("x", f"10.213.{o4}.2", lab.gw["x"], None)
        for name in ("a", "d", "e", "x"):
            lab.serve(lab.ns[name], name)
        lab.host_port = free_host_port()
        lab.ports = [
            PortRule(proto, "", lab.host_port, lab.ip["a"], SERVICE_PORT, br1)
            for proto in ("tcp", "udp")
        ]
        # Without our table, routing alone joins the bridges, so a failure later is our drop.
        if not lab.probe(lab.ns["c"], lab.ip["a"]).startswith("a "):
            pytest.skip("this host does not forward between bridges (another firewall drops it)")
        if not lab.probe(lab.ns["d"], lab.ip["a"]).startswith("a "):
            pytest.skip("this host does not forward between bridges (another firewall drops it)")
        yield lab
    finally:
        lab.close()
        if forward != "1":
            with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
                f.write(forward)
        links = run("ip", "-o", "link").stdout
        assert f"dyb{TAG}" not in links and f"dyv{TAG}" not in links
        assert f"dytest-{PID}-" not in run("ip", "netns", "list").stdout
        assert TABLE not in nft_tables()


@pytest.fixture
def synced(lab: Lab) -> Lab:
    lab.sync()
    return lab


def test_published_port_from_localhost(synced: Lab) -> None:
    lab = synced
    # masqueraded to the bridge's address: 127.0.0.1 can't be answered from a container
    assert lab.probe(None, "127.0.0.1", lab.host_port) == f"a {lab.gw['1']}"
    assert lab.probe(None, "127.0.0.1", lab.host_port, "udp") == f"a {lab.gw['1']}"
    # a host address (here the bridge's own), from the host
    assert lab.probe(None, lab.gw["2"], lab.host_port).startswith("a ")


def test_hairpin_from_the_same_bridge(synced: Lab) -> None:
    lab = synced
    # b reaches a's published port through a host address; a sees the bridge, not b
    # (else a would answer b directly and b would drop the reply)
    assert lab.probe(lab.ns["b"], lab.gw["1"], lab.host_port) == f"a {lab.gw['1']}"
    assert lab.probe(lab.ns["b"], lab.ip["a"]) == f"a {lab.ip['b']}"  # same bridge: direct


def test_networks_are_isolated(synced: Lab) -> None:
    lab = synced
    assert lab.probe(lab.ns["c"], lab.ip["a"]).startswith("FAIL")
    assert lab.probe(lab.ns["c"], lab.ip["d"]).startswith("FAIL")
    # a published port is a host service: reachable from another network through the host
    # (leaving its own bridge, c's connection is masqueraded, as anything outbound is)
    assert lab.probe(lab.ns["c"], lab.gw["2"], lab.host_port) == f"a {lab.gw['1']}"


def test_internal_network_stays_on_its_bridge(synced: Lab) -> None:
    lab = synced
    assert lab.probe(lab.ns["d"], lab.ip["e"]) == f"e {lab.ip['d']}"  # its own bridge: fine
    assert lab.probe(lab.ns["d"], lab.ip["a"]).startswith("FAIL")  # another network
    assert lab.probe(lab.ns["d"], lab.ip["x"]).startswith("FAIL")  # outside
    assert lab.probe(lab.ns["d"], lab.gw["3"], lab.host_port).startswith("FAIL")  # via DNAT
    assert lab.probe(lab.ns["a"], lab.ip["d"]).startswith("FAIL")  # into it
    assert lab.probe(lab.ns["x"], lab.ip["d"]).startswith("FAIL")


def test_outbound_masquerade(synced: Lab) -> None:
    lab = synced
    # x has no route to the bridges: only masquerading (to the host's address) lets it answer
    assert lab.probe(lab.ns["a"], lab.ip["x"]) == f"x {lab.gw['x']}"
    assert lab.probe(lab.ns["c"], lab.ip["x"], proto="udp") == f"x {lab.gw['x']}"


def conntrack_count(*args: str) -> int:
    out = run("conntrack", "-L", *args, check=False)
    return sum(1 for line in out.stdout.splitlines() if line.strip())


def test_flush_conntrack_drops_a_containers_connections(synced: Lab) -> None:
    lab = synced
    if not have(nft.CONNTRACK):
        pytest.skip("no conntrack command")
    a = lab.ip["a"]
    assert lab.probe(None, "127.0.0.1", lab.host_port, "udp").startswith("a ")
    assert lab.probe(lab.ns["b"], a, proto="udp").startswith("a ")
    assert conntrack_count("--reply-src", a) >= 1  # DNATed: a is only in the reply direction
    assert conntrack_count("-d", a) >= 1
    nft.flush_conntrack(a)
    assert conntrack_count("--reply-src", a) == 0
    assert conntrack_count("-d", a) == 0


def test_resync_and_delete_take_rules_away(synced: Lab) -> None:
    lab = synced
    assert lab.probe(None, "127.0.0.1", lab.host_port).startswith("a ")
    lab.sync(ports=[])
    assert lab.probe(None, "127.0.0.1", lab.host_port).startswith("FAIL")  # refused: no DNAT
    assert lab.probe(lab.ns["c"], lab.ip["a"]).startswith("FAIL")  # still isolated
    nft.delete_table(TABLE)
    assert lab.probe(lab.ns["c"], lab.ip["a"]) == f"a {lab.ip['c']}"  # table gone: routed again
    assert lab.probe(lab.ns["a"], lab.ip["x"]).startswith("FAIL")  # and no masquerade
    lab.sync()
    assert lab.probe(None, "127.0.0.1", lab.host_port).startswith("a ")
