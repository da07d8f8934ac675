"""What a container's network costs at `run`: the default bridge against `--network none`.

`dockyard run --rm busybox true` on the default bridge (a veth pair, an
address, the root's nft table synced at start and again at exit) and with
`--network none` (a namespace with only lo), alternating and swapping which goes
first each round, 20 timed runs each after one warm-up run of each (which also
makes the root's bridge). A fresh state root under a temp dir; busybox from the
test image cache (scripts/test_images.py), as bench/run_latency.py uses it.
Prints the median of each and the difference (goal: <= 15 ms).

The same for Docker (`docker run --rm` with its default bridge against
`--network none`) unless --no-docker: the dockerd on /var/run/docker.sock if one
answers, else a private one with its own bridge and iptables NAT, all undone
after (bench/netbench.py).

    bench/network_setup.py --cache /var/cache/dockyard-test [--runs 20]
        [--no-docker] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.netbench import (
    DockerPeer,
    HostNet,
    clean_up_on_signals,
    cleanup_root,
    docker_nat_peer,
    must,
)
from bench.run_latency import timed
from scripts.test_images import DEFAULT_CACHE, busybox_image

DOCKYARD = str(Path(sys.executable).parent / "dockyard")
GOAL_MS = 15.0


def alternate(variants: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """One untimed run of each, then `runs` timed rounds, the order swapped each round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for name in names:
        timed(variants[name])
    for i in range(runs):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(timed(variants[name]) * 1000)
    return times


@contextlib.contextmanager
def no_docker() -> Iterator[DockerPeer | None]:
    yield None


def main() -> int:
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # see bench/run_latency.py
    clean_up_on_signals()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-docker", action="store_true", help="dockyard only")
    parser.add_argument("--markdown", action="store_true")
    opts = parser.parse_args()
    image = busybox_image(opts.cache)
    load_start = os.getloadavg()[0]
    notes: list[str] = []
    results: dict[str, dict[str, list[float]]] = {}
    host_before = HostNet.capture()
    try:
        with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
            base = Path(tmp)
            root = base / "dockyard"
            dockyard = [DOCKYARD, "--root", str(root)]
            must([*dockyard, "import", str(image.tar), "busybox"])
            try:
                run = [*dockyard, "run", "--rm"]
                results["dockyard"] = alternate(
                    {
                        "bridge": [*run, "busybox", "true"],
                        "none": [*run, "--network", "none", "busybox", "true"],
                    },
                    opts.runs,
                )
            finally:
                cleanup_root(dockyard, root, host_before, notes)
            peer = no_docker() if opts.no_docker else docker_nat_peer(base, notes)
            with peer as docker:
                if docker:
                    tag = f"dockyard-bench/busybox:{os.getpid()}"
                    must([*docker.argv, "import", str(image.tar), tag], timeout=300)
                    try:
                        run = [*docker.argv, "run", "--rm"]
                        results["docker"] = alternate(
                            {
                                "bridge": [*run, tag, "true"],
                                "none": [*run, "--network", "none", tag, "true"],
                            },
                            opts.runs,
                        )
                    finally:
                        subprocess.run([*docker.argv, "rmi", tag], capture_output=True, check=False)
    except BaseException:
        for line in notes:
            print(f"  {line}", file=sys.stderr)
        raise
    load_end = os.getloadavg()[0]
    medians = {
        tool: {name: statistics.median(ms) for name, ms in times.items()}
        for tool, times in results.items()
    }
    # Each round times one of each back to back: the median of those differences is
    # less moved by load that comes and goes than the difference of the two medians.
    paired = {
        tool: statistics.median(b - n for b, n in zip(t["bridge"], t["none"], strict=True))
        for tool, t in results.items()
    }
    for tool, m in medians.items():
        diff = m["bridge"] - m["none"]
        print(
            f"  {tool:<8} run --rm busybox true: bridge {m['bridge']:6.1f} ms,"
            f" --network none {m['none']:6.1f} ms (medians of {opts.runs}): {diff:+.1f} ms"
            f" (median of the rounds' differences {paired[tool]:+.1f} ms)"
        )
    dy_diff = medians["dockyard"]["bridge"] - medians["dockyard"]["none"]
    verdict = "met" if dy_diff <= GOAL_MS else "NOT met"
    print(f"  dockyard network set-up: {dy_diff:.1f} ms (goal <= {GOAL_MS:.0f} ms: {verdict})")
    print(f"  load average (1 min): {load_start:.2f} at start, {load_end:.2f} at end")
    for line in notes:
        print(f"  {line}", file=sys.stderr if opts.markdown else sys.stdout)
    if opts.markdown:
        uname = os.uname()

        def cells(tool: str) -> str:
            if tool not in medians:
                return "- | -"
            m = medians[tool]
            return (
                f"{m['bridge']:.1f} / {m['none']:.1f} ms"
                f" | {m['bridge'] - m['none']:.1f} ms ({paired[tool]:.1f})"
            )

        print(
            f"| {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {uname.machine},"
            f" {os.cpu_count()} CPU, Linux {uname.release} | {opts.runs}"
            f" | {cells('dockyard')} | {cells('docker')}"
            f" | {load_start:.2f} / {load_end:.2f} | |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
