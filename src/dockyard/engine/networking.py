"""A container's network, from `run` to exit: the engine's side of network/.

- `plan` (create): checks --network/-p/--dns/… and returns the record's
  HostConfig/NetworkingConfig bits, and the bind mounts of the container's own
  /etc/hosts, /etc/hostname and /etc/resolv.conf (files in its directory).
- `prepare` (start): bridges made, addresses handed out, ports published,
  nft rules synced, hosts/resolv.conf written, the DNS server running; returns
  the attachments the monitor makes (`links.attach`) between the runtime's
  create and start, once the container's network namespace exists.
- `release` (exit for good, rm, repair): endpoints and ports dropped, veths
  deleted (they go with the namespace anyway), rules synced, conntrack flushed.

Modes: `bridge` (default), a user-defined network, `none` (own namespace, only
lo), `host`, `container:NAME` (joins that container's namespace at start).
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import sqlite3
    from typing import Any

    from dockyard.engine.spec import RunOptions
    from dockyard.network.store import Network

FALLBACK_DNS = ["8.8.8.8", "8.8.4.4"]  # Docker's, when the host has only loopback resolvers


class NetworkOptionError(ValueError):
    """A network flag that can't work; the message says why."""


def mode_kind(mode: str) -> str:
    """ "none", "host", "container" or "bridge" (the default or a user network)."""
    if mode in ("none", "host"):
        return mode
    if mode.startswith("container:"):
        return "container"
    return "bridge"


def plan(
    conn: sqlite3.Connection,
    opts: RunOptions,
    image_config: dict[str, Any],
    lookup_container: Any,
) -> dict[str, Any]:
    """The record's network settings for `opts` (raises NetworkOptionError/NetworkError)."""
    from dockyard.network.store import NetworkStore

    mode = opts.network or "bridge"
    if mode == "default":
        mode = "bridge"
    kind = mode_kind(mode)
    endpoints: dict[str, Any] = {}
    if kind == "container":
        other = lookup_container(mode.split(":", 1)[1])
        mode = f"container:{other.id}"
        if opts.publish or opts.publish_all:
            raise NetworkOptionError(
                "conflicting options: port publishing and the container type network mode"
            )
        if opts.dns or opts.extra_hosts or opts.hostname:
            raise NetworkOptionError(
                "conflicting options: dns, add-host or hostname and the network mode"
            )
    elif kind == "bridge":
        network = NetworkStore(conn).get(mode)
        if (opts.network_aliases or opts.ip) and not network.user_defined:
            raise NetworkOptionError(
                "network-scoped aliases and --ip are supported only for user-defined networks"
            )
        endpoints[network.name] = {
            "Aliases": list(opts.network_aliases),
            "IPAMConfig": {"IPv4Address": opts.ip} if opts.ip else None,
            "NetworkID": network.id,
        }
    elif opts.network_aliases or opts.ip:
        raise NetworkOptionError(
            "network-scoped aliases and --ip are supported only for user-defined networks"
        )
    bindings: dict[str, list[dict[str, str]]] = {}
    for proto, host_ip, host_port, container_port in opts.publish:
        bindings.setdefault(f"{container_port}/{proto}", []).append(
            {"HostIp": host_ip, "HostPort": str(host_port) if host_port else ""}
        )
    exposed = dict((image_config.get("config") or {}).get("ExposedPorts") or {})
    for key in opts.expose:
        exposed.setdefault(key, {})
    for key in bindings:
        exposed.setdefault(key, {})
    return {
        "NetworkMode": mode,
        "PortBindings": bindings if kind == "bridge" else {},
        "PublishAllPorts": bool(opts.publish_all) and kind == "bridge",
        "ExposedPorts": exposed,
        "Dns": list(opts.dns),
        "DnsSearch": list(opts.dns_search),
        "DnsOptions": list(opts.dns_options),
        "ExtraHosts": list(opts.extra_hosts),
        "EndpointsConfig": endpoints,
    }


def file_mounts(
    container_dir: str, mode: str, other_dir: str | None = None
) -> list[dict[str, Any]]:
    """Bind mounts of the container's hosts, hostname and resolv.conf (the files are
    written now, empty, and filled at start); a `container:` joiner uses the other's."""
    source = other_dir or container_dir
    mounts = []
    for name, dest in (
        ("hosts", "/etc/hosts"),
        ("hostname", "/etc/hostname"),
        ("resolv.conf", "/etc/resolv.conf"),
    ):
        path = os.path.join(source, name)
        if other_dir is None and not os.path.exists(path):
            with open(path, "w"):
                pass
        mounts.append(
            {"destination": dest, "type": "bind", "source": path, "options": ["rbind", "rprivate"]}
        )
    return mounts


# ------------------------------------------------------------------ start


def prepare(root: str, conn: sqlite3.Connection, container: Any) -> list[dict[str, Any]]:
    """Everything before the monitor starts the container; its attachments (none for
    none/host/container modes). On failure, nothing is left allocated."""
    from dockyard.network.store import NetworkStore

    config = container.config
    mode = config.get("NetworkMode") or "none"
    kind = mode_kind(mode)
    hostname = config.get("Hostname") or container.id[:12]
    # A run whose monitor was killed left its addresses and ports behind (nobody
    # released them): give them back first, or its own old ports would clash with
    # the ones it asks for now. (`start` holds the container's start lock and the
    # container is not running: nothing else uses them. Reads only when clean.)
    release(root, conn, container.id)
    if kind == "container":
        _join_container(container, mode.split(":", 1)[1], conn)
        return []
    if kind != "bridge":
        _write_files(container.dir, hostname, [], config, kind, None)
        return []
    store = NetworkStore(conn)
    attachments: list[dict[str, Any]] = []
    try:
        first: Network | None = None
        first_ip = ""
        for index, (name, settings) in enumerate(_endpoint_configs(config).items()):
            network = store.get(settings.get("NetworkID") or name)
            _ensure_bridge(network)
            aliases = [container.name, container.id[:12], *(settings.get("Aliases") or [])]
            wanted_ip = (settings.get("IPAMConfig") or {}).get("IPv4Address")
            endpoint = store.allocate(network, container.id, aliases, wanted_ip)
            if first is None:
                first, first_ip = network, endpoint.ip
            attachments.append(
                {
                    "host_ifname": endpoint.host_ifname,
                    "bridge": network.bridge,
                    "ip": endpoint.ip,
                    "prefixlen": network.prefixlen,
                    "gateway": None if network.internal or index else network.gateway,
                    "mac": endpoint.mac,
                    "container_ifname": f"eth{index}",
                }
            )
        if first is not None:
            wanted = _wanted_ports(config)
            if wanted:
                store.publish(container.id, wanted, first_ip, first.bridge)
        sync_rules(root, conn)
        _write_files(container.dir, hostname, attachments, config, kind, first)
        if first is not None and first.user_defined:
            from dockyard.network import dns

            dns.ensure_running(root)
    except BaseException:
        release(root, conn, container.id)
        raise
    return attachments


def _endpoint_configs(config: dict[str, Any]) -> dict[str, Any]:
    endpoints = dict(config.get("EndpointsConfig") or {})
    if not endpoints:
        endpoints = {config.get("NetworkMode") or "bridge": {}}
    return endpoints


def _ensure_bridge(network: Network) -> None:
    from dockyard.network import links

    links.ensure_bridge(network.bridge, network.gateway, network.prefixlen)


def _wanted_ports(config: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    wanted: list[tuple[str, str, int, int]] = []
    bound = config.get("PortBindings") or {}
    for key, bindings in bound.items():
        port, _, proto = key.partition("/")
        for binding in bindings or [{}]:
            host_port = binding.get("HostPort") or "0"
            wanted.append((proto or "tcp", binding.get("HostIp") or "", int(host_port), int(port)))
    if config.get("PublishAllPorts"):
        for key in config.get("ExposedPorts") or {}:
            if key not in bound:
                port, _, proto = key.partition("/")
                wanted.append((proto or "tcp", "", 0, int(port)))
    return wanted


def _join_container(container: Any, other_id: str, conn: sqlite3.Connection) -> None:
    """Point config.json's network namespace at the other container's, as it runs now."""
    from dockyard.runtime.state import write_atomic

    row = conn.execute("SELECT id FROM containers WHERE id = ?", (other_id,)).fetchone()
    if row is None:
        raise NetworkOptionError(f"cannot join network of a non running container: {other_id[:12]}")
    pid_path = os.path.join(os.path.dirname(container.dir), other_id, "monitor.json")
    pid = 0
    try:
        with open(pid_path) as f:
            doc = json.load(f)
        if doc.get("status") == "running":
            pid = int(doc.get("pid") or 0)
    except (OSError, ValueError):
        pid = 0
    if not pid or not os.path.exists(f"/proc/{pid}/ns/net"):
        raise NetworkOptionError(f"cannot join network of a non running container: {other_id[:12]}")
    path = os.path.join(container.dir, "config.json")
    with open(path) as f:
        spec = json.load(f)
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/proc/{pid}/ns/net"
    write_atomic(path, json.dumps(spec).encode())


def _write_files(
    directory: str,
    hostname: str,
    attachments: list[dict[str, Any]],
    config: dict[str, Any],
    kind: str,
    network: Network | None,
) -> None:
    from dockyard.runtime.state import write_atomic

    if kind == "host":
        try:
            with open("/etc/hosts") as f:
                hosts = f.read()
        except OSError:
            hosts = "127.0.0.1\tlocalhost\n"
    else:
        hosts = (
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n"
            "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
        )
    for entry in config.get("ExtraHosts") or []:
        name, _, address = entry.partition(":")
        hosts += f"{address}\t{name}\n"
    if attachments:
        hosts += f"{attachments[0]['ip']}\t{hostname}\n"
    for name, text in (
        ("hosts", hosts),
        ("hostname", f"{hostname}\n"),
        ("resolv.conf", resolv_conf(config, network)),
    ):
        path = os.path.join(directory, name)
        data = text.encode()
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    continue  # (a restart, or none/host: the same as last time)
        except FileNotFoundError:
            pass
        write_atomic(path, data, durable=False)


def resolv_conf(config: dict[str, Any], network: Network | None) -> str:
    """Docker's: --dns/--dns-search/--dns-option, else the host's; on a user-defined
    network the embedded DNS server (at the gateway) instead of the host's servers."""
    host_servers, host_search, host_options = _host_resolv()
    if config.get("Dns"):
        servers = list(config["Dns"])
    elif network is not None and network.user_defined:
        servers = [network.gateway]
    else:
        servers = [s for s in host_servers if not s.startswith("127.")] or FALLBACK_DNS
    search = config.get("DnsSearch") or host_search
    options = config.get("DnsOptions") or host_options
    lines = [f"nameserver {s}" for s in servers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def _host_resolv() -> tuple[list[str], list[str], list[str]]:
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    try:
        with open("/etc/resolv.conf") as f:
            lines = f.read().splitlines()
    except OSError:
        return servers, search, options
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        if fields[0] == "nameserver" and len(fields) > 1 and ":" not in fields[1]:
            servers.append(fields[1])
        elif fields[0] in ("search", "domain"):
            search = fields[1:]
        elif fields[0] == "options":
            options = fields[1:]
    return servers, search, options


# ------------------------------------------------------------------ rules and release


def sync_rules(root: str, conn: sqlite3.Connection, force: bool = False) -> None:
    """dockyard's nft table made to match the DB (under a lock, so the last sync wins
    with the latest state); `force`: load it even if it should be in step already
    (`system check --repair`: someone may have flushed the ruleset)."""
    import fcntl

    from dockyard.network import nft
    from dockyard.network.store import table_name

    lock = os.open(os.path.join(root, "network.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        nets, ports = _rules_of(conn)
        # Most starts and exits change no rule (no published port, a known network):
        # the table is loaded only when what it should hold differs from the last load.
        # The kernel's boot id is part of what is remembered: after a reboot the table
        # is gone while network.synced (on disk) would still say it is loaded.
        table = table_name(root)
        wanted = _boot_id() + json.dumps(nft.render(nets, ports, table), sort_keys=True)
        if force or _last_synced(root) != wanted:
            nft.sync(nets, ports, table)
            _remember_synced(root, wanted)
    finally:
        os.close(lock)


def _rules_of(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
    """The networks and published ports of the DB, as the nft table renders them."""
    from dockyard.network import nft
    from dockyard.network.store import NetworkStore

    store = NetworkStore(conn)
    nets = [nft.BridgeNet(n.bridge, n.subnet, n.internal) for n in store.all()]
    ports = [
        nft.PortRule(p.proto, p.host_ip, p.host_port, p.container_ip, p.container_port, p.bridge)
        for p in store.ports()
    ]
    return nets, ports


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() + "\n"
    except OSError:
        return ""


def rules_in_step(root: str, conn: sqlite3.Connection) -> bool:
    """Whether the root's nft table holds exactly the chains and rules the DB calls
    for (`system check`: a flushed ruleset, a rule deleted by hand)."""
    from dockyard.network import nft
    from dockyard.network.store import table_name

    nets, ports = _rules_of(conn)
    table = table_name(root)
    wanted = nft.render(nets, ports, table)
    listed = nft.list_rules(table)
    if not listed and not ports and not conn.execute("SELECT 1 FROM endpoints").fetchone():
        # No table while nothing needs it (a reboot, a torn-down root): in step as long
        # as the next start loads it, i.e. network.synced does not say it is loaded.
        return _last_synced(root) != _boot_id() + json.dumps(wanted, sort_keys=True)
    return _chains(listed) == _chains(wanted)


def _chains(doc: dict[str, Any]) -> dict[str, list[Any]]:
    """chain name → its rules' expressions, from a rendered or a listed table."""
    chains: dict[str, list[Any]] = {}
    for command in doc.get("nftables", []):
        body = command.get("add", command)
        if "chain" in body:
            chains.setdefault(body["chain"]["name"], [])
        elif "rule" in body:
            chains.setdefault(body["rule"]["chain"], []).append(body["rule"]["expr"])
    return chains


def _last_synced(root: str) -> str:
    try:
        with open(os.path.join(root, "network.synced")) as f:
            return f.read()
    except OSError:
        return ""


def _remember_synced(root: str, doc: str) -> None:
    from dockyard.runtime.state import write_atomic

    write_atomic(os.path.join(root, "network.synced"), doc.encode(), durable=False)


def teardown_root(root: str, conn: sqlite3.Connection) -> None:
    """Every bridge, the nft table and the DNS server of a state root gone (tests, and
    `system prune`-like clean-ups; the containers must be gone first)."""
    from dockyard.network import dns, links, nft
    from dockyard.network.store import NetworkStore, table_name

    dns.stop(root)
    for network in NetworkStore(conn).all():
        links.delete_bridge(network.bridge)
    nft.delete_table(table_name(root))
    try:
        os.unlink(os.path.join(root, "network.synced"))
    except FileNotFoundError:
        pass


def release(root: str, conn: sqlite3.Connection, container_id: str, detach: bool = True) -> None:
    """The container's addresses and ports back, its veths gone, rules in step.

    `detach=False` (the monitor, its container just gone): leave the veths to the
    kernel, which deletes a pair with the last process of its namespace; deleting
    one explicitly then only waits for that teardown (3-20 ms)."""
    from dockyard.network import links
    from dockyard.network.store import NetworkStore

    store = NetworkStore(conn)
    had_ports = bool(store.ports(container_id))
    if not had_ports and not store.endpoints_of(container_id):
        return  # (reads only: `rm` of a container with no network takes no write lock)
    released = store.release(container_id)
    for endpoint in released if detach else []:
        links.detach(endpoint.host_ifname)
    if released or had_ports:
        sync_rules(root, conn)
        from dockyard.network import nft

        tracked = _tracked_text()
        stale = [e.ip for e in released if tracked is None or f"={e.ip} " in tracked]
        if stale:

            def flush() -> None:
                for ip in stale:
                    nft.flush_conntrack(ip)

            _in_background(flush)


def _in_background(work: Any) -> None:
    """Run `work` in a detached grandchild (`conntrack -D` takes ~40 ms a container:
    not something `stop`, `rm` or the end of `run --rm` should wait for)."""
    child = os.fork()
    if child == 0:  # pragma: no cover - ends in _exit
        try:
            if os.fork() == 0:
                try:
                    os.setsid()
                    work()
                finally:
                    os._exit(0)
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def _tracked_text() -> str | None:
    """The kernel's conntrack table as text (None if unreadable): a container that made
    no connections has nothing to flush, and `conntrack` costs an exec per call."""
    try:
        with open("/proc/net/nf_conntrack") as f:
            return f.read()
    except OSError:
        return None


def release_in_monitor(state_root: str, container_id: str) -> None:
    """`release` from a container's monitor, once the container is gone for good."""
    from dockyard.storage import db

    conn = db.open_db(state_root)
    try:
        release(state_root, conn, container_id, detach=False)
    finally:
        conn.close()


# ------------------------------------------------------------------ what inspect shows


def network_settings(conn: sqlite3.Connection, container: Any, running: bool) -> dict[str, Any]:
    """Docker's NetworkSettings: per network its address (while running), and Ports."""
    from dockyard.network.store import NetworkStore

    config = container.config
    mode = config.get("NetworkMode") or "none"
    store = NetworkStore(conn)
    endpoints = {e.network_id: e for e in store.endpoints_of(container.id)} if running else {}
    networks: dict[str, Any] = {}
    if mode_kind(mode) == "bridge":
        for name, settings in _endpoint_configs(config).items():
            network = store.find(settings.get("NetworkID") or name)
            endpoint = endpoints.get(network.id) if network is not None else None
            networks[network.name if network is not None else name] = {
                "IPAMConfig": settings.get("IPAMConfig"),
                "Links": None,
                "Aliases": list(settings.get("Aliases") or []) or None,
                "NetworkID": network.id if network is not None else "",
                "EndpointID": (endpoint.host_ifname if endpoint else ""),
                "Gateway": network.gateway if endpoint and network else "",
                "IPAddress": endpoint.ip if endpoint else "",
                "IPPrefixLen": network.prefixlen if endpoint and network else 0,
                "MacAddress": endpoint.mac if endpoint else "",
                "DNSNames": (endpoint.aliases if endpoint else None),
            }
    elif mode in ("host", "none"):
        networks[mode] = {"NetworkID": "", "IPAddress": "", "Gateway": "", "MacAddress": ""}
    ports: dict[str, Any] = {}
    for key in config.get("ExposedPorts") or {}:
        ports[key] = None
    if running:
        for mapping in store.ports(container.id):
            key = f"{mapping.container_port}/{mapping.proto}"
            ports[key] = (ports.get(key) or []) + [
                {"HostIp": mapping.host_ip or "0.0.0.0", "HostPort": str(mapping.host_port)}
            ]
    first: dict[str, Any] = next(iter(networks.values()), {}) if mode_kind(mode) == "bridge" else {}
    default = first if mode in ("bridge", "default") else {}
    return {
        "Bridge": "",
        "SandboxID": "",
        "SandboxKey": "",
        "Ports": ports,
        "Gateway": default.get("Gateway", ""),
        "IPAddress": default.get("IPAddress", ""),
        "IPPrefixLen": default.get("IPPrefixLen", 0),
        "MacAddress": default.get("MacAddress", ""),
        "Networks": networks,
    }


def ports_column(conn: sqlite3.Connection, container: Any, running: bool) -> str:
    """`ps`'s PORTS: 0.0.0.0:8080->80/tcp, and exposed ports not published (80/tcp)."""
    from dockyard.network.store import NetworkStore

    published = NetworkStore(conn).ports(container.id) if running else []
    done = set()
    parts = []
    for m in sorted(published, key=lambda m: (m.container_port, m.proto)):
        parts.append(f"{m.host_ip or '0.0.0.0'}:{m.host_port}->{m.container_port}/{m.proto}")
        done.add(f"{m.container_port}/{m.proto}")
    for key in sorted(container.config.get("ExposedPorts") or {}):
        if key not in done:
            parts.append(key if "/" in key else f"{key}/tcp")
    return ", ".join(parts)
