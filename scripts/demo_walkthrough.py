"""The walkthrough's first half, as MISSION.md has it, on the embedded default root:

    dockyard pull nginx
    dockyard run -d -p 80:80 nginx
    curl http://localhost            # the nginx welcome page
    dockyard ps
    dockyard logs

then MISSION.md's CI/CD part: examples/pipeline/Jenkinsfile replayed (build, test,
push to the same registry, run, curl) by scripts/pipeline.py.

There is no internet here: a local `dockyard registry serve` stands in for
Docker Hub as docker.io's mirror (a registries.conf the demo's commands are
given through DOCKYARD_REGISTRIES_CONF). The demo pushes the project's own
nginx image (scripts/debian_images.py, from Debian's nginx-light) into it,
removes the local copy, and then runs the walkthrough word for word. Each
command is echoed as a user would type it; the container, the registry and
its storage are gone at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.debian_images import import_nginx
from scripts.test_images import DEFAULT_CACHE

DOCKYARD = str(Path(sys.executable).parent / "dockyard")
ROOT = "/var/lib/dockyard"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print(f"$ dockyard {shlex.join(args)}", flush=True)
    out = subprocess.run([DOCKYARD, *args], capture_output=True, text=True, timeout=120)
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    if check and out.returncode != 0:
        raise SystemExit(f"demo: `dockyard {shlex.join(args)}` failed (exit {out.returncode})")
    return out


def curl(url: str, timeout: float = 10.0) -> str:
    """`curl -s URL` (the real curl), retried while nginx starts (bounded)."""
    print(f"$ curl -s {url}", flush=True)
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["curl", "-s", "--max-time", "2", url], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout:
            return out.stdout
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {url} did not answer (curl exit {out.returncode})")
        time.sleep(0.1)


def start_registry(storage: Path) -> tuple[subprocess.Popen[str], str]:
    """`dockyard registry serve` on a free loopback port; (process, "127.0.0.1:PORT")."""
    print(f"$ dockyard registry serve --listen 127.0.0.1:0 --storage {storage} &", flush=True)
    proc = subprocess.Popen(
        [DOCKYARD, "registry", "serve", "--listen", "127.0.0.1:0", "--storage", str(storage)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # "listening on http://127.0.0.1:PORT"
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"demo: the registry did not start: {line}")
    print(f"  {line}")
    return proc, line.rsplit("/", 1)[-1]


def cicd(cache: Path, registry: str) -> None:
    """MISSION.md's CI/CD part: examples/pipeline/Jenkinsfile, replayed as the Docker
    Pipeline plugin runs it (build, test inside, push to the registry, run, curl)."""
    import socket

    from scripts.pipeline import run as pipeline
    from scripts.test_images import busybox_image

    print("\n-- CI/CD: examples/pipeline/Jenkinsfile, the commands Jenkins would run --")
    if not sh("images", "-q", "busybox").stdout.strip():
        sh("import", str(busybox_image(cache).tar), "busybox")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    served = pipeline([DOCKYARD], registry, port, "1")
    if served.strip() != "hello from my-app":
        raise SystemExit(f"demo: the pipeline's app answered {served!r}")
    sh("rmi", "my-app:1", f"{registry}/my-app:1", f"{registry}/my-app:latest")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--port", type=int, default=80)
    opts = parser.parse_args()
    print("\n== the walkthrough: pull nginx from a docker.io mirror, publish port 80 ==")
    with tempfile.TemporaryDirectory(prefix="dockyard-demo-registry-") as tmp:
        registry, address = start_registry(Path(tmp) / "storage")
        cid = ""
        try:
            conf = Path(tmp) / "registries.conf"
            conf.write_text(
                'unqualified-search-registries = ["docker.io"]\n\n'
                '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n\n'
                f'[[registry.mirror]]\nlocation = "{address}"\ninsecure = true\n'
            )
            os.environ["DOCKYARD_REGISTRIES_CONF"] = str(conf)
            print(f"  (docker.io is mirrored by {address}: {conf})")
            import_nginx(Path(ROOT), opts.cache)
            sh("tag", "nginx", f"{address}/library/nginx:latest")
            sh("push", "-q", f"{address}/library/nginx:latest")
            sh("rmi", "nginx", f"{address}/library/nginx:latest")
            # Copies an earlier demo pulled (nginx@sha256:…) share its layer: gone too.
            older = sh("images", "-q", "nginx").stdout.split()
            if older:
                sh("rmi", "-f", *older)
            print("\n-- the walkthrough --")
            sh("pull", "nginx")
            cid = sh("run", "-d", "-p", f"{opts.port}:80", "nginx").stdout.strip()
            url = "http://localhost" if opts.port == 80 else f"http://localhost:{opts.port}"
            page = curl(url)
            title = next((line.strip() for line in page.splitlines() if "<title>" in line), "")
            print(f"  {title}  ({len(page)} bytes)")
            if "Welcome to nginx" not in page:
                raise SystemExit("demo: the page is not nginx's welcome page")
            sh("ps")
            sh("logs", cid)
            cicd(opts.cache, address)
        finally:
            if cid:
                sh("rm", "-f", cid, check=False)
            registry.terminate()
            try:
                registry.wait(timeout=10)
            except subprocess.TimeoutExpired:
                registry.kill()
                registry.wait()
    print("\n  nginx came from the registry mirror and answered on the host's port 80")
    print("  through dockyard's bridge and nft DNAT.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
