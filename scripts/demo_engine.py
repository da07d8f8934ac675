"""The engine part of `make demo`: `dockyard` used as one uses `docker`, no daemon.

Imports the busybox test image, runs a container in the foreground and one
detached, shows `images`, `ps`, `logs`, then stops and removes it — each
command echoed as a user would type it.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

# Run as a script, only scripts/ is on sys.path; the repo root makes `scripts` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.test_images import DEFAULT_CACHE, busybox_image

DOCKYARD = str(Path(sys.executable).parent / "dockyard")
NAME = "demo-web"


def sh(*args: str, check: bool = True) -> str:
    print(f"$ dockyard {shlex.join(args)}", flush=True)
    out = subprocess.run(
        [DOCKYARD, *args], capture_output=True, text=True, timeout=120, check=False
    )
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    if check and out.returncode != 0:
        raise SystemExit(f"demo: `dockyard {shlex.join(args)}` failed (exit {out.returncode})")
    return out.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    opts = parser.parse_args()
    image = busybox_image(opts.cache)
    print("\n== dockyard: images and containers, no daemon ==")
    sh("rm", "-f", NAME, check=False)
    sh("import", str(image.tar), "busybox")
    sh("images")
    sh("run", "--rm", "busybox", "sh", "-c", "echo hello from $(hostname), pid $$")
    sh(
        "run",
        "-d",
        "--name",
        NAME,
        "-m",
        "64m",
        "busybox",
        "sh",
        "-c",
        "echo serving; while true; do sleep 1; done",
    )
    time.sleep(0.3)
    sh("ps")
    sh("logs", NAME)
    sh("exec", NAME, "ps")
    sh("stats", "--no-stream", NAME)
    sh("stop", "-t", "1", NAME)
    sh("ps", "-a")
    sh("rm", NAME)
    sh("rmi", "busybox")
    print("\n  the container ran under its own monitor; every command above was a fresh process.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
