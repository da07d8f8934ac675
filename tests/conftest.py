"""Shared fixtures: test images built from Debian packages, cached across runs."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# scripts/test_images.py is the image builder that `make images` also runs. It is
# imported as `scripts.test_images` (a namespace package from the repo root), the
# name mypy gives it, and one that cannot clash with tests/test_images.py.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import test_images  # noqa: E402

TEST_CACHE = Path(os.environ.get("DOCKYARD_TEST_CACHE", str(test_images.DEFAULT_CACHE)))


@pytest.fixture(scope="session")
def busybox_image() -> test_images.BusyboxImage:
    """The busybox image (rootfs, tar, shared bundle); treat every path in it as read-only."""
    return test_images.busybox_image(TEST_CACHE)


@pytest.fixture(scope="session")
def debian_image() -> Path:
    """The tar of the Debian minbase root file system (scripts/debian_images.py); read-only."""
    from scripts import debian_images  # on first use: it builds from the Debian mirror

    return debian_images.debian_base(TEST_CACHE)


@pytest.fixture(scope="session")
def nginx_image() -> Path:
    """The tar of the nginx root file system (Debian + nginx-light); read-only."""
    from scripts import debian_images

    return debian_images.nginx_rootfs(TEST_CACHE)


@pytest.fixture
def bundle(tmp_path: Path, busybox_image: test_images.BusyboxImage) -> Path:
    """A fresh bundle with a private, writable copy of the busybox rootfs (args: `sh`)."""
    return test_images.make_bundle(busybox_image, tmp_path / "bundle")


def teardown_network(root: Path, strict: bool = True) -> None:
    """A test root's bridges, nft table and DNS server gone (containers removed first);
    no endpoint or published port may be left in its DB."""
    if not (root / "dockyard.db").exists():
        return
    from dockyard.engine.networking import teardown_root
    from dockyard.storage import db

    conn = db.open_db(str(root))
    try:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM endpoints) + (SELECT count(*) FROM port_mappings)"
        ).fetchone()[0]
        teardown_root(str(root), conn)
    finally:
        conn.close()
    assert left == 0 or not strict, f"{left} endpoints/port mappings left in {root}"


@pytest.fixture(autouse=True)
def _state_roots_torn_down(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every dockyard state root a test made under its tmp_path (the `dy` root, other
    roots, API clients): containers removed, then bridges, nft table and DNS server."""
    tmp: Path | None = None
    if "tmp_path" in request.fixturenames:  # (asked now: torn down after this fixture)
        tmp = request.getfixturevalue("tmp_path")
    yield
    if tmp is None:
        return
    for database in sorted(tmp.glob("*/dockyard.db")) + sorted(tmp.glob("*/*/dockyard.db")):
        root = database.parent
        from dockyard.engine.containers import Engine

        try:
            engine = Engine(str(root))
        except Exception:
            continue
        try:
            for container in engine.list_containers(all=True):
                engine.remove(container.id, force=True, volumes=True)
        finally:
            engine.close()
            engine.conn.close()
        teardown_network(root, strict=False)
