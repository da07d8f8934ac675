"""Running `dockyard` against a private state root, for the CLI tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DOCKYARD = str(Path(sys.executable).parent / "dockyard")


class Dockyard:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [DOCKYARD, "--root", str(self.root), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert "Traceback" not in out.stderr, out.stderr
        if check:
            assert out.returncode == 0, f"dockyard {' '.join(args)}: {out.stderr}"
        return out
