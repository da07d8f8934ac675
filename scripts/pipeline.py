"""Replay examples/pipeline/Jenkinsfile without Jenkins: the commands the Docker
Pipeline plugin runs for each step, with dockyard as `docker`.

    python scripts/pipeline.py --registry 127.0.0.1:5000 [--root DIR] [--port 8080]

The registry must be running (e.g. `dockyard registry serve --listen 127.0.0.1:5000`).
Every command is echoed as Jenkins does (`+ docker …`); the first failure stops it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
EXAMPLE = HERE / "examples" / "pipeline"


class Pipeline:
    def __init__(self, docker: list[str], workspace: Path) -> None:
        self.docker = docker
        self.workspace = workspace

    def sh(self, *args: str, timeout: float = 300) -> str:
        print("+ docker " + shlex.join(args), flush=True)
        out = subprocess.run(
            [*self.docker, *args],
            cwd=self.workspace,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        if out.returncode != 0:
            raise SystemExit(f"pipeline failed: docker {' '.join(args)} exited {out.returncode}")
        return out.stdout.strip()


def run(docker: list[str], registry: str, port: int, build_number: str) -> str:
    """The pipeline's four stages; returns what the running app served."""
    p = Pipeline(docker, EXAMPLE)
    image = f"my-app:{build_number}"
    # Build: docker.build("my-app:N")
    p.sh("build", "-t", image, ".")
    # Test: app.inside { sh '…' }
    p.sh("inspect", "-f", ".", image)
    ws = str(EXAMPLE)
    cid = p.sh("run", "-t", "-d", "-w", ws, "-v", f"{ws}:{ws}:rw", image, "cat")
    try:
        p.sh("exec", cid, "sh", "-c", 'test "$(cat /www/index.html)" = "hello from my-app"')
    finally:
        p.sh("stop", "--time=1", cid)
        p.sh("rm", "-f", cid)
    # Push: app.push(); app.push('latest') inside docker.withRegistry
    for tag in (build_number, "latest"):
        p.sh("tag", image, f"{registry}/my-app:{tag}")
        p.sh("push", f"{registry}/my-app:{tag}")
    # Run: docker.image(REGISTRY/my-app:latest).run('-p PORT:8080'); curl; c.stop()
    cid = p.sh("run", "-d", "-p", f"{port}:8080", f"{registry}/my-app:latest")
    try:
        served = _get(f"http://127.0.0.1:{port}/")
        print(f"+ curl -fsS http://localhost:{port}/\n{served}", end="")
    finally:
        p.sh("stop", cid)
        p.sh("rm", "-f", cid)
    return served


def _get(url: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", required=True, help="host:port of a running registry")
    parser.add_argument("--root", help="dockyard's state root")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--build-number", default=os.environ.get("BUILD_NUMBER", "1"))
    args = parser.parse_args()
    docker = [str(HERE / ".venv" / "bin" / "dockyard")]
    if args.root:
        docker += ["--root", args.root]
    served = run(docker, args.registry, args.port, args.build_number)
    return 0 if served.strip() == "hello from my-app" else 1


if __name__ == "__main__":
    sys.exit(main())
