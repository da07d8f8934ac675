"""`dockyard registry serve` against the reference registry under 8 parallel skopeo clients.

An OCI layout of about 60 MiB (random data in layers of 24, 16, 12 and 8 MiB,
so nothing compresses) is built once. Each round, for each server in turn
(swapping which goes first): a fresh server on a free loopback port with empty
storage in a temp directory (`docker-registry serve` is distribution 2.8 with the
filesystem driver; dockyard with `--workers` as given); N clients push the image
at once (`skopeo copy oci:… docker://…/bench/rI:v1`, each to its own repository,
so every client uploads every blob); then N clients pull it at once (`skopeo
copy docker://…/bench/r1:v1 dir:…`). `sync` runs (untimed) before each phase.
Throughput is the bytes moved by all clients over the phase's wall time; the
ratio is dockyard / reference (goal: >= 1.00x).

    bench/registry_serve.py [--clients 8] [--rounds 3] [--workers 1] [--markdown]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

DOCKYARD = str(Path(sys.executable).parent / "dockyard")
LAYER_MIB = (24, 16, 12, 8)


def build_layout(dest: Path) -> int:
    """An OCI layout with random layers; the bytes one push or pull moves."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    total = 0

    def put(data: bytes) -> dict[str, object]:
        nonlocal total
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        total += len(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers = []
    for mib in LAYER_MIB:
        desc = put(os.urandom(mib << 20))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", **desc})
    diff_ids = [layer["digest"] for layer in layers]
    config = json.dumps({"os": "linux", "architecture": "amd64", "rootfs": {"diff_ids": diff_ids}})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config.encode())},
        "layers": layers,
    }
    desc = put(json.dumps(manifest).encode())
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **desc,
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], host: str) -> None:
        self.proc = proc
        self.host = host

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


def wait_ready(host: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            address, port = host.rsplit(":", 1)
            with socket.create_connection((address, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on {host} did not start")


def start_reference(work: Path) -> Server:
    port = free_port()
    config = work / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'ref-storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host = f"127.0.0.1:{port}"
    wait_ready(host, proc)
    return Server(proc, host)


def start_dockyard(work: Path, workers: int) -> Server:
    proc = subprocess.Popen(
        [DOCKYARD, "registry", "serve", "--listen", "127.0.0.1:0",
         "--storage", str(work / "dy-storage"), "--workers", str(workers)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = os.read(proc.stdout.fileno(), 4096).decode() if ready else ""
    match = re.search(r"listening on http://([0-9.]+:[0-9]+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"dockyard registry did not start: {line!r}")
    return Server(proc, match.group(1))


def parallel(commands: list[list[str]]) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    procs = [
        subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
        for c in commands
    ]  # fmt: skip
    failed = []
    for proc, command in zip(procs, commands, strict=True):
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failed.append(f"{' '.join(command)}: {err.decode(errors='replace').strip()}")
    elapsed = time.perf_counter() - start
    if failed:
        raise SystemExit("\n".join(failed))
    return elapsed


def one_round(server: Server, layout: Path, work: Path, clients: int) -> tuple[float, float]:
    copy = ["skopeo", "copy", "-q"]
    pushes = [
        [
            *copy,
            "--dest-tls-verify=false",
            f"oci:{layout}:v1",
            f"docker://{server.host}/bench/r{i}:v1",
        ]
        for i in range(clients)
    ]
    push = parallel(pushes)
    pulls = work / "pulls"
    pulls.mkdir()
    source = f"docker://{server.host}/bench/r0:v1"
    pull = parallel(
        [[*copy, "--src-tls-verify=false", source, f"dir:{pulls / str(i)}"] for i in range(clients)]
    )
    shutil.rmtree(pulls)
    return push, pull


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (make deps)")
    times: dict[str, list[tuple[float, float]]] = {"dockyard": [], "reference": []}
    with tempfile.TemporaryDirectory(prefix="dy-registry-bench-") as tmp:
        base = Path(tmp)
        size = build_layout(base / "layout")
        for n in range(args.rounds):
            order = ["dockyard", "reference"] if n % 2 == 0 else ["reference", "dockyard"]
            for name in order:
                work = base / f"{name}-{n}"
                work.mkdir()
                if name == "dockyard":
                    server = start_dockyard(work, args.workers)
                else:
                    server = start_reference(work)
                try:
                    times[name].append(one_round(server, base / "layout", work, args.clients))
                finally:
                    server.stop()
                shutil.rmtree(work)
    moved = size * args.clients / (1 << 20)
    report = [f"{args.clients} clients x {size / (1 << 20):.1f} MiB, {args.rounds} rounds"]
    rates: dict[str, tuple[float, float]] = {}
    for name, runs in times.items():
        push = statistics.median(t[0] for t in runs)
        pull = statistics.median(t[1] for t in runs)
        rates[name] = (moved / push, moved / pull)
        report.append(
            f"{name:<10} push {push:6.2f} s ({moved / push:7.1f} MiB/s)"
            f"  pull {pull:6.2f} s ({moved / pull:7.1f} MiB/s)"
        )
    push_ratio = rates["dockyard"][0] / rates["reference"][0]
    pull_ratio = rates["dockyard"][1] / rates["reference"][1]
    report.append(
        f"throughput dockyard / reference: push {push_ratio:.2f}x, pull {pull_ratio:.2f}x"
    )
    if args.markdown:
        sys.stderr.write("\n".join(report) + "\n")
        machine = f"{platform.machine()}, {os.cpu_count()} CPU, Linux {platform.release()}"
        print(
            f"| {date.today()} | {machine} | {args.clients} x {size >> 20} MiB, workers"
            f" {args.workers} | {rates['dockyard'][0]:.0f} / {rates['reference'][0]:.0f} MiB/s"
            f" | {rates['dockyard'][1]:.0f} / {rates['reference'][1]:.0f} MiB/s"
            f" | {push_ratio:.2f}x / {pull_ratio:.2f}x |"
        )
    else:
        print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
