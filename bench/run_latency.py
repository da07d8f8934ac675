"""`dockyard run --rm busybox true` against docker and podman.

The same busybox rootfs tar is imported into each; runs alternate between the
tools, 20 each by default; the median wall time of each and the ratios are
printed. Also: 100 containers started one after another through the Python API
(create+start, then removed), and `dockyard --version` (CLI start-up).

Docker is Debian's docker.io (/usr/bin/docker, /usr/sbin/dockerd; `make bench-deps`).
When no dockerd answers on /var/run/docker.sock the script starts a private one
for itself: data root, exec root, socket and pidfile under its temp dir, no
iptables, no bridge, no IP forwarding (the host's network is not touched),
cgroupfs, overlay2 (vfs if overlay2 fails); it is stopped and its mounts and
leftover processes (containerd, shims) removed at the end, also on failure.

    bench/run_latency.py --cache /var/cache/dockyard-test [--runs 20] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


# Debian's docker.io; /usr/local/bin/docker (earlier on PATH here) is another client.
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
SYSTEM_DOCKER_SOCK = "/var/run/docker.sock"
DOCKERD_READY_TIMEOUT = 60.0
DOCKERD_STOP_TIMEOUT = 20.0
# What dockerd 20.10 and its shims create outside --data-root/--exec-root (the trust
# key, the shims' socket dir, plugin discovery); removed after if they were not there
# before (directories only when empty). Deepest first.
DOCKERD_HOST_PATHS = [
    "/etc/docker/key.json",
    "/run/containerd/s",
    "/run/containerd",
    "/var/run/docker/plugins",
    "/var/run/docker",
]


def docker_answers(host: str) -> bool:
    try:
        out = subprocess.run(
            [DOCKER, "-H", host, "info"], capture_output=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def pids_mentioning(path: Path) -> list[int]:
    """Processes whose command line names `path` (the private containerd, shims)."""
    needle = str(path).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cleanup_private_dockerd(base: Path) -> None:
    """SIGTERM, then SIGKILL, what is left of the private daemon; unmount its mounts."""
    pids = pids_mentioning(base)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.1)
        if not pids:
            break
    for point in mounts_under(base):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


# A private dockerd that leaves the host's network alone (no bridge, no iptables).
NO_NETWORK = (
    "--iptables=false",
    "--ip6tables=false",
    "--ip-forward=false",
    "--ip-masq=false",
    "--bridge=none",
)


def start_dockerd(
    base: Path, driver: str, network: tuple[str, ...] = NO_NETWORK, ulimits: bool = True
) -> subprocess.Popen[bytes] | None:
    """A private dockerd with its own data, exec root, socket and pidfile under `base`;
    None (its log's tail printed) when it does not answer in time."""
    (base / "data").mkdir(parents=True, exist_ok=True)
    (base / "exec").mkdir(exist_ok=True)
    config = base / "daemon.json"
    config.write_text("{}\n")
    argv = [
        DOCKERD,
        "--config-file",
        str(config),
        "--data-root",
        str(base / "data"),
        "--exec-root",
        str(base / "exec"),
        "-H",
        f"unix://{base / 'docker.sock'}",
        "--pidfile",
        str(base / "docker.pid"),
        *network,
        "--storage-driver",
        driver,
        "--exec-opt",
        "native.cgroupdriver=cgroupfs",
    ]
    if ulimits:
        argv += ["--default-ulimit", "nofile=20000:20000"]
    with open(base / f"dockerd-{driver}.log", "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    host = f"unix://{base / 'docker.sock'}"
    deadline = time.monotonic() + DOCKERD_READY_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if (base / "docker.sock").exists() and docker_answers(host):
            return proc
        time.sleep(0.2)
    stop_process(proc, DOCKERD_STOP_TIMEOUT)
    tail = (base / f"dockerd-{driver}.log").read_text(errors="replace").splitlines()[-5:]
    print(f"  dockerd ({driver}) did not come up: " + " / ".join(tail), file=sys.stderr)
    return None


@contextlib.contextmanager
def docker_peer(base: Path, notes: list[str]) -> Iterator[list[str] | None]:
    """The docker argv: the system dockerd if one answers, else a private one (stopped after)."""
    if not (os.path.exists(DOCKER) and os.path.exists(DOCKERD)):
        notes.append("docker: Debian's docker.io is not installed (make bench-deps)")
        yield None
        return
    if os.path.exists(SYSTEM_DOCKER_SOCK) and docker_answers(f"unix://{SYSTEM_DOCKER_SOCK}"):
        notes.append(f"docker: the running dockerd on {SYSTEM_DOCKER_SOCK}")
        yield [DOCKER, "-H", f"unix://{SYSTEM_DOCKER_SOCK}"]
        return
    private = base / "docker"
    proc = None
    absent = [p for p in DOCKERD_HOST_PATHS if not os.path.lexists(p)]
    try:
        for driver in ("overlay2", "vfs"):
            proc = start_dockerd(private, driver)
            if proc:
                notes.append(f"docker: private dockerd, storage driver {driver}, --network none")
                break
            cleanup_private_dockerd(private)
        if not proc:
            notes.append("docker: the private dockerd did not start; not measured")
            yield None
            return
        yield [DOCKER, "-H", f"unix://{private / 'docker.sock'}"]
    finally:
        stop_private_dockerd(proc, private)
        remove_created(absent)


def stop_private_dockerd(proc: subprocess.Popen[bytes] | None, private: Path) -> None:
    """Remove the private dockerd's containers, stop it, remove its directories."""
    if proc:
        host = f"unix://{private / 'docker.sock'}"
        ids = docker_ids(host)
        if ids:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    [DOCKER, "-H", host, "rm", "-f", *ids],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        stop_process(proc, DOCKERD_STOP_TIMEOUT)
    cleanup_private_dockerd(private)


def remove_created(paths: list[str]) -> None:
    """Remove the host paths dockerd created that were absent before it started."""
    for path in paths:
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)


def docker_ids(host: str) -> list[str]:
    out = subprocess.run(
        [DOCKER, "-H", host, "ps", "-aq"], capture_output=True, timeout=30, check=False
    )
    return out.stdout.decode().split()


def api_hundred(root: str) -> float:
    import dockyard

    client = dockyard.Client(root)
    start = time.perf_counter()
    containers = []
    for _ in range(100):
        container = client.containers.create("busybox", "sleep 60", network_mode="none")
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
    extra: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp,
        docker_peer(Path(tmp), extra) as docker,
    ):
        base = Path(tmp)
        root = str(base / "dockyard")
        tools: dict[str, list[str]] = {"dockyard": [DOCKYARD, "--root", root]}
        # Like docker's here (its private daemon has no bridge): no network set-up, which
        # bench/network_setup.py measures on its own.
        run_flags: dict[str, list[str]] = {"dockyard": ["--network", "none"]}
        subprocess.run(
            [*tools["dockyard"], "import", str(image.tar), "busybox"],
            check=True,
            capture_output=True,
        )
        if docker:
            subprocess.run(
                [*docker, "import", str(image.tar), "busybox"],
                check=True,
                capture_output=True,
                timeout=300,
            )
            tools["docker"] = docker
            run_flags["docker"] = [*ULIMITS, "--network", "none"]
        podman = podman_argv(base)
        try:
            if podman:
                subprocess.run(
                    [*podman, "import", str(image.tar), "busybox"], check=True, capture_output=True
                )
                tools["podman"] = podman
                run_flags["podman"] = ULIMITS
            times: dict[str, list[float]] = {name: [] for name in tools}
            for i in range(opts.runs + 1):
                for name, argv in tools.items():
                    t = timed([*argv, "run", "--rm", *run_flags[name], "busybox", "true"])
                    if i:  # the first round warms caches
                        times[name].append(t)
            version = [timed([DOCKYARD, "--version"]) for _ in range(20)]
            hundred = api_hundred(root)
        finally:
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
    print(f"  100 containers through the Python API (run detach): {hundred:.2f} s")
    print(f"  dockyard --version: median {statistics.median(version) * 1000:.1f} ms")
    for line in extra:
        print(f"  {line}")
    if opts.markdown:
        uname = os.uname()

        def cell(name: str) -> str:
            return f"{medians[name]:.1f} ms" if name in medians else "-"

        def ratio(peer: str) -> str:
            return f"{medians['dockyard'] / medians[peer]:.2f}x" if peer in medians else "-"

        print(
            f"| {time.strftime('%Y-%m-%d')} | {uname.machine}, {os.cpu_count()} CPU,"
            f" Linux {uname.release} | {cell('dockyard')} | {cell('docker')} | {cell('podman')}"
            f" | {ratio('docker')} / {ratio('podman')} | {hundred:.2f} s"
            f" | {statistics.median(version) * 1000:.1f} ms | |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
