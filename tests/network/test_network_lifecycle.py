"""Container networking over a container's life, end to end through the CLI (root).

Port clashes (with another container, with a host program) leave nothing
behind; 50 `run --rm` cycles leak nothing; `stop` gives the address and ports
back and `start` takes them again; what a killed monitor leaves is found and
mended by `system check [--repair]`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time

import pytest

from dockyard.network import dns
from dockyard.network.store import veth_name
from tests.network import netlab
from tests.network.conftest import NetDockyard
from tests.network.netlab import HTTPD, PAGE

CYCLES = 50
CYCLES_SECONDS = 120.0  # the bound of the leak loop (it takes 10-30 s here)


def counts(dy: NetDockyard) -> dict[str, object]:
    """What a container's network may leak, as seen from the host and the root.

    Counted for the test's root only (its bridges, its table, its processes and
    their namespaces): other roots on the host come and go meanwhile."""
    bridges = [str(r["bridge"]) for r in netlab.db_rows(dy.root, "networks")]
    processes = netlab.processes_of(dy.root)
    return {
        "veths": len(netlab.veths(bridges)),
        "netns": len(netlab.netns_of(processes)),
        "rules": len(netlab.nft_rules(dy.root)),
        "endpoints": len(netlab.db_rows(dy.root, "endpoints")),
        "ports": len(netlab.db_rows(dy.root, "port_mappings")),
        "processes": len(processes),
    }


def settled(dy: NetDockyard) -> dict[str, object]:
    """counts() once they stop changing (a conntrack flush or an exiting monitor of a
    container that just ended may still be around for a moment)."""
    last = counts(dy)
    for _ in range(30):
        time.sleep(0.3)
        now = counts(dy)
        if now == last:
            break
        last = now
    return last


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 125, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


# ------------------------------------------------------------------ port in use


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_port_taken_by_another_container(dy: NetDockyard, proto: str) -> None:
    port = netlab.free_port()
    dy("run", "-d", "--name", "first", "-p", f"{port}:80/{proto}", "busybox", "sleep", "60")
    before = settled(dy)
    spec = f"{port}:80/{proto}"
    out = dy("run", "-d", "--name", "second", "-p", spec, "busybox", "true", check=False)
    line = one_line_error(out)
    assert f"0.0.0.0:{port}" in line and "already allocated" in line
    assert dy("ps", "-a", "--format", "{{.Names}}").stdout.split() == ["first"]
    assert netlab.wait_until(lambda: counts(dy) == before, 10), (counts(dy), before)
    assert len(netlab.rules_mentioning(dy.root, port)) == 1  # first's DNAT rule only


@pytest.mark.parametrize(
    ("proto", "bind", "publish"),
    [
        ("tcp", "0.0.0.0", "0.0.0.0"),
        ("tcp", "127.0.0.1", "127.0.0.1"),
        ("tcp", "127.0.0.1", "0.0.0.0"),  # a program on one address blocks "all addresses"
        ("tcp", "0.0.0.0", "127.0.0.1"),
        ("udp", "0.0.0.0", "0.0.0.0"),
    ],
)
def test_port_taken_by_a_host_program(dy: NetDockyard, proto: str, bind: str, publish: str) -> None:
    port = netlab.free_port()
    dy("run", "--rm", "busybox", "true")  # the root's bridge and table, made once
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((bind, port))
        if proto == "tcp":
            sock.listen(1)
        before = settled(dy)
        spec = f"{publish}:{port}:80/{proto}"
        out = dy("run", "-d", "--name", "late", "-p", spec, "busybox", "true", check=False)
        line = one_line_error(out)
        assert f":{port} failed" in line and "in use" in line
        assert dy("ps", "-aq").stdout == ""
        assert netlab.wait_until(lambda: counts(dy) == before, 10), (counts(dy), before)
        assert netlab.rules_mentioning(dy.root, port) == []


# ------------------------------------------------------------------ leaks


def test_no_leaks_after_many_runs(dy: NetDockyard) -> None:
    dy.network("loop")
    port = netlab.free_ports(6)  # one for the loop, five for the detached ones
    dy("run", "--rm", "--network", "loop", "busybox", "true")  # bridges, DNS server made
    dns.stop(str(dy.root))
    baseline = settled(dy)
    deadline = time.monotonic() + CYCLES_SECONDS
    for i in range(CYCLES):
        assert time.monotonic() < deadline, f"only {i} of {CYCLES} cycles in {CYCLES_SECONDS}s"
        network = "loop" if i % 2 else "bridge"
        out = dy("run", "--rm", "--network", network, "-p", f"{port}:80", "busybox", "true")
        assert out.returncode == 0
    for i in range(5):
        dy("run", "-d", "--name", f"d{i}", "-p", f"{port + 1 + i}:80", "busybox", "sleep", "60")
    dy("rm", "-f", *[f"d{i}" for i in range(5)])
    dns.stop(str(dy.root))
    assert netlab.wait_until(lambda: counts(dy) == baseline, 10), (counts(dy), baseline)


# ------------------------------------------------------------------ stop / start


def test_stop_releases_the_address_and_ports_and_start_takes_them_again(
    dy: NetDockyard,
) -> None:
    port = netlab.free_port()
    dy("run", "-d", "--name", "a", "-p", f"{port}:80", "busybox", "sh", "-c", HTTPD)
    assert PAGE in netlab.http_get_eventually("127.0.0.1", port)
    dy("stop", "a")
    assert netlab.db_rows(dy.root, "endpoints") == []
    assert netlab.db_rows(dy.root, "port_mappings") == []
    assert dy("port", "a").stdout == ""
    assert dy("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "a").stdout.strip() == ""
    # the port is free at once: another container takes it
    dy("run", "-d", "--name", "b", "-p", f"{port}:80", "busybox", "sh", "-c", HTTPD)
    assert PAGE in netlab.http_get_eventually("127.0.0.1", port)
    dy("rm", "-f", "b")
    dy("start", "a")
    address = dy.ip_of("a")
    assert dy("port", "a").stdout == f"80/tcp -> 0.0.0.0:{port}\n"
    assert PAGE in netlab.http_get_eventually("127.0.0.1", port)
    assert f"inet {address}/" in dy("exec", "a", "ip", "-o", "-4", "addr").stdout


def test_start_gives_back_what_a_killed_run_left(dy: NetDockyard) -> None:
    """A run whose monitor died keeps its rows; the next `start` must not clash with them."""
    port = netlab.free_port()
    dy("run", "-d", "--name", "a", "-p", f"{port}:80", "busybox", "sh", "-c", HTTPD)
    left = {t: netlab.db_rows(dy.root, t) for t in ("endpoints", "port_mappings")}
    dy("stop", "a")
    conn = sqlite3.connect(dy.root / "dockyard.db", timeout=10)
    try:
        with conn:  # put back what a killed monitor would not have released
            for table, rows in left.items():
                for row in rows:
                    keys = ", ".join(row)
                    marks = ", ".join("?" for _ in row)
                    conn.execute(
                        f"INSERT INTO {table} ({keys}) VALUES ({marks})", list(row.values())
                    )
    finally:
        conn.close()
    dy("start", "a")
    assert PAGE in netlab.http_get_eventually("127.0.0.1", port)
    assert len(netlab.db_rows(dy.root, "port_mappings")) == 1
    assert len(netlab.db_rows(dy.root, "endpoints")) == 1


# ------------------------------------------------------------------ crash and repair


def monitor_state(dy: NetDockyard, name: str) -> dict[str, int]:
    cid = dy("inspect", "-f", "{{.Id}}", name).stdout.strip()
    state = json.loads((dy.root / "containers" / cid / "monitor.json").read_text())
    return {"monitor": int(state["monitor_pid"]), "init": int(state["pid"])}


def test_system_check_repairs_what_a_killed_monitor_left(dy: NetDockyard) -> None:
    net = dy.network("crash")
    port = netlab.free_port()
    dy("run", "-d", "--name", "victim", "--network", "crash", "-p", f"{port}:80", "busybox",
       "sh", "-c", HTTPD)  # fmt: skip
    assert PAGE in netlab.http_get_eventually("127.0.0.1", port)
    assert dns.server_pid(str(dy.root))
    pids = monitor_state(dy, "victim")
    os.kill(pids["monitor"], signal.SIGKILL)  # the container runs on without it:
    assert netlab.wait_until(lambda: not os.path.exists(f"/proc/{pids['monitor']}/stat"), 10)
    assert "network:" not in dy("system", "check", check=False).stdout  # nothing to mend yet
    assert PAGE in netlab.http_get_eventually("127.0.0.1", port)
    os.kill(pids["init"], signal.SIGKILL)  # now gone too, and nobody released its network
    assert netlab.wait_until(
        lambda: dy("inspect", "-f", "{{.State.Running}}", "victim").stdout.strip() == "false", 10
    )
    assert len(netlab.db_rows(dy.root, "endpoints")) == 1  # left behind
    assert len(netlab.rules_mentioning(dy.root, port)) == 1
    out = dy("system", "check", check=False)
    assert out.returncode == 1
    assert "network: container" in out.stdout and "(victim) is not running" in out.stdout
    out = dy("system", "check", "--repair")
    assert "(repaired)" in out.stdout
    assert netlab.db_rows(dy.root, "endpoints") == []
    assert netlab.db_rows(dy.root, "port_mappings") == []
    assert netlab.rules_mentioning(dy.root, port) == []
    assert dns.server_pid(str(dy.root)) is None  # nothing left to serve
    assert "ok:" in dy("system", "check").stdout
    # and the container can run again, on its old port
    dy("start", "victim")
    assert PAGE in netlab.http_get_eventually("127.0.0.1", port)
    assert dy.ip_of("victim", "crash").startswith(str(net["subnet"]).rsplit(".", 1)[0])


def test_system_check_finds_a_stray_veth_and_rules_out_of_step(dy: NetDockyard) -> None:
    net = dy.network("stray")
    port = netlab.free_port()
    dy("run", "-d", "--name", "keep", "--network", "stray", "-p", f"{port}:80", "busybox",
       "sleep", "60")  # fmt: skip
    dy("create", "--name", "idle", "--network", "stray", "busybox", "true")
    cid = dy("inspect", "-f", "{{.Id}}", "idle").stdout.strip()
    stray = veth_name(cid, str(net["id"]))  # named as dockyard names it, but no endpoint
    netlab.ip("link", "add", stray, "type", "veth", "peer", "name", f"{stray[:11]}p")
    netlab.ip("link", "set", stray, "master", str(net["bridge"]))
    try:
        # the DNAT rule of keep's port goes missing from the table
        handle = next(
            json.loads(rule)["handle"]
            for rule in netlab.rules_mentioning(dy.root, port)
            if "dnat" in rule
        )
        table = netlab.nft_table(dy.root)
        delete = ["nft", "delete", "rule", "ip", table, "ports", "handle", str(handle)]
        subprocess.run(delete, check=True, timeout=30)
        out = dy("system", "check", check=False)
        assert out.returncode == 1
        assert stray in out.stdout
        assert "out of step" in out.stdout
        dy("system", "check", "--repair")
        assert not os.path.exists(f"/sys/class/net/{stray}")
        assert len(netlab.rules_mentioning(dy.root, port)) == 1
        assert "ok:" in dy("system", "check").stdout
    finally:
        subprocess.run(["ip", "link", "del", stray], capture_output=True, timeout=30)


def test_system_check_reloads_a_flushed_table(dy: NetDockyard) -> None:
    """The table gone (`nft flush ruleset`) while nothing runs: a start would not load it
    again (network.synced says it is loaded), so check reports it and repair loads it."""
    dy("run", "--rm", "busybox", "true")
    assert "ok:" in dy("system", "check").stdout
    loaded = [json.loads(rule)["expr"] for rule in netlab.nft_rules(dy.root)]
    assert loaded
    table = netlab.nft_table(dy.root)
    subprocess.run(["nft", "delete", "table", "ip", table], check=True, timeout=30)
    out = dy("system", "check", check=False)
    assert out.returncode == 1 and f"nft table ip {table} is out of step" in out.stdout
    dy("system", "check", "--repair")
    assert [json.loads(rule)["expr"] for rule in netlab.nft_rules(dy.root)] == loaded
    assert "ok:" in dy("system", "check").stdout


def test_system_check_keeps_the_dns_server_in_step(dy: NetDockyard, debian: str) -> None:
    dy.network("names")
    dy("run", "-d", "--name", "named", "--network", "names", "busybox", "sleep", "60")
    assert dns.server_pid(str(dy.root))
    dns.stop(str(dy.root))  # the server died: names no longer resolve
    out = dy("system", "check", check=False)
    assert out.returncode == 1 and "no DNS server runs" in out.stdout
    assert "(repaired)" in dy("system", "check", "--repair").stdout
    assert dns.server_pid(str(dy.root))
    out = dy("run", "--rm", "--network", "names", debian, "getent", "hosts", "named")
    assert out.stdout.split()[1:] == ["named"]
    dy("rm", "-f", "named")
    dns.ensure_running(str(dy.root))  # a server with nothing to serve (it would idle out)
    out = dy("system", "check", "--repair")
    assert "has nothing to serve (repaired)" in out.stdout
    assert dns.server_pid(str(dy.root)) is None
