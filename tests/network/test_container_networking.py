"""Container networking end to end, through the `dockyard` CLI, for real (root).

Each network mode from inside a container; published ports (TCP and UDP, from
127.0.0.1 and from another network namespace, bound to one address, ranges,
-P and what `port`, `ps` and `inspect` show); names and aliases on a user
network; isolation and internal networks; hairpin; connect/disconnect of a
running container; nginx. Leaks, port clashes, stop/start and repair are in
test_network_lifecycle.py.

busybox's wget/ping/nslookup are no use here (static NSS): clients are `nc`
with raw HTTP, or the debian image (`getent hosts`, bash's /dev/tcp).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import urllib.request

import pytest

from tests.network import netlab
from tests.network.conftest import NetDockyard
from tests.network.netlab import HTTPD, PAGE, UDP_ECHO, Peer

# A client in a busybox container: GET / from $1:$2, the response on stdout.
NC_GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"
# The same from bash in the debian image, by name (its resolver: /etc/hosts, then DNS).
BASH_GET = (
    "exec 3<>/dev/tcp/{host}/{port} && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
)


def start_httpd(dy: NetDockyard, name: str, *flags: str) -> str:
    """A busybox web server container serving PAGE on port 80; its address (first network)."""
    dy("run", "-d", "--name", name, *flags, "busybox", "sh", "-c", HTTPD)
    return dy.ip_of(name)


def nc_get(dy: NetDockyard, host: str, port: int = 80, *flags: str) -> str:
    """GET / from a throwaway busybox container (flags: its network…), "" on failure."""
    script = NC_GET.format(host=host, port=port)
    return dy("run", "--rm", *flags, "busybox", "sh", "-c", script, check=False).stdout


def reaches(dy: NetDockyard, host: str, *flags: str, tries: int = 20) -> bool:
    """Whether a container started with `flags` gets PAGE from host:80 (a few tries:
    the server may still be starting)."""
    return any(PAGE in nc_get(dy, host, 80, *flags) for _ in range(tries))


# ------------------------------------------------------------------ network modes


def test_default_bridge(dy: NetDockyard) -> None:
    """A root's default network: its own bridge (10.77.0.0/16 for /var/lib/dockyard,
    a /24 of 10.79.0.0/16 for any other root, as here)."""
    out = dy(
        "run", "--rm", "--hostname", "box1", "busybox", "sh", "-c",
        "ip -o -4 addr show eth0; echo ---; ip route; echo ---; cat /etc/hosts; echo ---;"
        " cat /etc/resolv.conf; echo ---; hostname",
    ).stdout  # fmt: skip
    addr, routes, hosts, resolv, hostname = out.split("---\n")
    address, prefix = addr.split("inet ")[1].split()[0].split("/")
    net = dy.inspect_network("bridge")
    subnet = ipaddress.IPv4Network(str(net["subnet"]))
    assert subnet.subnet_of(ipaddress.IPv4Network("10.79.0.0/16"))
    assert ipaddress.ip_address(address) in subnet and int(prefix) == subnet.prefixlen
    assert f"default via {net['gateway']} dev eth0" in routes
    assert str(net["bridge"]).startswith("dy0-")
    assert f"{address}\tbox1" in hosts.splitlines()
    assert "127.0.0.1\tlocalhost" in hosts.splitlines()
    servers = [ln.split()[1] for ln in resolv.splitlines() if ln.startswith("nameserver")]
    assert servers and not [s for s in servers if s.startswith("127.")]
    assert hostname.strip() == "box1"


@pytest.mark.parametrize("static", [False, True], ids=["ipam", "--ip"])
def test_user_network(dy: NetDockyard, static: bool) -> None:
    net = dy.network("front")
    subnet = ipaddress.IPv4Network(str(net["subnet"]))
    wanted = str(subnet.network_address + 50)
    flags = ["--ip", wanted] if static else []
    out = dy(
        "run", "--rm", "--name", "u1", "--network", "front", *flags, "busybox", "sh", "-c",
        "ip -o -4 addr show eth0; ip route; cat /etc/resolv.conf /etc/hosts",
    ).stdout  # fmt: skip
    address = out.split("inet ")[1].split("/")[0]
    assert subnet.subnet_of(ipaddress.IPv4Network("10.78.0.0/16"))
    assert ipaddress.ip_address(address) in subnet
    assert (address == wanted) == static
    assert f"{address}\t" in out  # /etc/hosts has it
    assert f"default via {net['gateway']} dev eth0" in out
    assert f"nameserver {net['gateway']}" in out  # the embedded DNS server
    assert os.path.exists(f"/sys/class/net/{net['bridge']}")


def test_network_none_has_only_loopback(dy: NetDockyard) -> None:
    out = dy("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link").stdout
    names = [line.split(":")[1].strip() for line in out.splitlines()]
    assert names == ["lo"]
    assert "<LOOPBACK,UP," in out


def test_network_host_sees_the_host(dy: NetDockyard, peer: Peer) -> None:
    out = dy("run", "--rm", "--network", "host", "busybox", "sh", "-c", "ip -o link; hostname")
    lines = out.stdout.splitlines()
    names = {line.split(":")[1].strip().split("@")[0] for line in lines[:-1]}
    assert {"lo", peer.host_if} <= names  # the link the test made on the host, seen inside
    assert lines[-1] == socket.gethostname()


def test_network_container_shares_the_other_s_namespace(dy: NetDockyard) -> None:
    dy("run", "-d", "--name", "first", "busybox", "sleep", "60")
    address = dy.ip_of("first")
    out = dy("run", "--rm", "--network", "container:first", "busybox", "ip", "-o", "-4", "addr")
    assert f"inet {address}/" in out.stdout
    assert dy("inspect", "-f", "{{.HostConfig.NetworkMode}}", "first").stdout.strip() == "bridge"


# ------------------------------------------------------------------ published ports


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("source", ["loopback", "peer"])
def test_publish_reaches_the_container(
    dy: NetDockyard, debian: str, peer: Peer, proto: str, source: str
) -> None:
    port = netlab.free_port()
    if proto == "tcp":
        start_httpd(dy, "srv", "-p", f"{port}:80")
    else:
        dy("run", "-d", "--name", "srv", "-p", f"{port}:5353/udp", debian, "perl", "-e", UDP_ECHO)
    host = "127.0.0.1" if source == "loopback" else peer.host_ip

    def ask() -> str:
        if proto == "tcp":
            return netlab.http_get_eventually(host, port)
        return netlab.udp_ask(host, port, b"ping", timeout=5, tries=10).decode()

    answer = ask() if source == "loopback" else peer.run(ask)
    assert (PAGE in answer) if proto == "tcp" else (answer == "echo:ping"), answer


@pytest.mark.parametrize("bind", ["loopback", "peer-link"])
def test_publish_on_one_host_address(dy: NetDockyard, peer: Peer, bind: str) -> None:
    port = netlab.free_port()
    address = "127.0.0.1" if bind == "loopback" else peer.host_ip
    start_httpd(dy, "srv", "-p", f"{address}:{port}:80")
    assert dy("port", "srv").stdout == f"80/tcp -> {address}:{port}\n"

    def get(host: str) -> str:
        return netlab.http_get_eventually(host, port)

    # Where it is published answers (once the server listens); the other is refused at once.
    if bind == "loopback":
        assert PAGE in get("127.0.0.1")
        assert peer.run(lambda: netlab.http_get(peer.host_ip, port)) == ""
    else:
        assert PAGE in peer.run(lambda: get(peer.host_ip))
        assert netlab.http_get("127.0.0.1", port) == ""


def test_publish_a_range(dy: NetDockyard) -> None:
    first = netlab.free_ports(3)
    servers = " & ".join(f"httpd -f -p {p} -h /w" for p in (80, 81, 82))
    serve = f"mkdir -p /w && echo {PAGE} > /w/index.html && {{ {servers} & }}; " + (
        "trap 'exit 0' TERM; wait"
    )
    dy("run", "-d", "--name", "r", "-p", f"{first}-{first + 2}:80-82", "busybox", "sh", "-c", serve)
    assert dy("port", "r").stdout.splitlines() == [
        f"{80 + i}/tcp -> 0.0.0.0:{first + i}" for i in range(3)
    ]
    for i in range(3):
        assert PAGE in netlab.http_get_eventually("127.0.0.1", first + i)


def test_publish_all_and_what_port_ps_inspect_show(dy: NetDockyard) -> None:
    start_httpd(dy, "pa", "-P", "--expose", "80", "--expose", "7000/udp")
    lines = dy("port", "pa").stdout.splitlines()
    mapped = dict(line.split(" -> ") for line in lines)
    assert set(mapped) == {"80/tcp", "7000/udp"}
    host_ip, _, host_port = mapped["80/tcp"].partition(":")
    port = int(host_port)
    assert host_ip == "0.0.0.0" and 32768 <= port <= 60999
    assert dy("port", "pa", "80").stdout.strip() == f"0.0.0.0:{port}"
    assert PAGE in netlab.http_get_eventually("127.0.0.1", port)
    ports_column = dy("ps", "-f", "name=pa", "--format", "{{.Ports}}").stdout
    assert f"0.0.0.0:{port}->80/tcp" in ports_column
    settings = json.loads(dy("inspect", "-f", "{{json .NetworkSettings.Ports}}", "pa").stdout)
    assert settings["80/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(port)}]
    assert settings["7000/udp"][0]["HostPort"] == mapped["7000/udp"].split(":")[1]
    out = dy("port", "pa", "9999", check=False)
    assert out.returncode != 0 and "No public port '9999/tcp'" in out.stderr


# ------------------------------------------------------------------ names


def test_names_and_aliases_resolve_on_a_user_network(dy: NetDockyard, debian: str) -> None:
    dy.network("app")
    address = start_httpd(dy, "web", "--network", "app", "--network-alias", "frontend")
    script = "getent hosts web frontend; " + "; ".join(
        BASH_GET.format(host=name, port=80) for name in ("web", "frontend")
    )
    out = ""
    for _ in range(20):  # until httpd listens
        out = dy(
            "run", "--rm", "--network", "app", debian, "bash", "-c", script, check=False
        ).stdout
        if out.count(PAGE) == 2:
            break
    resolved = [line.split() for line in out.splitlines() if line.startswith("10.")]
    assert [address, "web"] in resolved and [address, "frontend"] in resolved
    assert out.count(PAGE) == 2


def test_names_on_another_network_do_not_resolve(dy: NetDockyard, debian: str) -> None:
    dy.network("one")
    # Internal: the DNS server answers a name it does not know there itself (SERVFAIL)
    # instead of asking the host's resolvers, so no query leaves the host.
    dy.network("two", "--internal")
    start_httpd(dy, "hidden", "--network", "one")
    out = dy("run", "--rm", "--network", "two", debian, "getent", "hosts", "hidden", check=False)
    assert out.returncode == 2 and out.stdout == ""
    # …while on its own network it does (so the lookup above really asked the server)
    out = dy("run", "--rm", "--network", "one", debian, "getent", "hosts", "hidden")
    assert out.stdout.split()[1] == "hidden"


# ------------------------------------------------------------------ isolation


@pytest.mark.parametrize(
    ("server_net", "client_net"),
    [("one", "two"), ("bridge", "one"), ("one", "bridge")],
    ids=["user-user", "default-user", "user-default"],
)
def test_networks_are_isolated(dy: NetDockyard, server_net: str, client_net: str) -> None:
    for name in {server_net, client_net} - {"bridge"}:
        dy.network(name)
    address = start_httpd(dy, "srv", "--network", server_net)
    assert reaches(dy, address, "--network", server_net)  # the server works…
    assert not reaches(dy, address, "--network", client_net, tries=1)  # …but not from there


@pytest.mark.parametrize("target", ["host-link", "peer"])
def test_internal_network_works_inside_and_has_no_way_out(
    dy: NetDockyard, peer: Peer, target: str
) -> None:
    dy.network("inner", "--internal")
    dy.network("outer")
    address = start_httpd(dy, "srv", "--network", "inner")
    assert reaches(dy, address, "--network", "inner")
    port = netlab.free_port()
    # A server at the host's end of the peer's link, or inside the peer's namespace.
    where = peer.host_ip if target == "host-link" else peer.peer_ip
    if target == "host-link":
        listener = netlab.TcpListener(where, port)
    else:
        listener = peer.run(lambda: netlab.TcpListener(where, port))
    try:

        def seen(network: str) -> bool:
            return PAGE in nc_get(dy, where, port, "--network", network)

        assert seen("outer")  # a normal network gets there (so the test can tell)
        assert not seen("inner")
    finally:
        listener.close()
    out = dy("run", "--rm", "--network", "inner", "busybox", "ip", "route").stdout
    assert "default" not in out


@pytest.mark.parametrize(
    ("network", "client"),
    [
        ("bridge", "itself"),  # hairpin
        ("user", "itself"),
        ("bridge", "same-network"),
        ("user", "other-network"),  # allowed through a host address, as Docker's proxy does
    ],
)
def test_published_port_via_the_host_address(
    dy: NetDockyard, peer: Peer, network: str, client: str
) -> None:
    dy.network("user")
    port = netlab.free_port()
    start_httpd(dy, "hp", "--network", network, "-p", f"{port}:80")
    assert PAGE in netlab.http_get_eventually("127.0.0.1", port)
    get = NC_GET.format(host=peer.host_ip, port=port)  # the host's address on the peer link
    if client == "itself":
        out = dy("exec", "hp", "sh", "-c", get).stdout
    else:
        other = {"same-network": network, "other-network": "bridge"}[client]
        out = nc_get(dy, peer.host_ip, port, "--network", other)
    assert PAGE in out


# ------------------------------------------------------------------ connect / disconnect


def test_connect_and_disconnect_a_running_container(dy: NetDockyard, debian: str) -> None:
    net = dy.network("extra", "--internal")  # internal: names unknown there are not forwarded
    start_httpd(dy, "c1")
    assert "eth1" not in dy("exec", "c1", "ip", "-o", "link").stdout
    dy("network", "connect", "--alias", "c1alias", "extra", "c1")
    address = dy.ip_of("c1", "extra")
    assert ipaddress.ip_address(address) in ipaddress.ip_network(str(net["subnet"]))
    out = dy("exec", "c1", "ip", "-o", "-4", "addr", "show", "eth1").stdout
    assert f"inet {address}/24" in out
    assert reaches(dy, address, "--network", "extra")
    assert len(netlab.db_rows(dy.root, "endpoints")) == 2
    lookup = ("run", "--rm", "--network", "extra", debian, "getent", "hosts", "c1", "c1alias")
    resolved = [line.split() for line in dy(*lookup).stdout.splitlines()]
    assert resolved == [[address, "c1"], [address, "c1alias"]]
    dy("network", "disconnect", "extra", "c1")
    assert "eth1" not in dy("exec", "c1", "ip", "-o", "link").stdout
    assert not reaches(dy, address, "--network", "extra", tries=1)
    assert "extra" not in dy("inspect", "-f", "{{json .NetworkSettings.Networks}}", "c1").stdout
    assert len(netlab.db_rows(dy.root, "endpoints")) == 1
    assert dy(*lookup, check=False).returncode == 2  # its names there are gone too
    assert reaches(dy, dy.ip_of("c1"))  # still on the default bridge


# ------------------------------------------------------------------ nginx


def test_nginx_welcome_page_and_access_log(dy: NetDockyard, nginx: str) -> None:
    port = netlab.free_port()
    dy("run", "-d", "--name", "ngx", "-p", f"{port}:80", nginx)
    body = ""

    def answered() -> bool:
        nonlocal body
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as response:
                body = response.read().decode()
        except OSError:
            return False
        return True

    assert netlab.wait_until(answered, 20, step=0.2)
    assert "Welcome to nginx!" in body
    assert netlab.wait_until(lambda: '"GET / HTTP/1.1" 200' in dy("logs", "ngx").stdout, 10)
