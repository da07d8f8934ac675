"""`dockyard pull` against `skopeo copy docker://… oci:DIR` and `podman pull`, local registry.

The image: the project's Debian nginx image (scripts/debian_images.py, imported
into a temp state root) plus four layers made with `dockyard commit`, as a
Dockerfile would add them:

    RUN  cp -a /usr/lib/x86_64-linux-gnu /opt/app/lib; cp -a /usr/share/doc /opt/app/doc
    COPY static/  /srv/app/static    ~45 MiB of "assets" (already compressed: seeded
                                     pseudo-random bytes in 90 files of 64 KiB-1 MiB)
    COPY data/    /srv/app/data      72 MiB of generated text (seeded pseudo-words, 240 files)
    COPY site.conf /etc/nginx/conf.d/

The content is the same on every run (the first layer comes from the cached
nginx rootfs, the rest from a fixed seed; only file times differ). `commit`
stores plain tar layers and `push` sends blobs as stored, so each layer is
then gzipped (level 6, mtime 0: what `docker push` does) into a second state
root, with a new manifest and the same config (a store keeps one manifest per
config: a new one in the same root would be ignored), and that image is pushed
with `dockyard push` to a reference registry (`docker-registry serve`, distribution 2.8, plain
HTTP on a free loopback port, storage in the temp directory): about 150 MB of
gzip layers (checked in the registry's manifest before timing).

Then, alternating (the order rotated each round, one untimed warm-up round),
each tool fetches the whole image into a fresh, empty destination, `sync`
(untimed) before every run:

- dockyard: `pull -q` into an empty state root (blobs verified and fsynced into
  its content store, the image recorded; layers not unpacked: the store unpacks
  at the first `create`);
- skopeo: `copy` into an empty OCI layout (blobs only, no fsync);
- podman: `pull` into a private, empty store (`--root`/`--runroot`/`--tmpdir`
  under the temp dir, overlay driver, runc, cgroupfs): it unpacks every layer;
- for the comparison with podman, dockyard `pull -q` then `create` of the image
  in one timed span (the create unpacks the layers into snapshots).

    bench/pull.py [--cache /var/cache/dockyard-test] [--runs 5] [--markdown]

With --markdown the readable report goes to stderr and stdout gets one table
row for bench/RESULTS.md. Everything it makes (registry, roots, podman stores)
is under one temp directory, removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO

# Run as a script, only bench/ is on sys.path; the repo root makes `scripts` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.debian_images import DEFAULT_CACHE, NGINX_CHANGES, NGINX_REFERENCE, import_nginx

DOCKYARD = str(Path(sys.executable).parent / "dockyard")
REGISTRY = "/usr/bin/docker-registry"
TIMEOUT = 300.0
SEED = 20261125
GZIP_LEVEL = 6  # Go's compress/gzip default, what docker push uses
ASSET_FILES, ASSET_MIN, ASSET_MAX = 90, 64 << 10, 1 << 20
TEXT_FILES, TEXT_BYTES = 240, 72 << 20
FIXED_MTIME = 1_700_000_000
NGINX_CMD = next(c for c in NGINX_CHANGES if c.startswith("CMD "))


class BenchError(Exception):
    """The benchmark could not run; the message is what the user reads."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str], timeout: float = TIMEOUT) -> str:
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise BenchError(f"{' '.join(argv)} failed ({proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace")


# ---------------------------------------------------------------- the image


def write_assets(dest: Path) -> None:
    """Already-compressed files (images, fonts, archives): seeded pseudo-random bytes."""
    rng = random.Random(SEED)
    dest.mkdir(parents=True)
    kinds = ("webp", "woff2", "jpg", "png", "zip", "gz")
    for i in range(ASSET_FILES):
        path = dest / f"asset-{i:03d}.{kinds[i % len(kinds)]}"
        path.write_bytes(rng.randbytes(rng.randint(ASSET_MIN, ASSET_MAX)))
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def write_text(dest: Path) -> None:
    """Documentation-like text: paragraphs of seeded pseudo-words (gzip takes it ~3x)."""
    rng = random.Random(SEED + 1)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ei", "ou")]
    vocabulary = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(6000)})
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf, like prose
    rng.shuffle(vocabulary)
    dest.mkdir(parents=True)
    per_file = TEXT_BYTES // TEXT_FILES
    for i in range(TEXT_FILES):
        parts: list[str] = [f"Section {i}\n{'=' * 40}\n\n"]
        size = 0
        while size < per_file:
            words = rng.choices(vocabulary, weights, k=rng.randint(40, 120))
            words[0] = words[0].capitalize()
            paragraph = " ".join(words) + ".\n\n"
            parts.append(paragraph)
            size += len(paragraph)
        path = dest / f"chapter-{i:03d}.txt"
        path.write_text("".join(parts))
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))


SITE_CONF = """server {
    listen 8080;
    root /srv/app/static;
    location /data/ { alias /srv/app/data/; autoindex on; }
}
"""


def gzip_layers(root: Path, source: str, dest: Path, target: str) -> list[int]:
    """Store `source` of `root` in a new root `dest` as `target`, its layers gzipped.

    Another root, as an image is its config: this store keeps one manifest per config.
    Returns the gzip layers' sizes.
    """
    from dockyard.image import reference as refs
    from dockyard.image.store import ImageStore
    from dockyard.oci import image_spec as spec
    from dockyard.storage.leases import CONTENT

    src, dst = ImageStore(str(root)), ImageStore(str(dest))
    try:
        image = src.get(source)
        manifest = json.loads(src.content.read(image.manifest_digest))
        config_bytes = src.content.read(image.id)
        layers: list[dict[str, object]] = []
        with dst.leases.create() as lease:
            for layer in manifest["layers"]:
                with dst.content.writer() as writer, src.content.open(layer["digest"]) as f:
                    with gzip.GzipFile(
                        filename="", mode="wb", fileobj=writer, compresslevel=GZIP_LEVEL, mtime=0
                    ) as gz:
                        while chunk := f.read(1 << 20):
                            gz.write(chunk)
                    size = writer.offset
                    with lease.guard():
                        digest = writer.commit()
                        lease.add(CONTENT, digest)
                layers.append(spec.descriptor(spec.MEDIA_LAYER_GZIP, digest, size))
            dst.add_image(
                image.config, layers, [refs.parse(target)], config_bytes=config_bytes, lease=lease
            )
        return [int(str(layer["size"])) for layer in layers]
    finally:
        src.conn.close()
        dst.conn.close()


@dataclass
class Built:
    layer_sizes: list[int]  # gzip
    raw_size: int  # the layers uncompressed

    @property
    def total(self) -> int:
        return sum(self.layer_sizes)


def build_image(base: Path, cache: Path, target: str, out: IO[str]) -> Built:
    """The nginx image plus four committed layers (in base/build), gzipped: `target` in
    base/push."""
    root = base / "build"
    dy = [DOCKYARD, "--root", str(root)]
    start = time.monotonic()
    import_nginx(root, cache)
    context = base / "context"
    write_assets(context / "app" / "static")
    write_text(context / "data")
    (context / "site.conf").write_text(SITE_CONF)
    os.utime(context / "site.conf", (FIXED_MTIME, FIXED_MTIME))
    copy_app = (
        "mkdir -p /opt/app && cp -a /usr/lib/x86_64-linux-gnu /opt/app/lib"
        " && cp -a /usr/share/doc /opt/app/doc"
    )
    nop = ["sh", "-c"]  # the command of a COPY step: its history entry, never run
    steps: list[tuple[list[str], list[tuple[Path, str]]]] = [
        (["run", "--network", "none", "--name", "step1", "{image}", *nop, copy_app], []),
        (["create", "--network", "none", "--name", "step2", "{image}", *nop,
          "#(nop) COPY dir:app in /srv/app"], [(context / "app", "/srv/app")]),
        (["create", "--network", "none", "--name", "step3", "{image}", *nop,
          "#(nop) COPY dir:data in /srv/app/data"], [(context / "data", "/srv/app/data")]),
        (["create", "--network", "none", "--name", "step4", "{image}", *nop,
          "#(nop) COPY file:site.conf in /etc/nginx/conf.d/"],
         [(context / "site.conf", "/etc/nginx/conf.d/site.conf")]),
    ]  # fmt: skip
    image = NGINX_REFERENCE
    for n, (argv, copies) in enumerate(steps, 1):
        name = f"step{n}"
        run([*dy, *(image if a == "{image}" else a for a in argv)])
        for src, dest in copies:
            run([*dy, "cp", str(src), f"{name}:{dest}"])
        image = f"localhost/bench-build:{n}"
        run([*dy, "commit", "-c", NGINX_CMD, name, image])
        run([*dy, "rm", "-f", name])
    sizes = gzip_layers(root, image, base / "push", target)
    from dockyard.image.store import ImageStore

    store = ImageStore(str(root))
    try:
        raw = store.get(image).size
    finally:
        store.conn.close()
    print(f"  built in {time.monotonic() - start:.0f} s", file=out)
    return Built(sizes, raw)


def check_pushed(url: str, built: Built) -> None:
    """The manifest at `url` is the gzip one built (the figures are of what the report says)."""
    request = urllib.request.Request(
        url, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        manifest = json.load(response)
    sizes = [int(layer["size"]) for layer in manifest["layers"]]
    types = {str(layer["mediaType"]) for layer in manifest["layers"]}
    if sizes != built.layer_sizes or types != {"application/vnd.oci.image.layer.v1.tar+gzip"}:
        raise BenchError(f"the registry has another manifest than the one built: {manifest}")


# ---------------------------------------------------------------- the registry


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


# ---------------------------------------------------------------- clean-up


def mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """Unmount whatever is mounted under `path` (podman's overlay), then delete it."""
    for point in sorted(mounts_under(path), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- timing


def podman_flags(store: Path) -> list[str]:
    """As tests/runtime/peers.py runs podman: a private store, cgroupfs, runc."""
    return [
        "--root", str(store / "storage"), "--runroot", str(store / "run"),
        "--tmpdir", str(store / "tmp"), "--events-backend", "none",
        "--cgroup-manager", "cgroupfs", "--runtime", shutil.which("runc") or "runc",
    ]  # fmt: skip


def timed(*argvs: list[str]) -> list[float]:
    """`sync`, then run the commands one after another; the time at the end of each."""
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    marks = []
    for argv in argvs:
        run(argv)
        marks.append(time.perf_counter() - start)
    return marks


@dataclass
class Times:
    dockyard: list[float]
    skopeo: list[float]
    podman: list[float]
    unpack: list[float]  # dockyard pull + create
    create: list[float]  # the create part of it


def bench(runs: int, cache: Path, out: IO[str]) -> tuple[Times, Built, int]:
    skopeo = shutil.which("skopeo")
    podman = shutil.which("podman")
    if skopeo is None or podman is None or not os.path.exists(REGISTRY):
        raise BenchError("needs skopeo, podman and docker-registry (Debian packages)")
    times = Times([], [], [], [], [])
    base = Path(tempfile.mkdtemp(prefix="dy-bench-pull-"))
    try:
        registry = Registry(base)
        try:
            repo = f"127.0.0.1:{registry.port}/bench/nginx-big"
            ref = f"{repo}:latest"
            built = build_image(base, cache, ref, out)
            run([DOCKYARD, "--root", str(base / "push"), "push", "-q", "--tls-verify=false", ref])
            check_pushed(f"http://{repo.replace('/', '/v2/', 1)}/manifests/latest", built)
            remove_tree(base / "build")
            remove_tree(base / "push")
            remove_tree(base / "context")
            layers = len(built.layer_sizes)
            for i in range(runs + 1):  # the first round warms caches and is not counted
                root, root2 = base / f"root-{i}", base / f"root-unpack-{i}"
                layout, store = base / f"oci-{i}", base / f"podman-{i}"
                dy, dy2 = [DOCKYARD, "--root", str(root)], [DOCKYARD, "--root", str(root2)]
                jobs = [
                    ("dockyard", [[*dy, "pull", "-q", ref]]),
                    ("skopeo", [[skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}",
                                 f"oci:{layout}:latest"]]),
                    ("podman", [[podman, *podman_flags(store), "pull", "-q",
                                 "--tls-verify=false", ref]]),
                    ("unpack", [[*dy2, "pull", "-q", ref],
                                [*dy2, "create", "--network", "none", ref, "true"]]),
                ]  # fmt: skip
                k = i % len(jobs)
                for name, argvs in jobs[k:] + jobs[:k]:
                    marks = timed(*argvs)
                    if not i:
                        continue
                    getattr(times, name).append(marks[-1])
                    if name == "unpack":
                        times.create.append(marks[1] - marks[0])
                for path in (root, root2, layout, store):
                    remove_tree(path)
        finally:
            registry.stop()
    finally:
        remove_tree(base)
    return times, built, layers


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU, Linux {platform.release()}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    # An installed dockyard runs from its .pyc files; with this set every dockyard
    # process would compile its modules again (see bench/run_latency.py).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # through the finally blocks: clean up

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    report = sys.stderr if args.markdown else sys.stdout
    load_start = os.getloadavg()[0]
    try:
        times, built, layers = bench(args.runs, args.cache, report)
    except BenchError as err:
        print(f"pull: {err}", file=sys.stderr)
        return 1
    load_end = os.getloadavg()[0]
    med = {name: statistics.median(getattr(times, name)) for name in vars(times)}
    sizes = ", ".join(f"{s / 1e6:.1f}" for s in built.layer_sizes)
    print(f"pull: nginx + 4 layers: {built.total / 1e6:.0f} MB gzip in {layers} layers "
          f"({sizes} MB), {built.raw_size / 1e6:.0f} MB unpacked; {args.runs} runs each; "
          f"load average {load_start:.2f} at start, {load_end:.2f} at end",
          file=report)  # fmt: skip
    rows = [
        ("dockyard pull", times.dockyard),
        ("skopeo copy", times.skopeo),
        ("podman pull", times.podman),
        ("dockyard pull+create", times.unpack),
        ("  (the create)", times.create),
    ]
    for label, values in rows:
        each = " ".join(f"{v * 1000:.0f}" for v in values)
        print(f"  {label:<22} median {ms(statistics.median(values)):>8}  "
              f"min {ms(min(values)):>8}  max {ms(max(values)):>8}  (rounds: {each})",
              file=report)  # fmt: skip
    r_skopeo = med["dockyard"] / med["skopeo"]
    r_podman = med["dockyard"] / med["podman"]
    r_unpack = med["unpack"] / med["podman"]
    print(f"  dockyard/skopeo {r_skopeo:.2f}x (goal <= 0.70x); dockyard/podman {r_podman:.2f}x; "
          f"dockyard pull+create / podman pull {r_unpack:.2f}x", file=report)  # fmt: skip
    if args.markdown:
        cells = [
            date.today().isoformat(), machine(), str(args.runs),
            f"{built.total / 1e6:.0f} MB gzip, {layers} layers",
            ms(med["dockyard"]), ms(med["skopeo"]), ms(med["podman"]),
            f"{r_skopeo:.2f}x", f"{r_podman:.2f}x",
            f"{ms(med['unpack'])} ({r_unpack:.2f}x)",
            f"{load_start:.2f} / {load_end:.2f}",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
