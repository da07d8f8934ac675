"""The `dy` fixture: `dockyard` on a private root with busybox imported; leak checks after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts.test_images import BusyboxImage

from tests.cli.dockyard_helper import Dockyard
from tests.conftest import teardown_network


@pytest.fixture
def dy(tmp_path: Path, busybox_image: BusyboxImage) -> Iterator[Dockyard]:
    d = Dockyard(tmp_path / "root")
    d("import", str(busybox_image.tar), "busybox")
    yield d
    ids = d("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ids:
        d("rm", "-f", *ids, check=False)
    teardown_network(tmp_path / "root")
    leftovers = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(tmp_path) in line
    ]
    assert not leftovers, leftovers
    for cid in ids:
        assert not Path(f"/sys/fs/cgroup/pids/dockyard/{cid}").exists()
    assert not list((tmp_path / "root" / "containers").glob("*"))
