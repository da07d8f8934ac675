"""Many `dockyard` processes at once: no lost rows, distinct names, nothing leaked."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

from tests.cli.test_containers import DOCKYARD, Dockyard

PARALLEL = 20


def test_twenty_parallel_detached_runs(dy: Dockyard) -> None:
    def start(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCKYARD, "--root", str(dy.root), "run", "-d", "busybox", "sleep", "60"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(start, range(PARALLEL)))
    failures = [r.stderr for r in results if r.returncode != 0]
    assert not failures, failures
    ids = {r.stdout.strip() for r in results}
    assert len(ids) == PARALLEL
    listed = dy("ps", "-q", "--no-trunc").stdout.split()
    assert set(listed) == ids  # every row there, every container running
    names = [line.split()[-1] for line in dy("ps").stdout.splitlines()[1:]]
    assert len(set(names)) == PARALLEL
    # IPAM under 20 parallel starts: every container has its own address on the bridge.
    addresses = dy("inspect", "-f", "{{.NetworkSettings.IPAddress}}", *sorted(ids)).stdout.split()
    assert len(addresses) == PARALLEL and len(set(addresses)) == PARALLEL, addresses
    dy("rm", "-f", *ids, timeout=180)
    assert dy("ps", "-aq").stdout == ""
