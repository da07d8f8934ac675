"""`network create/ls/inspect/rm/prune/connect/disconnect` and `port`: the engine's side."""

from __future__ import annotations

import json

from dockyard.engine.containers import EngineError
from dockyard.storage import db

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dockyard.engine.containers import Container, Engine
    from dockyard.network.store import Network, NetworkStore


def _store(engine: Engine) -> NetworkStore:
    from dockyard.network.store import NetworkStore

    return NetworkStore(engine.conn)


def create(engine: Engine, name: str, **kwargs: Any) -> Network:
    """The network and its bridge (made now, as Docker does: its route then keeps
    later networks, also other state roots', off its subnet)."""
    store = _store(engine)
    network = store.create(name, **kwargs)
    try:
        networking_bridge(network)
    except BaseException:
        store.remove(network)
        raise
    return network


def networks(engine: Engine) -> list[Network]:
    return _store(engine).all()


def get(engine: Engine, name: str) -> Network:
    return _store(engine).get(name)


def _users(engine: Engine, network: Network) -> list[Container]:
    """Containers (any state) configured on `network`."""
    users = []
    for container in engine.list_containers(all=True):
        endpoints = container.config.get("EndpointsConfig") or {}
        mode = container.config.get("NetworkMode") or ""
        named = set(endpoints) | {mode}
        ids = {(s or {}).get("NetworkID") for s in endpoints.values()}
        if network.name in named or network.id in ids:
            users.append(container)
    return users


def remove(engine: Engine, name: str) -> str:
    from dockyard.engine import networking
    from dockyard.network import links

    store = _store(engine)
    network = store.get(name)
    running = [c for c in _users(engine, network) if c.status() in ("running", "paused")]
    if running:
        raise EngineError(
            f"error while removing network: network {network.name} id {network.id} has active "
            f"endpoints (container {running[0].name}): stop or disconnect it first"
        )
    store.remove(network)
    links.delete_bridge(network.bridge)
    networking.sync_rules(engine.root, engine.conn)
    return network.name


def prune(engine: Engine) -> list[str]:
    """User-defined networks no container (in any state) is configured on."""
    removed = []
    for network in _store(engine).all():
        if network.user_defined and not _users(engine, network):
            removed.append(remove(engine, network.id))
    return removed


def document(engine: Engine, network: Network) -> dict[str, Any]:
    """Docker's `network inspect` shape."""
    store = _store(engine)
    containers: dict[str, Any] = {}
    for endpoint in store.endpoints(network):
        try:
            name = engine.get(endpoint.container_id).name
        except EngineError:
            name = ""
        containers[endpoint.container_id] = {
            "Name": name,
            "EndpointID": endpoint.host_ifname,
            "MacAddress": endpoint.mac,
            "IPv4Address": f"{endpoint.ip}/{network.prefixlen}",
            "IPv6Address": "",
        }
    config: dict[str, str] = {"Subnet": network.subnet, "Gateway": network.gateway}
    if network.ip_range:
        config["IPRange"] = network.ip_range
    options = dict(network.options)
    options.setdefault("com.docker.network.bridge.name", network.bridge)
    return {
        "Name": network.name,
        "Id": network.id,
        "Created": network.created,
        "Scope": "local",
        "Driver": network.driver,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {}, "Config": [config]},
        "Internal": network.internal,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": containers,
        "Options": options,
        "Labels": dict(network.labels),
    }


def connect(
    engine: Engine, network_name: str, container_name: str, aliases: list[str], ip: str | None
) -> None:
    """Put a container on one more network (at once if it runs: a new ethN)."""
    from dockyard.engine import networking
    from dockyard.network import links

    container = engine.get(container_name)
    mode = container.config.get("NetworkMode") or "none"
    if networking.mode_kind(mode) != "bridge":
        raise EngineError(
            f"container {container.name} uses network mode {mode}: it can't join other networks"
        )
    store = _store(engine)
    network = store.get(network_name)
    endpoints = dict(container.config.get("EndpointsConfig") or {})
    if any((s or {}).get("NetworkID") == network.id for s in endpoints.values()) or (
        network.name in endpoints
    ):
        raise EngineError(
            f"endpoint with name {container.name} already exists in network {network.name}"
        )
    if (aliases or ip) and not network.user_defined:
        raise EngineError(
            "network-scoped aliases and --ip are supported only for user-defined networks"
        )
    settings = {
        "Aliases": list(aliases),
        "IPAMConfig": {"IPv4Address": ip} if ip else None,
        "NetworkID": network.id,
    }
    if container.status() in ("running", "paused"):
        pid = _init_pid(container)
        index = len(store.endpoints_of(container.id))
        networking_bridge(network)
        endpoint = store.allocate(
            network, container.id, [container.name, container.id[:12], *aliases], ip
        )
        try:
            links.attach(
                pid,
                endpoint.host_ifname,
                network.bridge,
                endpoint.ip,
                network.prefixlen,
                None,
                endpoint.mac,
                container_ifname=f"eth{index}",
            )
        except BaseException:
            store.release(container.id, network)
            raise
        networking.sync_rules(engine.root, engine.conn)
        if network.user_defined:
            from dockyard.network import dns

            dns.ensure_running(engine.root)
    endpoints[network.name] = settings
    _save_endpoints(engine, container, endpoints)


def networking_bridge(network: Network) -> None:
    from dockyard.network import links

    links.ensure_bridge(network.bridge, network.gateway, network.prefixlen)


def disconnect(engine: Engine, network_name: str, container_name: str, force: bool = False) -> None:
    from dockyard.engine import networking
    from dockyard.network import links

    container = engine.get(container_name)
    store = _store(engine)
    network = store.get(network_name)
    endpoints = dict(container.config.get("EndpointsConfig") or {})
    key = next(
        (
            k
            for k, s in endpoints.items()
            if k == network.name or (s or {}).get("NetworkID") == network.id
        ),
        None,
    )
    if key is None and not force:
        raise EngineError(f"container {container.name} is not connected to network {network.name}")
    for endpoint in store.release(container.id, network):
        links.detach(endpoint.host_ifname)
    networking.sync_rules(engine.root, engine.conn)
    if key is not None:
        del endpoints[key]
        _save_endpoints(engine, container, endpoints)


def _init_pid(container: Container) -> int:
    try:
        with open(f"{container.dir}/monitor.json") as f:
            pid = int(json.load(f).get("pid") or 0)
    except (OSError, ValueError):
        pid = 0
    if not pid:
        raise EngineError(f"container {container.name} is not running")
    return pid


def _save_endpoints(engine: Engine, container: Container, endpoints: dict[str, Any]) -> None:
    with db.transaction(engine.conn) as conn:
        row = conn.execute("SELECT config FROM containers WHERE id = ?", (container.id,)).fetchone()
        if row is None:
            return
        record = json.loads(row[0])
        record["EndpointsConfig"] = endpoints
        if endpoints and record.get("NetworkMode") not in endpoints:
            record["NetworkMode"] = next(iter(endpoints))
        conn.execute(
            "UPDATE containers SET config = ? WHERE id = ?", (json.dumps(record), container.id)
        )


def port(engine: Engine, name: str) -> list[tuple[str, str]]:
    """`dockyard port`: ("80/tcp", "0.0.0.0:8080") for each published port."""
    container = engine.get(name)
    from dockyard.network.store import NetworkStore

    rows = NetworkStore(engine.conn).ports(container.id)
    return [
        (f"{m.container_port}/{m.proto}", m.host_label())
        for m in sorted(rows, key=lambda m: (m.container_port, m.proto, m.host_ip))
    ]
