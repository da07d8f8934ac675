"""The `dockyard` command's entry point: version, help, unknown verbs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DOCKYARD = str(Path(sys.executable).parent / "dockyard")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCKYARD, *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_version_flag() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("dockyard version ")


def test_version_verb_and_json() -> None:
    out = run("version")
    assert out.returncode == 0 and "OciRuntimeSpec: 1.2.0" in out.stdout
    doc = json.loads(run("version", "--format", "{{json .}}").stdout)
    assert doc["Client"]["Os"] == "linux"


def test_unknown_verb_is_one_clear_error() -> None:
    out = run("frobnicate")
    assert out.returncode == 2
    assert "invalid choice: 'frobnicate'" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_verb_prints_help() -> None:
    out = run()
    assert out.returncode == 2
    assert "commands:" in out.stdout
