"""The snapshotter conformance suite bound to OverlaySnapshotter, plus overlay specifics."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.runtime import syscalls
from dockyard.storage import db
from dockyard.storage.overlay import OverlaySnapshotter
from dockyard.storage.snapshots import Mount, Snapshotter, parse_options
from tests.conformance.snapshotter_suite import (
    MakeSnapshotter,
    Mounter,
    SnapshotterSuite,
    needs_root,
    read_tree,
    tracked_mounter,
)


def _overlay(sn: Snapshotter) -> OverlaySnapshotter:
    assert isinstance(sn, OverlaySnapshotter)
    return sn


def _snapshot_dir(sn: OverlaySnapshotter, key: str) -> Path:
    row = sn.conn.execute("SELECT id FROM snapshots WHERE key = ?", (key,)).fetchone()
    return Path(sn.dir) / str(row[0])


class TestOverlaySnapshotter(SnapshotterSuite):
    @pytest.fixture
    def make_snapshotter(self) -> MakeSnapshotter:
        return lambda root: OverlaySnapshotter(str(root))

    def lose_row(self, sn: Snapshotter, key: str) -> None:
        """A crash after the directory was made but before the row was committed."""
        o = _overlay(sn)
        with db.transaction(o.conn):
            o.conn.execute("DELETE FROM snapshots WHERE key = ?", (key,))

    def lose_dir(self, sn: Snapshotter, key: str) -> None:
        """Someone deleted the directory under a live row."""
        shutil.rmtree(_snapshot_dir(_overlay(sn), key))


# --- overlay specifics -------------------------------------------------------------


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    yield from tracked_mounter(tmp_path)


def _upper(m: Mount) -> Path:
    """Where an active snapshot's writes land (its diff/)."""
    if m.type == "bind":
        return Path(m.source)
    return Path(next(o for o in m.options if o.startswith("upperdir="))[len("upperdir=") :])


def test_layout_and_mount_options(tmp_path: Path) -> None:
    sn = OverlaySnapshotter(str(tmp_path))
    (m,) = sn.prepare("base-key")
    base_dir = _snapshot_dir(sn, "base-key")
    assert (base_dir / "diff").is_dir() and (base_dir / "work").is_dir()
    assert (m.type, m.source, m.options) == ("bind", str(base_dir / "diff"), ["bind", "rw"])
    sn.commit("base", "base-key")
    sn.prepare("mid-key", "base")
    sn.commit("mid", "mid-key")
    (m,) = sn.prepare("c", "mid")
    c_dir = _snapshot_dir(sn, "c")
    assert m.type == "overlay"
    opts = dict(o.split("=", 1) for o in m.options if "=" in o)
    assert opts["upperdir"] == str(c_dir / "diff")
    assert opts["workdir"] == str(c_dir / "work")
    mid_dir = _snapshot_dir(sn, "mid")
    assert opts["lowerdir"] == f"{mid_dir / 'diff'}:{base_dir / 'diff'}"  # nearest first
    (v,) = sn.view("v", "base")
    assert (v.type, v.source, v.readonly) == ("bind", str(base_dir / "diff"), True)
    (v,) = sn.view("v-mid", "mid")
    assert (v.type, v.readonly) == ("overlay", True)
    assert "upperdir" not in ",".join(v.options)
    (v2,) = sn.view("v2")
    assert v2.readonly
    # metadata lives in the shared dockyard.db
    assert (tmp_path / "dockyard.db").exists()


def test_ids_are_not_reused(tmp_path: Path) -> None:
    sn = OverlaySnapshotter(str(tmp_path))
    sn.prepare("a")
    first = _snapshot_dir(sn, "a").name
    sn.remove("a")
    sn.prepare("b")
    assert _snapshot_dir(sn, "b").name != first
    assert not (Path(sn.dir) / first).exists()


def test_stray_temp_dirs_are_cleaned(tmp_path: Path) -> None:
    sn = OverlaySnapshotter(str(tmp_path))
    sn.prepare("a")
    (Path(sn.dir) / "new-deadbeef" / "diff").mkdir(parents=True)  # crash mid-create
    (Path(sn.dir) / "rm-7-cafe" / "diff").mkdir(parents=True)  # crash mid-remove
    assert len(sn.check()) == 2
    assert len(sn.cleanup()) == 2
    assert sn.check() == []
    assert sorted(os.listdir(sn.dir)) == [_snapshot_dir(sn, "a").name]


def test_parse_options() -> None:
    flags, data = parse_options(["bind", "ro", "nosuid", "lowerdir=/a", "index=off"])
    assert flags == syscalls.MS_BIND | syscalls.MS_RDONLY | syscalls.MS_NOSUID
    assert data == ["lowerdir=/a", "index=off"]
    flags, _ = parse_options(["ro", "rw"])
    assert flags == 0


@needs_root
def test_deep_chain_needs_relative_paths(tmp_path: Path, mounter: Mounter) -> None:
    """Options longer than a page: mounted via chdir + relative lowerdirs."""
    root = tmp_path / ("r" * 200) / ("o" * 200)
    sn = OverlaySnapshotter(str(root))
    parent = None
    for i in range(40):
        (m,) = sn.prepare(f"k{i}", parent)
        fs = _upper(m)
        (fs / f"f{i}").write_bytes(str(i).encode())
        if i:
            (fs / "top").write_bytes(str(i).encode())
        sn.commit(f"l{i}", f"k{i}")
        parent = f"l{i}"
    (m,) = sn.prepare("c", parent)
    assert len(",".join(m.options)) > os.sysconf("SC_PAGE_SIZE")
    target = mounter.mount([m])
    tree = read_tree(target)
    assert tree["top"] == b"39" and tree["f0"] == b"0" and len(tree) == 41
    (target / "new").write_bytes(b"n")
    assert (_upper(m) / "new").read_bytes() == b"n"
    view = mounter.mount(sn.view("v", parent))  # a read-only overlay, also compacted
    assert len(read_tree(view)) == 41
    assert os.getcwd() != str(root / "snapshots")


def test_mount_records_syscalls(tmp_path: Path) -> None:
    calls: list[tuple[object, ...]] = []

    class Recorder(syscalls.LinuxSyscalls):
        def __init__(self) -> None:
            pass

        def mount(
            self,
            source: str | None,
            target: str,
            fstype: str | None,
            flags: int = 0,
            data: str | None = None,
        ) -> None:
            calls.append((source, target, fstype, flags, data))

    with syscalls.replaced(Recorder()):
        Mount("bind", "/src", ["bind", "ro"]).mount("/t")
        Mount("overlay", "overlay", ["lowerdir=/a:/b"]).mount("/t")
    assert calls == [
        ("/src", "/t", None, syscalls.MS_BIND, None),
        (None, "/t", None, syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY, None),
        ("overlay", "/t", "overlay", 0, "lowerdir=/a:/b"),
    ]
