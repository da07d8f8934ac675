"""HTTP throughput through a published port: nginx in dockyard against nginx in Docker.

The project's nginx image (scripts/debian_images.py: Debian's nginx-light, logs
to the container's stdout/stderr) is imported into a fresh dockyard root under
the temp dir and, from the same rootfs tar with the same config (CMD, ENV PATH,
EXPOSE 80/tcp, STOPSIGNAL), into Docker. One container each, published on a
free host port:

    dockyard --root TMP run -d -p PORT:80 nginx          (nft DNAT, own bridge)
    docker run -d -p PORT2:80 IMAGE                      (Docker's default: iptables
                                                          DNAT, and its userland
                                                          proxy for 127.0.0.1)

then `wrk -t2 -c50 -d10s http://127.0.0.1:PORT/` against each, alternating which
goes first each round (2 rounds by default, after a 2 s warm-up of each). Reports
requests/s per run, the mean per tool and the ratio dockyard / docker (higher is
better for dockyard here; goal >= 0.95x).

Docker: the dockerd on /var/run/docker.sock if one answers, else a private one
with its own bridge and iptables NAT, all undone afterwards (bench/netbench.py).
The dockyard root's own bridge and nft table are deleted at the end as well.

    bench/port_throughput.py --cache /var/cache/dockyard-test [--rounds 2]
        [--duration 10] [--no-userland-proxy] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.netbench import (
    DockerPeer,
    HostNet,
    clean_up_on_signals,
    cleanup_root,
    docker_nat_peer,
    free_port,
    must,
    wait_http,
)
from scripts.debian_images import DEFAULT_CACHE, NGINX_CHANGES, import_nginx, nginx_rootfs

DOCKYARD = str(Path(sys.executable).parent / "dockyard")
GOAL = 0.95


@dataclass
class WrkResult:
    requests_per_s: float
    latency: str
    errors: str


def wrk(url: str, threads: int, connections: int, seconds: int) -> WrkResult:
    binary = shutil.which("wrk") or "/usr/bin/wrk"
    out = must(
        [binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", url], timeout=seconds + 60
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency = re.search(r"Latency\s+(\S+)", out)
    errors = []
    sockets = re.search(r"Socket errors:(.*)", out)
    if sockets:
        errors.append("socket errors:" + sockets.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors.append(f"{non2xx.group(1)} non-2xx/3xx")
    if not rate:
        raise SystemExit(f"wrk printed no Requests/sec:\n{out}")
    return WrkResult(float(rate.group(1)), latency.group(1) if latency else "?", "; ".join(errors))


def main() -> int:
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # see bench/run_latency.py
    clean_up_on_signals()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before round 1")
    parser.add_argument(
        "--no-userland-proxy",
        action="store_true",
        help="private dockerd with --userland-proxy=false (kernel DNAT from 127.0.0.1 too)",
    )
    parser.add_argument("--markdown", action="store_true")
    opts = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (make bench-deps)")
    tar = nginx_rootfs(opts.cache)
    load_start = os.getloadavg()[0]
    notes: list[str] = []
    rates: dict[str, list[float]] = {}
    host_before = HostNet.capture()
    try:
        with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
            base = Path(tmp)
            root = base / "dockyard"
            dockyard = [DOCKYARD, "--root", str(root)]
            proxy = not opts.no_userland_proxy
            with docker_nat_peer(base, notes, userland_proxy=proxy) as docker:
                try:
                    rates = measure(opts, tar, root, dockyard, docker, notes)
                finally:
                    cleanup_root(dockyard, root, host_before, notes)
    except BaseException:
        for line in notes:
            print(f"  {line}", file=sys.stderr)
        raise
    load_end = os.getloadavg()[0]
    report(opts, rates, notes, load_start, load_end)
    return 0


def measure(
    opts: argparse.Namespace,
    tar: Path,
    root: Path,
    dockyard: list[str],
    docker: DockerPeer | None,
    notes: list[str],
) -> dict[str, list[float]]:
    """One nginx container in each, then the wrk rounds; requests/s per run by tool."""
    taken: set[int] = set()
    urls: dict[str, str] = {}
    import_nginx(root, opts.cache)
    port = free_port(taken)
    must([*dockyard, "run", "-d", "-p", f"{port}:80", "nginx"])
    urls["dockyard"] = f"http://127.0.0.1:{port}/"
    image = f"dockyard-bench/nginx:{os.getpid()}"
    try:
        if docker:
            # docker 20.10's import takes no STOPSIGNAL (nor does the benchmark stop nginx).
            changes = [
                arg
                for change in NGINX_CHANGES
                if not change.startswith("STOPSIGNAL")
                for arg in ("--change", change)
            ]
            must([*docker.argv, "import", *changes, str(tar), image], timeout=600)
            port2 = free_port(taken)
            label = "dockyard-bench=1"
            must([*docker.argv, "run", "-d", "--label", label, "-p", f"{port2}:80", image])
            urls["docker"] = f"http://127.0.0.1:{port2}/"
        for name, url in urls.items():
            if "Welcome to nginx" not in wait_http(url):
                raise SystemExit(f"{name}: {url} is not nginx's welcome page")
            wrk(url, opts.threads, opts.connections, opts.warmup)
        rates: dict[str, list[float]] = {name: [] for name in urls}
        names = list(urls)
        for i in range(opts.rounds):
            for name in names if i % 2 == 0 else names[::-1]:
                result = wrk(urls[name], opts.threads, opts.connections, opts.duration)
                rates[name].append(result.requests_per_s)
                line = (
                    f"  round {i + 1} {name:<8} {result.requests_per_s:10.0f} req/s,"
                    f" latency avg {result.latency}"
                )
                print(line + (f" ({result.errors})" if result.errors else ""), flush=True)
                if result.errors:
                    notes.append(f"round {i + 1} {name}: {result.errors}")
        return rates
    finally:
        if docker:
            ids = must([*docker.argv, "ps", "-aq", "--filter", "label=dockyard-bench=1"]).split()
            if ids:
                subprocess.run([*docker.argv, "rm", "-f", *ids], capture_output=True, check=False)
            subprocess.run([*docker.argv, "rmi", image], capture_output=True, check=False)


def report(
    opts: argparse.Namespace,
    rates: dict[str, list[float]],
    notes: list[str],
    load_start: float,
    load_end: float,
) -> None:
    means = {name: statistics.mean(values) for name, values in rates.items() if values}
    for name, values in rates.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:<8} mean {means[name]:10.0f} req/s  ({runs})")
    ratio = means["dockyard"] / means["docker"] if "docker" in means else None
    if ratio is not None:
        verdict = "met" if ratio >= GOAL else "NOT met"
        print(f"  ratio dockyard/docker: {ratio:.2f}x (goal >= {GOAL:.2f}x: {verdict})")
    print(f"  load average (1 min): {load_start:.2f} at start, {load_end:.2f} at end")
    for line in notes:
        print(f"  {line}", file=sys.stderr if opts.markdown else sys.stdout)
    if opts.markdown:
        uname = os.uname()
        docker_cell = f"{means['docker']:.0f}" if "docker" in means else "-"
        ratio_cell = f"{ratio:.2f}x" if ratio is not None else "-"
        print(
            f"| {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {uname.machine},"
            f" {os.cpu_count()} CPU, Linux {uname.release}"
            f" | wrk -t{opts.threads} -c{opts.connections} -d{opts.duration}s x {opts.rounds}"
            f" | {means['dockyard']:.0f} | {docker_cell} | {ratio_cell}"
            f" | {'off' if opts.no_userland_proxy else 'on'}"
            f" | {load_start:.2f} / {load_end:.2f} | |"
        )


if __name__ == "__main__":
    sys.exit(main())
