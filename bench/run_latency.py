"""`dockyard run --rm busybox true` against podman (and docker, when a dockerd answers).

The same busybox rootfs tar is imported into each; runs alternate between the
tools, 20 each by default; the median wall time of each and the ratios are
printed. Also: 100 containers started one after another through the Python API
(create+start, then removed), and `dockyard --version` (CLI start-up).

    bench/run_latency.py --cache /var/cache/dockyard-test [--runs 20] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.test_images import DEFAULT_CACHE, busybox_image

DOCKYARD = str(Path(sys.executable).parent / "dockyard")
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {out.stderr.decode(errors='replace')}")
    return elapsed


def podman_argv(base: Path) -> list[str] | None:
    podman = shutil.which("podman")
    if not podman:
        return None
    return [
        podman,
        "--root",
        str(base / "storage"),
        "--runroot",
        str(base / "run"),
        "--tmpdir",
        str(base / "tmp"),
        "--events-backend",
        "none",
        "--cgroup-manager",
        "cgroupfs",
        "--runtime",
        shutil.which("runc") or "runc",
    ]


def docker_argv() -> list[str] | None:
    docker = shutil.which("docker")
    if not docker:
        return None
    ok = subprocess.run([docker, "info"], capture_output=True, timeout=20, check=False)
    return [docker] if ok.returncode == 0 else None


def api_hundred(root: str) -> float:
    import dockyard

    client = dockyard.Client(root)
    start = time.perf_counter()
    containers = []
    for _ in range(100):
        container = client.containers.create("busybox", "sleep 60")
        container.start()
        containers.append(container)
    elapsed = time.perf_counter() - start
    for c in containers:
        c.remove(force=True)
    return elapsed


def main() -> int:
    # An installed dockyard runs from its .pyc files; with this set (as some sandboxes
    # do) every dockyard process would compile its modules again and the figures
    # would time the compiler. The warm-up round writes them.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--markdown", action="store_true")
    opts = parser.parse_args()
    image = busybox_image(opts.cache)
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        base = Path(tmp)
        root = str(base / "dockyard")
        tools: dict[str, list[str]] = {"dockyard": [DOCKYARD, "--root", root]}
        subprocess.run(
            [*tools["dockyard"], "import", str(image.tar), "busybox"],
            check=True,
            capture_output=True,
        )
        extra: list[str] = []
        podman = podman_argv(base)
        if podman:
            subprocess.run(
                [*podman, "import", str(image.tar), "busybox"], check=True, capture_output=True
            )
            tools["podman"] = podman
        docker = docker_argv()
        if docker:
            subprocess.run(
                [*docker, "import", str(image.tar), "busybox"], check=True, capture_output=True
            )
            tools["docker"] = docker
        times: dict[str, list[float]] = {name: [] for name in tools}
        for i in range(opts.runs + 1):
            for name, argv in tools.items():
                flags = ULIMITS if name != "dockyard" else []
                t = timed([*argv, "run", "--rm", *flags, "busybox", "true"])
                if i:  # the first round warms caches
                    times[name].append(t)
        version = [timed([DOCKYARD, "--version"]) for _ in range(20)]
        hundred = api_hundred(root)
        if podman:
            subprocess.run([*podman, "rmi", "-af"], capture_output=True, check=False)
            subprocess.run(
                ["umount", "-R", str(base / "storage")], capture_output=True, check=False
            )
    medians = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    for name, ms in medians.items():
        print(f"  {name:<9} run --rm busybox true: median {ms:6.1f} ms over {opts.runs} runs")
    for peer in ("docker", "podman"):
        if peer in medians:
            print(f"  ratio dockyard/{peer}: {medians['dockyard'] / medians[peer]:.2f}x")
    if "docker" not in medians:
        extra.append("docker: no dockerd answered `docker info`; not measured")
    print(f"  100 containers through the Python API (run detach): {hundred:.2f} s")
    print(f"  dockyard --version: median {statistics.median(version) * 1000:.1f} ms")
    for line in extra:
        print(f"  {line}")
    if opts.markdown:
        print(
            f"| {time.strftime('%Y-%m-%d')} | {os.uname().machine}, {os.cpu_count()} CPU | "
            + " | ".join(f"{n} {m:.1f} ms" for n, m in medians.items())
            + f" | API x100 {hundred:.2f} s"
            + f" | --version {statistics.median(version) * 1000:.1f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
