"""Fixtures of the end-to-end networking tests (test_container_networking.py and friends).

`dy`: `dockyard` on a private root with busybox imported. A root other than
/var/lib/dockyard has its own default bridge (dy0-<tag>, a /24 of 10.79/16)
and its own nft table (`ip dockyard-<tag>`), so the tests never touch the
shared `ip dockyard` table. Afterwards every container is removed, every
user-defined network pruned and the root's network torn down
(tests.conftest.teardown_network: bridges, table, DNS server); then nothing
of the root may be left: no endpoint or port rows, no veth of its
containers, no bridge, no table, no process, no mount.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts.test_images import BusyboxImage

from dockyard.network.store import veth_name
from tests.cli.dockyard_helper import Dockyard
from tests.conftest import TEST_CACHE, teardown_network
from tests.network import netlab


class NetDockyard(Dockyard):
    """Dockyard on a root, plus what the networking tests ask of it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bridges: set[str] = set()  # bridges of the root's networks

    def network(self, name: str, *flags: str) -> dict[str, object]:
        """`network create`; the new network's id, bridge, subnet and gateway."""
        self("network", "create", *flags, name)
        doc = self.inspect_network(name)
        self.bridges.add(str(doc["bridge"]))
        return doc

    def inspect_network(self, name: str) -> dict[str, object]:
        doc = json.loads(self("network", "inspect", name).stdout)[0]
        config = doc["IPAM"]["Config"][0]
        return {
            "id": doc["Id"],
            "bridge": doc["Options"]["com.docker.network.bridge.name"],
            "subnet": config["Subnet"],
            "gateway": config["Gateway"],
        }

    def ip_of(self, container: str, network: str = "") -> str:
        """The container's address on `network` (default: its first network)."""
        out = self("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
        networks = json.loads(out)
        return str(networks[network or next(iter(networks))]["IPAddress"])


@pytest.fixture
def dy(tmp_path: Path, busybox_image: BusyboxImage) -> Iterator[NetDockyard]:
    if os.geteuid() != 0:
        pytest.skip("needs root (bridges, veths, nftables)")
    d = NetDockyard(tmp_path / "root")
    d("import", str(busybox_image.tar), "busybox")
    try:
        yield d
    finally:
        _clean_and_check(d, tmp_path)


def _clean_and_check(d: NetDockyard, tmp_path: Path) -> None:
    ids = d("ps", "-aq", "--no-trunc", check=False).stdout.split()
    rows = netlab.db_rows(d.root, "networks")
    d.bridges.update(str(r["bridge"]) for r in rows)
    if ids:
        d("rm", "-f", *ids, check=False)
    d("network", "prune", "-f", check=False)
    assert netlab.db_rows(d.root, "endpoints") == []
    assert netlab.db_rows(d.root, "port_mappings") == []
    teardown_network(d.root)  # the default bridge, the table, the DNS server
    ours = {veth_name(c, str(r["id"])) for c in ids for r in rows}
    assert not ours & netlab.veths()
    assert not [b for b in d.bridges if os.path.exists(f"/sys/class/net/{b}")]
    assert netlab.nft_rules(d.root) == []
    assert netlab.wait_until(lambda: not netlab.processes_of(d.root), 10), netlab.processes_of(
        d.root
    )
    leftovers = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(tmp_path) in line
    ]
    assert not leftovers, leftovers


@pytest.fixture
def debian(dy: NetDockyard, debian_image: Path) -> str:
    """The debian image imported into dy's root; its reference."""
    from scripts import debian_images

    debian_images.import_debian(dy.root, TEST_CACHE)
    return f"debian:{debian_images.host_suite()}"


@pytest.fixture
def nginx(dy: NetDockyard, nginx_image: Path) -> str:
    from scripts import debian_images

    debian_images.import_nginx(dy.root, TEST_CACHE)
    return "nginx"


@pytest.fixture
def peer() -> Iterator[netlab.Peer]:
    """A network namespace linked to the host (see netlab.Peer); removed afterwards."""
    p = netlab.Peer()
    try:
        yield p
    finally:
        p.remove()
    assert not os.path.exists(f"/run/netns/{p.name}")
    assert not os.path.exists(f"/sys/class/net/{p.host_if}")
