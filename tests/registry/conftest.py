"""Registry server fixtures: servers on 127.0.0.1:0 with temp storage, always stopped."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.registry.helpers import Server, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A registry with deletes enabled, shared by a module's tests (use distinct repos)."""
    srv = start_server(tmp_path_factory.mktemp("registry") / "storage", "--delete")
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log.read_text()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers with the flags given; each is stopped after the test."""
    started: list[Server] = []

    def make(
        *flags: str, storage: Path | None = None, context: ssl.SSLContext | None = None
    ) -> Server:
        where = storage or tmp_path / f"storage{len(started)}"
        srv = start_server(where, *flags, context=context)
        started.append(srv)
        return srv

    try:
        yield make
    finally:
        codes = [srv.stop() for srv in started]
        assert all(code == 0 for code in codes), codes
