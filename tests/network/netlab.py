"""Helpers of the end-to-end networking tests: a peer namespace, clients, leak counts.

Everything made here has a name or address unique to the test (a random hex
suffix; a 10.215.x.0/24 no route on the host uses) and is removed again;
traffic goes only to 127.0.0.1 and to addresses of the namespaces and links
made here (or of the containers of the test's own root). Every loop is
bounded in count and time.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import TypeVar

    T = TypeVar("T")

CLONE_NEWNET = 0x40000000
HTTP_GET = b"GET / HTTP/1.0\r\n\r\n"
PAGE = "dockyard-e2e"  # the body of the test web servers' index.html

# A busybox web server on port 80 serving PAGE (the shell stays PID 1 so `stop` is quick).
HTTPD = (
    f"mkdir -p /www && echo {PAGE} > /www/index.html && "
    "httpd -f -p 80 -h /www & trap 'exit 0' TERM; wait"
)
# A UDP echo server on port 5353 ("echo:" + the datagram) in the debian image (perl-base).
UDP_ECHO = (
    "use IO::Socket::INET; $s = IO::Socket::INET->new(LocalPort => 5353, Proto => 'udp')"
    ' or die "bind: $!"; $SIG{TERM} = sub { exit 0 }; while (1) { $s->recv($m, 2048);'
    ' $s->send("echo:$m"); }'
)


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    return predicate()


def free_port() -> int:
    """A port in 20000-29999 (below the ephemeral range -P picks from) free for TCP and UDP."""
    for _ in range(200):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 10000
        if all(_bindable(k, "0.0.0.0", port) for k in (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
            return port
    raise RuntimeError("no free port in 20000-29999")


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (for -p ranges)."""
    for _ in range(200):
        first = free_port()
        if all(
            _bindable(kind, "0.0.0.0", first + i)
            for i in range(count)
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        ):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _bindable(kind: int, address: str, port: int) -> bool:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def http_get(host: str, port: int, timeout: float = 3.0) -> str:
    """The raw response of GET / (what was read until the server closed), "" on failure."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(HTTP_GET)
            data = b""
            for _ in range(1000):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace")
    except OSError:
        return ""


def http_get_eventually(host: str, port: int, timeout: float = 10.0) -> str:
    """http_get until it answers with the test page (a server takes a moment to listen)."""
    found = ""

    def answered() -> bool:
        nonlocal found
        found = http_get(host, port, timeout=2.0)
        return PAGE in found

    wait_until(answered, timeout, step=0.1)
    return found


def udp_ask(host: str, port: int, payload: bytes, timeout: float = 2.0, tries: int = 5) -> bytes:
    """Send `payload`, return the first answer ("" after `tries` unanswered datagrams)."""
    for _ in range(tries):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(timeout / tries + 0.2)
        try:
            sock.sendto(payload, (host, port))
            return sock.recv(2048)
        except OSError:
            continue
        finally:
            sock.close()
    return b""


def tcp_refused_or_silent(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when no TCP connection to host:port can be made."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return False
    except OSError:
        return True


def run_in_netns(name: str, fn: Callable[[], T], timeout: float = 30.0) -> T:
    """fn() in a thread that joined network namespace /run/netns/NAME (setns is per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: dict[str, object] = {}

    def body() -> None:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {name}: {os.strerror(err)}")
        except BaseException as exc:
            result["error"] = exc
            return
        finally:
            os.close(fd)
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"netns {name}: call did not end within {timeout}s")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


class TcpListener:
    """A host TCP server on address:port answering every connection with PAGE."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        deadline = time.monotonic() + 300
        while not self.stopping and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            with conn:
                try:
                    conn.sendall(f"HTTP/1.0 200 OK\r\n\r\n{PAGE}\n".encode())
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


# ------------------------------------------------------------------ a peer namespace


def free_lab_octet() -> int:
    """x of a 10.215.x.0/24 that no address or route on the host uses."""
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
        if word.startswith("10.215.") and word.count(".") == 3
    }
    start = int.from_bytes(os.urandom(1), "big")
    for i in range(256):
        octet = (start + i) % 250 + 1
        if octet not in used:
            return octet
    raise RuntimeError("no free 10.215.x.0/24 for the test namespace")


class Peer:
    """A network namespace joined to the host by a veth pair: the host's end has
    `host_ip` (10.215.x.1/24), the namespace's `peer_ip` (.2) and a default route
    via the host. Traffic from here reaches published ports as from another machine."""

    def __init__(self) -> None:
        suffix = os.urandom(3).hex()
        self.name = f"dyte{suffix}"
        self.host_if = f"dyte{suffix}h"
        octet = free_lab_octet()
        self.host_ip = f"10.215.{octet}.1"
        self.peer_ip = f"10.215.{octet}.2"
        ip("netns", "add", self.name)
        try:
            peer_end = ("peer", "name", "eth0", "netns", self.name)
            ip("link", "add", self.host_if, "type", "veth", *peer_end)
            ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
            ip("link", "set", self.host_if, "up")
            ip("-n", self.name, "addr", "add", f"{self.peer_ip}/24", "dev", "eth0")
            ip("-n", self.name, "link", "set", "eth0", "up")
            ip("-n", self.name, "link", "set", "lo", "up")
            ip("-n", self.name, "route", "add", "default", "via", self.host_ip)
        except BaseException:
            self.remove()
            raise

    def run(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """fn() in a thread that joined the namespace (setns is per thread)."""
        return run_in_netns(self.name, fn, timeout)

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


# ------------------------------------------------------------------ what a root holds


def db_rows(root: Path, table: str) -> list[dict[str, object]]:
    """Rows of a table of the root's DB (read-only; [] when there is no DB yet)."""
    path = root / "dockyard.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]
    finally:
        conn.close()


def veths(bridges: Iterable[str] | None = None) -> set[str]:
    """Host interfaces veth* (only those enslaved to one of `bridges`, if given).

    Other roots on the host (other tests, benchmarks) make and delete veths all
    the time: a leak count looks at the test root's bridges only."""
    names = {name for name in os.listdir("/sys/class/net") if name.startswith("veth")}
    if bridges is None:
        return names
    wanted = set(bridges)
    found = set()
    for name in names:
        try:
            master = os.path.basename(os.readlink(f"/sys/class/net/{name}/master"))
        except OSError:
            continue
        if master in wanted:
            found.add(name)
    return found


def netns_of(pids: Iterable[int]) -> set[str]:
    """The network namespaces of `pids` other than the host's (ids like net:[4026…])."""
    host = os.readlink("/proc/self/ns/net")  # the test runs in the host's
    found = set()
    for pid in pids:
        try:
            ns = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if ns != host:
            found.add(ns)
    return found


def processes_of(root: Path) -> list[int]:
    """Processes that belong to `root`: naming it, with an fd, cwd or root in it."""
    mark = str(root)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        base = f"/proc/{entry}"
        try:
            with open(f"{base}/cmdline", "rb") as f:
                if mark.encode() in f.read():
                    found.append(int(entry))
                    continue
            links = [os.readlink(f"{base}/cwd"), os.readlink(f"{base}/root")]
            fds = os.listdir(f"{base}/fd")
            links += [os.readlink(f"{base}/fd/{fd}") for fd in fds[:4096]]
        except OSError:
            continue
        if any(link.startswith(mark) for link in links):
            found.append(int(entry))
    return found


def nft_table(root: Path) -> str:
    """The root's own nft table (`ip dockyard` is the default root's only)."""
    from dockyard.network.store import table_name

    return table_name(str(root))


def nft_rules(root: Path) -> list[str]:
    """The rules of the root's table, one JSON text each ([] without the table)."""
    done = subprocess.run(
        ["nft", "-j", "list", "table", "ip", nft_table(root)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        return []
    return [
        json.dumps(item["rule"], sort_keys=True)
        for item in json.loads(done.stdout)["nftables"]
        if "rule" in item
    ]


def rules_mentioning(root: Path, *needles: object) -> list[str]:
    """Rules of the root's table naming any of `needles` (a bridge, an address, a port…)."""
    texts = [str(n) for n in needles]
    found = []
    for rule in nft_rules(root):
        doc = json.loads(rule)
        values = set(_leaves(doc["expr"]))
        if any(t in values for t in texts):
            found.append(rule)
    return found


def _leaves(node: object) -> list[str]:
    if isinstance(node, dict):
        return [leaf for value in node.values() for leaf in _leaves(value)]
    if isinstance(node, list):
        return [leaf for value in node for leaf in _leaves(value)]
    return [str(node)]
