"""Shared by bench/port_throughput.py and bench/network_setup.py (not a benchmark itself).

- `docker_nat_peer`: Docker for a network benchmark. The dockerd on
  /var/run/docker.sock if one answers (its rules are left alone); else a private
  one under the caller's temp dir (own data root, exec root, socket, pidfile, as
  bench/run_latency.py does) with what `docker run -p` needs: its own bridge
  `dybench0` (made here, with a free private /24), iptables on (its DNAT,
  MASQUERADE and FORWARD rules, through iptables-nft here), the userland proxy
  as Docker defaults it. Afterwards the daemon is stopped and the host put back:
  the bridge deleted, the iptables rules and chains it added (DOCKER,
  DOCKER-USER, DOCKER-ISOLATION-*, its jumps from PREROUTING, OUTPUT, FORWARD
  and its POSTROUTING MASQUERADE) removed, sysctls it changed restored, the host
  paths it made removed; `iptables-save` and `nft -s list ruleset` from before
  and after are compared and any difference is printed as a warning.
- `HostNet.capture`: the host's firewall, links, nft tables and sysctls.
- `remove_root_network`: a dockyard state root's own default bridge and nft
  table (non-default roots get `dy0-<tag>` and `ip dockyard-<tag>`), deleted
  when the benchmark made them.
- `free_port`, `wait_http`.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run_latency import (
    DOCKER,
    DOCKERD,
    DOCKERD_HOST_PATHS,
    SYSTEM_DOCKER_SOCK,
    cleanup_private_dockerd,
    docker_answers,
    mounts_under,
    pids_mentioning,
    remove_created,
    start_dockerd,
    stop_private_dockerd,
)

IP = "/usr/sbin/ip"
DOCKER_BRIDGE = "dybench0"
# Tried in order; the first that overlaps no route or address of the host is used.
SUBNET_CANDIDATES = ("10.231.0.0/24", "10.232.0.0/24", "10.233.0.0/24", "172.31.231.0/24")
IPTABLES_TABLES = ("filter", "nat")
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/bridge/bridge-nf-call-arptables",
)
# DOCKERD_HOST_PATHS plus what it leaves with iptables on; deepest first.
HOST_PATHS = (*DOCKERD_HOST_PATHS, "/etc/docker", "/run/xtables.lock")


def run_quiet(argv: list[str], stdin: str | None = None, timeout: float = 60) -> str:
    """stdout of `argv` ("" when it fails or is missing)."""
    try:
        out = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def must(argv: list[str], timeout: float = 300) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {out.stderr.strip()}")
    return out.stdout


# ---------------------------------------------------------------- the host's state


def _iptables(table: str) -> list[str]:
    """`iptables-save -t TABLE` without comments and counters."""
    lines = []
    for line in run_quiet(["iptables-save", "-t", table]).splitlines():
        if line.startswith("#"):
            continue
        lines.append(re.sub(r" \[\d+:\d+\]$", "", line))
    return lines


def _sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


@dataclass
class HostNet:
    iptables: dict[str, list[str]] = field(default_factory=dict)
    nft: list[str] = field(default_factory=list)
    nft_tables: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    sysctls: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def capture(cls) -> HostNet:
        ruleset = run_quiet(["nft", "-s", "list", "ruleset"])
        return cls(
            iptables={t: _iptables(t) for t in IPTABLES_TABLES},
            nft=[ln for ln in ruleset.splitlines() if not ln.startswith("#")],
            nft_tables=set(run_quiet(["nft", "list", "tables"]).splitlines()),
            links=set(os.listdir("/sys/class/net")),
            sysctls={name: _sysctl(name) for name in SYSCTLS},
        )

    def differences(self, after: HostNet) -> list[str]:
        """What differs, as short diff lines (for a warning)."""
        found: list[str] = []
        for table in IPTABLES_TABLES:
            for line in difflib.unified_diff(
                self.iptables.get(table, []), after.iptables.get(table, []), lineterm="", n=0
            ):
                if not line.startswith(("---", "+++", "@@")):
                    found.append(f"iptables {table}: {line}")
        old_tables, new_tables = _nft_tables(self.nft), _nft_tables(after.nft)
        for name in sorted(old_tables.keys() | new_tables.keys()):
            if name not in new_tables:
                found.append(f"nft: {name} removed")
            elif name not in old_tables:
                found.append(f"nft: {name} added")
            elif old_tables[name] != new_tables[name]:
                changed = [
                    ln
                    for ln in difflib.unified_diff(old_tables[name], new_tables[name], n=0)
                    if ln[:1] in "+-" and not ln.startswith(("---", "+++"))
                ]
                docker = [ln for ln in changed if re.search(rf"DOCKER|{DOCKER_BRIDGE}", ln)]
                mention = f", {len(docker)} of them docker's" if docker else ""
                found.append(f"nft: {name} changed ({len(changed)} lines{mention})")
        for name in sorted(after.links - self.links):
            found.append(f"link: +{name}")
        for name in sorted(self.links - after.links):
            found.append(f"link: -{name}")
        for name, value in self.sysctls.items():
            if after.sysctls.get(name) != value:
                found.append(f"sysctl {name}: {value} -> {after.sysctls.get(name)}")
        return found


def _nft_tables(ruleset: list[str]) -> dict[str, list[str]]:
    """`nft list ruleset` lines by table ("table ip nat": its lines)."""
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in ruleset:
        if line.startswith("table "):
            current = tables.setdefault(line.rstrip(" {"), [])
        else:
            current.append(line)
    return tables


def restore_sysctls(before: HostNet, notes: list[str]) -> None:
    for name, value in before.sysctls.items():
        now = _sysctl(name)
        if value is not None and now is not None and now != value:
            try:
                Path("/proc/sys", name).write_text(value)
                notes.append(f"restored sysctl {name.replace('/', '.')}={value} (was {now})")
            except OSError as err:
                notes.append(f"WARNING: cannot restore {name}={value}: {err}")


def report_host_diff(before: HostNet, what: str, notes: list[str]) -> None:
    diff = before.differences(HostNet.capture())
    if not diff:
        notes.append(f"host network state after {what}: as before (iptables, nft, links, sysctls)")
        return
    ours = [ln for ln in diff if re.search(rf"(?i)docker|{DOCKER_BRIDGE}", ln)]
    if ours:
        notes.append(f"WARNING: {what} left this behind on the host:")
        notes.extend(f"    {line}" for line in ours[:40])
    others = [ln for ln in diff if ln not in ours]
    if others:
        notes.append(
            f"WARNING: host network state differs after {what}, not in anything of docker's"
            " (other processes on this host, e.g. other dockyard roots' dy0-*/dockyard-*,"
            " changed it meanwhile):"
        )
        notes.extend(f"    {line}" for line in others[:20])
        if len(others) > 20:
            notes.append(f"    ... {len(others) - 20} more")


def clean_up_on_signals() -> None:
    """SIGTERM, SIGHUP and SIGINT (even when inherited ignored, as in a background job)
    end the benchmark through its `finally` blocks, so the host is still put back."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)


# ---------------------------------------------------------------- ports, HTTP


def free_port(taken: set[int]) -> int:
    """A TCP port free on every address now (the kernel's pick), not in `taken`."""
    import socket

    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("0.0.0.0", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def wait_http(url: str, timeout: float = 30.0) -> str:
    """The body of GET `url` once it answers 200; SystemExit after `timeout`."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body: bytes = resp.read()
                if resp.status == 200:
                    return body.decode(errors="replace")
                last = f"status {resp.status}"
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout:.0f} s: {last}")


# ---------------------------------------------------------------- dockyard's root network


def root_network(dockyard: list[str]) -> tuple[str | None, str | None]:
    """(bridge, nft table) of a state root's default network; None where unknown."""
    bridge = None
    out = run_quiet([*dockyard, "network", "inspect", "bridge"])
    if out:
        with contextlib.suppress(ValueError, IndexError, AttributeError):
            options = json.loads(out)[0].get("Options") or {}
            bridge = options.get("com.docker.network.bridge.name")
    root = dockyard[dockyard.index("--root") + 1] if "--root" in dockyard else None
    table = None
    if root:
        try:
            from dockyard.network import store

            table = store.table_name(root)
        except (ImportError, AttributeError):
            table = None
    return bridge, table


def remove_root_network(
    bridge: str | None, table: str | None, before: HostNet, notes: list[str]
) -> None:
    """Delete the root's bridge and nft table if they were made during the run
    (never the host's own `dockyard0`/`ip dockyard` if they were there before)."""
    if bridge and bridge not in before.links and os.path.exists(f"/sys/class/net/{bridge}"):
        deadline = time.monotonic() + 10
        while os.listdir(f"/sys/class/net/{bridge}/brif") and time.monotonic() < deadline:
            time.sleep(0.1)  # a monitor still detaching
        ports = os.listdir(f"/sys/class/net/{bridge}/brif")
        if ports:
            notes.append(f"WARNING: bridge {bridge} still has ports {ports}: left in place")
        elif subprocess.run([IP, "link", "del", bridge], capture_output=True).returncode == 0:
            notes.append(f"dockyard: deleted the root's bridge {bridge}")
    if table and f"table ip {table}" not in before.nft_tables:
        present = f"table ip {table}" in run_quiet(["nft", "list", "tables"]).splitlines()
        if present and run_quiet(["nft", "delete", "table", "ip", table]) == "":
            notes.append(f"dockyard: deleted the root's nft table ip {table}")


def cleanup_root(dockyard: list[str], root: Path, before: HostNet, notes: list[str]) -> None:
    """A benchmark's state root: its containers removed, its bridge and nft table
    deleted (when made during the run), its mounts unmounted (the dir goes after)."""
    if not root.exists():
        return
    bridge, table = root_network(dockyard)
    ids = run_quiet([*dockyard, "ps", "-aq"]).split()
    if ids:
        subprocess.run([*dockyard, "rm", "-f", *ids], capture_output=True, check=False)
    remove_root_network(bridge, table, before, notes)
    for point in mounts_under(root):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


# ---------------------------------------------------------------- docker with NAT


@dataclass
class DockerPeer:
    argv: list[str]  # docker -H unix://...
    description: str


def _free_subnet() -> ipaddress.IPv4Network:
    used: list[ipaddress.IPv4Network] = []
    for line in run_quiet([IP, "-4", "-o", "addr", "show"]).splitlines():
        for addr in re.findall(r"inet (\S+)", line):
            used.append(ipaddress.IPv4Network(addr, strict=False))
    for line in run_quiet([IP, "-4", "route", "show", "table", "all"]).splitlines():
        dest = line.split()[0] if line.split() else ""
        if re.fullmatch(r"[\d.]+(/\d+)?", dest):
            used.append(ipaddress.IPv4Network(dest, strict=False))
    for text in SUBNET_CANDIDATES:
        candidate = ipaddress.IPv4Network(text)
        if not any(candidate.overlaps(u) for u in used if u.prefixlen > 0):
            return candidate
    raise SystemExit(f"no free subnet for docker's bridge among {', '.join(SUBNET_CANDIDATES)}")


def _make_bridge(subnet: ipaddress.IPv4Network, notes: list[str]) -> None:
    if os.path.exists(f"/sys/class/net/{DOCKER_BRIDGE}"):
        if pids_mentioning(Path(DOCKER_BRIDGE)):
            raise SystemExit(f"{DOCKER_BRIDGE} is in use by another benchmark's dockerd")
        notes.append(f"docker: removed {DOCKER_BRIDGE} left by an earlier run")
        subprocess.run([IP, "link", "del", DOCKER_BRIDGE], capture_output=True, check=False)
    gateway = f"{next(subnet.hosts())}/{subnet.prefixlen}"
    must([IP, "link", "add", DOCKER_BRIDGE, "type", "bridge"])
    must([IP, "addr", "add", gateway, "dev", DOCKER_BRIDGE])
    must([IP, "link", "set", DOCKER_BRIDGE, "up"])


def _start_dockerd(base: Path, driver: str, userland_proxy: bool) -> subprocess.Popen[bytes] | None:
    network = (
        "--bridge",
        DOCKER_BRIDGE,
        "--iptables=true",
        "--ip6tables=false",
        "--ip-masq=true",
        "--ip-forward=true",
        f"--userland-proxy={'true' if userland_proxy else 'false'}",
    )
    return start_dockerd(base, driver, network, ulimits=False)


def _docker_rule(line: str, bridge: str, subnet: ipaddress.IPv4Network) -> bool:
    """Whether an iptables-save `-A` line is one of docker's (jump to its chains, its
    bridge, or an address in its subnet)."""
    words = line.split()
    if any(w.startswith("DOCKER") for w in words[2:]) or bridge in words:
        return True
    for addr in re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?\b", line):
        with contextlib.suppress(ValueError):
            if ipaddress.IPv4Network(addr, strict=False).subnet_of(subnet):
                return True
    return False


def remove_docker_rules(
    before: HostNet, bridge: str, subnet: ipaddress.IPv4Network, notes: list[str]
) -> None:
    """Take out what dockerd added to iptables (and only that): rules new since
    `before` that are docker's, then its new DOCKER* chains; built-in chain
    policies put back."""
    for table in IPTABLES_TABLES:
        old = before.iptables.get(table, [])
        now = _iptables(table)
        old_chains = {ln.split()[0][1:] for ln in old if ln.startswith(":")}
        chains = [
            ln.split()[0][1:]
            for ln in now
            if ln.startswith(":DOCKER") and ln.split()[0][1:] not in old_chains
        ]
        seen = Counter(old)
        commands: list[str] = []
        for line in now:
            if seen[line]:
                seen[line] -= 1
                continue
            if not line.startswith("-A "):
                continue
            if line.split()[1] in chains:
                continue  # flushed with its chain
            if _docker_rule(line, bridge, subnet):
                commands.append("-D " + line[3:])
        commands += [f"-F {c}" for c in chains] + [f"-X {c}" for c in chains]
        policies = {ln.split()[0][1:]: ln.split()[1] for ln in old if ln.startswith(":")}
        for ln in now:
            name, _, policy = ln[1:].partition(" ")
            if ln.startswith(":") and policy != "-" and policies.get(name, policy) != policy:
                commands.append(f"-P {name} {policies[name]}")
        if not commands:
            continue
        script = f"*{table}\n" + "\n".join(commands) + "\nCOMMIT\n"
        proc = subprocess.run(
            ["iptables-restore", "--noflush"], input=script, capture_output=True, text=True
        )
        if proc.returncode != 0:  # one at a time, so one odd rule does not keep the rest
            for command in commands:
                subprocess.run(
                    ["iptables", "-w", "-t", table, *shlex.split(command)], capture_output=True
                )
        notes.append(
            f"docker: removed {len(commands) - 2 * len(chains)} rule(s) and"
            f" {len(chains)} chain(s) from iptables {table}"
        )


def _kill_proxies(subnet: ipaddress.IPv4Network) -> None:
    """docker-proxy processes of containers in `subnet` a killed dockerd left behind."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith("docker-proxy") or "-container-ip" not in argv:
            continue
        with contextlib.suppress(ValueError, IndexError, ProcessLookupError):
            if ipaddress.IPv4Address(argv[argv.index("-container-ip") + 1]) in subnet:
                os.kill(int(entry), 9)


@contextlib.contextmanager
def docker_nat_peer(
    base: Path, notes: list[str], userland_proxy: bool = True
) -> Iterator[DockerPeer | None]:
    """Docker with -p working: the system dockerd if one answers, else a private one
    with its own bridge and iptables NAT (everything undone after, also on failure)."""
    if not (os.path.exists(DOCKER) and os.path.exists(DOCKERD)):
        notes.append("docker: Debian's docker.io is not installed (make bench-deps)")
        yield None
        return
    if os.path.exists(SYSTEM_DOCKER_SOCK) and docker_answers(f"unix://{SYSTEM_DOCKER_SOCK}"):
        notes.append(f"docker: the running dockerd on {SYSTEM_DOCKER_SOCK} (its rules untouched)")
        yield DockerPeer([DOCKER, "-H", f"unix://{SYSTEM_DOCKER_SOCK}"], "system dockerd")
        return
    private = base / "docker"
    before = HostNet.capture()
    absent = [p for p in HOST_PATHS if not os.path.lexists(p)]
    subnet = _free_subnet()
    proc = None
    try:
        _make_bridge(subnet, notes)
        for driver in ("overlay2", "vfs"):
            proc = _start_dockerd(private, driver, userland_proxy)
            if proc:
                proxy = "userland proxy" if userland_proxy else "no userland proxy"
                description = (
                    f"private dockerd, {driver}, bridge {DOCKER_BRIDGE} {subnet},"
                    f" iptables NAT, {proxy}"
                )
                notes.append(f"docker: {description}")
                break
            cleanup_private_dockerd(private)
        if not proc:
            notes.append("docker: the private dockerd did not start; not measured")
            yield None
            return
        yield DockerPeer([DOCKER, "-H", f"unix://{private / 'docker.sock'}"], description)
    finally:
        stop_private_dockerd(proc, private)
        _kill_proxies(subnet)
        remove_docker_rules(before, DOCKER_BRIDGE, subnet, notes)
        if os.path.exists(f"/sys/class/net/{DOCKER_BRIDGE}"):
            subprocess.run([IP, "link", "del", DOCKER_BRIDGE], capture_output=True, check=False)
        restore_sysctls(before, notes)
        remove_created(absent)
        report_host_diff(before, "docker", notes)
