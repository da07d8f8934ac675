"""The walkthrough's first half, as MISSION.md has it, on the embedded default root:

    dockyard run -d -p 80:80 nginx
    curl http://localhost            # the nginx welcome page
    dockyard ps
    dockyard logs

The nginx image is the project's own (scripts/debian_images.py, from Debian's
nginx-light), imported as docker.io/library/nginx:latest; pulling it from a
registry mirror comes with the registry work. Each command is echoed as a
user would type it; the container is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--port", type=int, default=80)
    opts = parser.parse_args()
    print("\n== the walkthrough: nginx on a published port ==")
    import_nginx(Path(ROOT), opts.cache)
    cid = sh("run", "-d", "-p", f"{opts.port}:80", "nginx").stdout.strip()
    try:
        page = curl(f"http://localhost:{opts.port}" if opts.port != 80 else "http://localhost")
        title = next((line.strip() for line in page.splitlines() if "<title>" in line), "")
        print(f"  {title}  ({len(page)} bytes)")
        if "Welcome to nginx" not in page:
            raise SystemExit("demo: the page is not nginx's welcome page")
        sh("ps")
        sh("logs", cid)
    finally:
        sh("rm", "-f", cid, check=False)
    print("\n  nginx answered on the host's port through dockyard's bridge and nft DNAT.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
