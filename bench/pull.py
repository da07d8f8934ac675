"""`dockyard pull` against `skopeo copy docker://… oci:DIR` from a local registry.

A reference registry (`docker-registry serve`, distribution 2.8) is started on a
free loopback port with its storage in a temp directory; a multi-layer image of
about 150 MB (random data in gzip layers of 60, 40, 25, 15 and 10 MiB, so
compression can't shrink it) is built as an OCI layout and pushed there with
skopeo. Then, alternating (and swapping which goes first each round), each
tool fetches the whole image into a fresh destination: dockyard into an empty
state root (`pull -q`: blobs verified and fsynced into its content store, the
image recorded, layers not unpacked: the store unpacks at first `create`),
skopeo into an empty OCI layout. `sync` runs (untimed) before every run, so no
run pays for the previous one's writeback.

    bench/pull.py [--runs 10] [--markdown]

With --markdown the readable report goes to stderr and stdout gets one table
row for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path
from typing import IO

REGISTRY = "/usr/bin/docker-registry"
LAYERS_MIB = (60, 40, 25, 15, 10)
TIMEOUT = 120.0


class BenchError(Exception):
    """The benchmark could not run; the message is what the user reads."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_layout(out: Path) -> int:
    """An OCI layout of one image with LAYERS_MIB layers; returns its total blob bytes."""
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    layers, diff_ids, total = [], [], 0
    for i, mib in enumerate(LAYERS_MIB):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = os.urandom(mib << 20)
            info = tarfile.TarInfo(f"data/file{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        raw = buf.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        digest, size = put(gzip.compress(raw, 1))
        total += size
        media = "application/vnd.oci.image.layer.v1.tar+gzip"
        layers.append({"mediaType": media, "digest": digest, "size": size})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_digest, config_size = put(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    }
    digest, size = put(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": manifest["mediaType"],
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (out / "index.json").write_text(json.dumps(index))
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return total


class Registry:
    def __init__(self, base: Path) -> None:
        self.port = free_port()
        config = base / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {base / 'storage'}\nhttp:\n  addr: 127.0.0.1:{self.port}\n"
        )
        self.log = open(base / "registry.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [REGISTRY, "serve", str(config)], stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise BenchError("docker-registry did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


def timed(argv: list[str]) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {proc.stderr.decode(errors='replace')}")
    return elapsed


def bench(runs: int, out: IO[str]) -> tuple[list[float], list[float], int]:
    dockyard = str(Path(sys.executable).parent / "dockyard")
    skopeo = shutil.which("skopeo")
    if skopeo is None or not os.path.exists(REGISTRY):
        raise BenchError("needs skopeo and docker-registry (Debian packages)")
    base = Path(tempfile.mkdtemp(prefix="dy-bench-pull-"))
    try:
        total = build_layout(base / "layout")
        registry = Registry(base)
        try:
            ref = f"127.0.0.1:{registry.port}/bench/big:latest"
            subprocess.run(
                [skopeo, "copy", "--dest-tls-verify=false", f"oci:{base / 'layout'}:latest",
                 f"docker://{ref}"],
                check=True, capture_output=True, timeout=TIMEOUT,
            )  # fmt: skip
            ours: list[float] = []
            peer: list[float] = []
            for i in range(runs + 1):  # the first round warms caches and is not counted
                root, layout = base / f"root-{i}", base / f"oci-{i}"
                jobs = [
                    (ours, [dockyard, "--root", str(root), "pull", "-q", ref]),
                    (peer, [skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}",
                            f"oci:{layout}:latest"]),
                ]  # fmt: skip
                for times, argv in jobs if i % 2 else jobs[::-1]:
                    elapsed = timed(argv)
                    if i:
                        times.append(elapsed)
                shutil.rmtree(root)
                shutil.rmtree(layout)
        finally:
            registry.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return ours, peer, total


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU, Linux {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dockyard pull vs skopeo copy, local registry")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    report = sys.stderr if args.markdown else sys.stdout
    try:
        ours, peer, total = bench(args.runs, report)
    except BenchError as err:
        print(f"registry_pull: {err}", file=sys.stderr)
        return 1
    med_ours, med_peer = statistics.median(ours), statistics.median(peer)
    ratio = med_ours / med_peer
    print(f"registry_pull: {total / 1e6:.0f} MB in {len(LAYERS_MIB)} layers, "
          f"{args.runs} runs each", file=report)  # fmt: skip
    print(f"  dockyard pull     median {med_ours * 1000:6.0f} ms  min {min(ours) * 1000:6.0f} ms",
          file=report)  # fmt: skip
    print(f"  skopeo copy       median {med_peer * 1000:6.0f} ms  min {min(peer) * 1000:6.0f} ms",
          file=report)  # fmt: skip
    print(f"  ratio dockyard/skopeo (median): {ratio:.2f}x", file=report)
    if args.markdown:
        cells = [
            date.today().isoformat(), machine(), str(args.runs),
            f"{med_ours * 1000:.0f} ms", f"{med_peer * 1000:.0f} ms", f"{ratio:.2f}x",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
