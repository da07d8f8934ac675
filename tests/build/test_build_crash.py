"""A build killed mid-step leaves nothing `system check --repair` can't clear: the
step's container, its secret's file, a COPY's half-made snapshot and view."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.build.test_build_cli import _ctx
from tests.cli.dockyard_helper import DOCKYARD, Dockyard


def _kill_when(dy: Dockyard, ctx: Path, ready: str, secret: Path) -> None:
    proc = subprocess.Popen(
        [DOCKYARD, "--root", str(dy.root), "build", "--secret", f"id=s,src={secret}", str(ctx)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        seen = ""
        while ready not in seen and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert ready in seen, seen
        time.sleep(0.3)  # into the step
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_killed_build_is_repaired(dy: Dockyard, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("hush")
    ctx = _ctx(
        tmp_path,
        "FROM busybox\nRUN --mount=type=secret,id=s,required sleep 30\n",
    )
    _kill_when(dy, ctx, "RUN --mount", tmp_path / "secret")
    found = dy("system", "check", check=False)
    assert found.returncode == 1
    assert "step of a killed build" in found.stdout + found.stderr
    assert "leftover of a killed build: tmp/build-" in found.stdout + found.stderr
    dy("system", "check", "--repair")
    assert "consistent" in dy("system", "check").stdout
    assert dy("ps", "-aq").stdout == ""
    assert not list((dy.root / "tmp").iterdir())
    assert not any("hush" in p.read_text(errors="replace") for p in dy.root.rglob("*secret*"))
