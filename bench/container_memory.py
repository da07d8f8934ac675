"""Extra memory per running container: the PSS of its monitor process.

Starts N idle containers (`sleep 600`, busybox) one after another through the
Python API, sums `Pss` from /proc/<pid>/smaps_rollup of every container's
monitor, divides by N, prints it, then removes the containers. The container's
own processes are not counted (Docker's figure for dockerd's shim is the shim).

    bench/container_memory.py --cache /var/cache/dockyard-test [--count 50] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.test_images import DEFAULT_CACHE, busybox_image

DOCKYARD = str(Path(sys.executable).parent / "dockyard")


def rollup(pid: int) -> dict[str, int]:
    """smaps_rollup of one process, in kB."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[key] = int(parts[0])
    return fields


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--markdown", action="store_true")
    opts = parser.parse_args()
    image = busybox_image(opts.cache)
    with tempfile.TemporaryDirectory(prefix="dockyard-mem-") as tmp:
        root = os.path.join(tmp, "dockyard")
        subprocess.run(
            [DOCKYARD, "--root", root, "import", str(image.tar), "busybox"],
            check=True,
            capture_output=True,
        )
        import dockyard

        client = dockyard.Client(root)
        containers = []
        try:
            for _ in range(opts.count):
                container = client.containers.create("busybox", "sleep 600")
                container.start()
                containers.append(container)
            from dockyard.engine.monitor_loop import HANDOVER_AFTER

            time.sleep(HANDOVER_AFTER + 1.0)  # every monitor has gone lean by then
            pids = []
            for c in containers:
                with open(os.path.join(root, "containers", c.id, "monitor.pid")) as f:
                    pids.append(int(f.read()))
            totals = {"Pss": 0, "Rss": 0, "Private_Dirty": 0}
            for pid in pids:
                fields = rollup(pid)
                for key in totals:
                    totals[key] += fields.get(key, 0)
        finally:
            for c in containers:
                c.remove(force=True)
    n = len(pids)
    pss, rss, dirty = (totals[k] / n / 1024 for k in ("Pss", "Rss", "Private_Dirty"))
    print(f"  {n} idle containers: monitor PSS {pss:.2f} MiB per container")
    print(f"  (RSS {rss:.2f} MiB, Private_Dirty {dirty:.2f} MiB per monitor)")
    if opts.markdown:
        print(
            f"| {time.strftime('%Y-%m-%d')} | {os.uname().machine}, {os.cpu_count()} CPU, "
            f"Linux {os.uname().release} | {n} | {pss:.2f} MiB | {rss:.2f} MiB | {dirty:.2f} MiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
