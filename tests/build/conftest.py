"""The build CLI tests use the CLI's `dy` fixture (a private root with busybox)."""

from __future__ import annotations

from tests.cli.conftest import dy

__all__ = ["dy"]
