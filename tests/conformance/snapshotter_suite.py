"""Conformance suite for the snapshotter seam (containerd's snapshots/testsuite is the model).

Bind it to an implementation by subclassing in a `test_*.py` module:

    class TestMySnapshotter(SnapshotterSuite):
        @pytest.fixture
        def make_snapshotter(self) -> MakeSnapshotter:
            return lambda root: MySnapshotter(str(root))

Optionally override `lose_row`/`lose_dir` (simulate a crash that left a
directory without metadata / metadata without a directory) to run the
check()/cleanup() tests. Tests that mount need root; every mount made through
the `mounter` fixture is unmounted at teardown, and teardown fails if anything
under the test's tmp_path is still mounted.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockyard.storage.snapshots import (
    Mount,
    SnapshotError,
    SnapshotExists,
    SnapshotInUse,
    SnapshotInvalid,
    SnapshotNotFound,
    Snapshotter,
    mount_all,
    unmount,
)

MakeSnapshotter = Callable[[Path], Snapshotter]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def mounted_under(path: Path) -> list[str]:
    """Mount points in /proc/self/mountinfo at or below `path`."""
    prefix = str(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == prefix or mp.startswith(prefix + "/"):
                found.append(mp)
    return found


class Mounter:
    """Mounts snapshot mounts at fresh targets and remembers them for teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.active: list[str] = []
        self.n = 0

    def mount(self, mounts: list[Mount]) -> Path:
        self.n += 1
        target = self.base / f"m{self.n}"
        target.mkdir(parents=True)
        mount_all(mounts, str(target))
        self.active.append(str(target))
        return target

    def unmount(self, target: Path) -> None:
        unmount(str(target))
        self.active.remove(str(target))

    def unmount_everything(self) -> None:
        for target in reversed(self.active):
            try:
                unmount(target)
            except OSError:
                pass
        self.active.clear()


def read_tree(root: Path) -> dict[str, bytes | None]:
    """path -> contents (None for a directory), every entry below `root`."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def tracked_mounter(tmp_path: Path) -> Iterator[Mounter]:
    """Body of the `mounter` fixture: unmount everything, then insist nothing is left."""
    m = Mounter(tmp_path / "mnt")
    try:
        yield m
    finally:
        m.unmount_everything()
        leftover = mounted_under(tmp_path)
        for mp in reversed(leftover):  # don't let one failure leak into the host
            try:
                unmount(mp, 2)  # MNT_DETACH
            except OSError:
                pass
        assert leftover == [], f"mounts left behind: {leftover}"


def _concurrent_worker(
    make: MakeSnapshotter,
    root: Path,
    base: Path,
    n: int,
    start: float,
    q: multiprocessing.Queue[str],
) -> None:
    while time.time() < start:
        pass
    try:
        sn = make(root)
        mounter = Mounter(base / f"proc{n}")
        target = mounter.mount(sn.prepare(f"work-{n}", "base"))
        (target / f"file-{n}").write_bytes(str(n).encode())
        mounter.unmount(target)
        sn.commit(f"layer-{n}", f"work-{n}")
        # everyone unpacks "the same layer": exactly one commit of the name wins
        sn.prepare(f"extract-{n}", "base")
        try:
            sn.commit("same-layer", f"extract-{n}")
            won = "won"
        except SnapshotExists:
            sn.remove(f"extract-{n}")
            won = "lost"
        q.put(f"ok {won}")
    except Exception as exc:
        q.put(f"error {exc!r}")


class SnapshotterSuite:
    """The tests every Snapshotter must pass (not collected by itself: no `Test` prefix)."""

    @pytest.fixture
    def make_snapshotter(self) -> MakeSnapshotter:
        raise NotImplementedError("bind the suite: override the make_snapshotter fixture")

    @pytest.fixture
    def sn(self, make_snapshotter: MakeSnapshotter, tmp_path: Path) -> Snapshotter:
        return make_snapshotter(tmp_path / "root")

    @pytest.fixture
    def mounter(self, tmp_path: Path) -> Iterator[Mounter]:
        yield from tracked_mounter(tmp_path)

    # hooks for crash simulation; implementations override
    def lose_row(self, sn: Snapshotter, key: str) -> None:
        pytest.skip("implementation provides no crash simulation (lose_row)")

    def lose_dir(self, sn: Snapshotter, key: str) -> None:
        pytest.skip("implementation provides no crash simulation (lose_dir)")

    # --- helpers ------------------------------------------------------------------

    def layer(
        self,
        sn: Snapshotter,
        mounter: Mounter,
        name: str,
        parent: str | None,
        write: dict[str, bytes | None] | None = None,
        delete: list[str] | None = None,
    ) -> None:
        """Commit `name` on `parent`: write files (None = mkdir), then delete paths."""
        key = f"{name}-active"
        target = mounter.mount(sn.prepare(key, parent))
        for path in delete or []:
            p = target / path
            if p.is_dir() and not p.is_symlink():
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
        for path, data in (write or {}).items():
            p = target / path
            p.parent.mkdir(parents=True, exist_ok=True)
            if data is None:
                p.mkdir(exist_ok=True)
            else:
                p.write_bytes(data)
        mounter.unmount(target)
        sn.commit(name, key)

    # --- chains and mounts ----------------------------------------------------------

    @needs_root
    def test_chain_of_one(self, sn: Snapshotter, mounter: Mounter) -> None:
        self.layer(sn, mounter, "l1", None, {"a": b"A", "d": None, "d/b": b"B"})
        view = mounter.mount(sn.view("v", "l1"))
        assert read_tree(view) == {"a": b"A", "d": None, "d/b": b"B"}
        active = mounter.mount(sn.prepare("c", "l1"))
        assert read_tree(active) == {"a": b"A", "d": None, "d/b": b"B"}
        (active / "a").write_bytes(b"changed")
        (active / "new").write_bytes(b"N")
        # the committed layer (and a view of it) never changes
        assert (view / "a").read_bytes() == b"A"
        assert not (view / "new").exists()

    @needs_root
    def test_chain_of_two_with_whiteouts(self, sn: Snapshotter, mounter: Mounter) -> None:
        self.layer(
            sn,
            mounter,
            "l1",
            None,
            {
                "keep": b"k",
                "gone": b"g",
                "dir": None,
                "dir/x": b"x",
                "odir": None,
                "odir/old": b"o",
            },
        )
        self.layer(
            sn,
            mounter,
            "l2",
            "l1",
            {"keep": b"k2", "added": b"a", "odir": None, "odir/new": b"n"},
            delete=["gone", "dir", "odir"],
        )
        view = mounter.mount(sn.view("v", "l2"))
        assert read_tree(view) == {"keep": b"k2", "added": b"a", "odir": None, "odir/new": b"n"}
        v1 = mounter.mount(sn.view("v1", "l1"))
        assert sorted(read_tree(v1)) == ["dir", "dir/x", "gone", "keep", "odir", "odir/old"]
        # delete through an active mount is visible through that mount at once
        active = mounter.mount(sn.prepare("c", "l2"))
        (active / "keep").unlink()
        assert not (active / "keep").exists()
        assert (view / "keep").exists()

    @needs_root
    def test_chain_of_thirty(self, sn: Snapshotter, mounter: Mounter) -> None:
        parent = None
        for i in range(30):
            delete = [f"f{i - 2}"] if i >= 2 else []
            self.layer(
                sn,
                mounter,
                f"l{i}",
                parent,
                {f"f{i}": str(i).encode(), "top": str(i).encode()},
                delete,
            )
            parent = f"l{i}"
        expected = {"f28": b"28", "f29": b"29", "top": b"29"}
        view = mounter.mount(sn.view("v", "l29"))
        assert read_tree(view) == expected
        active = mounter.mount(sn.prepare("c", "l29"))
        assert read_tree(active) == expected
        (active / "f29").unlink()
        (active / "mine").write_bytes(b"m")
        assert read_tree(active) == {"f28": b"28", "top": b"29", "mine": b"m"}
        mounter.unmount(active)
        sn.commit("l30", "c")
        v30 = mounter.mount(sn.view("v30", "l30"))
        assert read_tree(v30) == {"f28": b"28", "top": b"29", "mine": b"m"}
        assert sn.stat("l30").parent == "l29"

    @needs_root
    def test_prepare_without_parent_is_writable_and_empty(
        self, sn: Snapshotter, mounter: Mounter
    ) -> None:
        target = mounter.mount(sn.prepare("scratch"))
        assert read_tree(target) == {}
        (target / "f").write_bytes(b"1")
        mounter.unmount(target)
        again = mounter.mount(sn.mounts("scratch"))
        assert read_tree(again) == {"f": b"1"}

    @needs_root
    def test_two_actives_share_a_parent(self, sn: Snapshotter, mounter: Mounter) -> None:
        self.layer(sn, mounter, "base", None, {"f": b"base"})
        self.layer(sn, mounter, "mid", "base", {"g": b"mid"})
        a = mounter.mount(sn.prepare("a", "mid"))
        b = mounter.mount(sn.prepare("b", "mid"))
        (a / "f").write_bytes(b"from a")
        assert (b / "f").read_bytes() == b"base"
        assert not (b / "only-a").exists()
        (a / "only-a").touch()
        assert not (b / "only-a").exists()

    @needs_root
    @pytest.mark.parametrize("depth", [0, 1, 2])
    def test_view_is_read_only(self, sn: Snapshotter, mounter: Mounter, depth: int) -> None:
        parent = None
        for i in range(depth):
            self.layer(sn, mounter, f"l{i}", parent, {f"f{i}": b"x"})
            parent = f"l{i}"
        mounts = sn.view("v", parent)
        assert mounts == sn.mounts("v")
        target = mounter.mount(mounts)
        with pytest.raises(OSError) as info:
            (target / "new").write_bytes(b"no")
        assert info.value.errno == errno.EROFS
        if depth:
            with pytest.raises(OSError) as info:
                (target / "f0").unlink()
            assert info.value.errno == errno.EROFS

    def test_mounts_match_prepare(self, sn: Snapshotter) -> None:
        m = sn.prepare("k")
        assert sn.mounts("k") == m
        sn.commit("c", "k")
        m2 = sn.prepare("k2", "c")
        assert sn.mounts("k2") == m2
        assert all(isinstance(x, Mount) for x in m2)
        with pytest.raises(SnapshotNotFound):
            sn.mounts("nope")

    # --- metadata -------------------------------------------------------------------

    def test_stat_and_walk(self, sn: Snapshotter) -> None:
        sn.prepare("a-key", labels={"x": "1"})
        sn.commit("a", "a-key")
        sn.prepare("b-key", "a")
        sn.view("v", "a")
        with pytest.raises(SnapshotNotFound):
            sn.stat("a-key")  # the key is gone once committed
        a = sn.stat("a")
        assert (a.kind, a.name, a.parent, dict(a.labels)) == ("committed", "a", None, {"x": "1"})
        assert a.created
        b = sn.stat("b-key")
        assert (b.kind, b.name, b.parent) == ("active", "b-key", "a")
        v = sn.stat("v")
        assert (v.kind, v.parent) == ("view", "a")
        infos = {i.name: i for i in sn.walk()}
        assert set(infos) == {"a", "b-key", "v"}
        assert infos["b-key"] == b

    def test_labels(self, sn: Snapshotter) -> None:
        sn.prepare("k", labels={"containerd.io/gc.root": "x", "a": "b"})
        assert dict(sn.stat("k").labels) == {"containerd.io/gc.root": "x", "a": "b"}
        info = sn.update_labels("k", {"a": "c"})
        assert dict(info.labels) == {"a": "c"}
        sn.commit("n", "k")
        assert dict(sn.stat("n").labels) == {"a": "c"}  # kept through commit
        sn.prepare("k2", "n")
        sn.commit("n2", "k2", labels={"layer": "2"})
        assert dict(sn.stat("n2").labels) == {"layer": "2"}

    def test_errors(self, sn: Snapshotter) -> None:
        sn.prepare("k")
        with pytest.raises(SnapshotExists):
            sn.prepare("k")
        with pytest.raises(SnapshotNotFound):
            sn.prepare("k2", "missing")
        with pytest.raises(SnapshotInvalid):
            sn.prepare("k2", "k")  # an active snapshot can't be a parent
        sn.commit("c", "k")
        with pytest.raises(SnapshotExists):
            sn.prepare("c")  # keys and names share one namespace
        sn.view("v", "c")
        with pytest.raises(SnapshotInvalid):
            sn.commit("c2", "v")  # views can't be committed
        with pytest.raises(SnapshotNotFound):
            sn.commit("c3", "nope")
        with pytest.raises(SnapshotError):
            sn.mounts("c")  # committed snapshots are mounted through a view/prepare
        assert {i.name for i in sn.walk()} == {"c", "v"}

    def test_commit_twice_fails(self, sn: Snapshotter) -> None:
        sn.prepare("k1")
        sn.prepare("k2")
        sn.commit("layer", "k1")
        with pytest.raises(SnapshotExists, match="layer"):
            sn.commit("layer", "k2")
        assert sn.stat("k2").kind == "active"  # the loser keeps its active snapshot
        with pytest.raises(SnapshotNotFound):
            sn.commit("layer2", "k1")  # k1 no longer exists

    def test_remove(self, sn: Snapshotter) -> None:
        sn.prepare("base-key")
        sn.commit("base", "base-key")
        sn.prepare("child-key", "base")
        sn.commit("child", "child-key")
        sn.prepare("active", "child")
        sn.view("view", "child")
        with pytest.raises(SnapshotInUse, match="child"):
            sn.remove("base")
        with pytest.raises(SnapshotInUse):
            sn.remove("child")
        sn.remove("active")
        with pytest.raises(SnapshotInUse, match="view"):
            sn.remove("child")
        sn.remove("view")
        sn.remove("child")  # a committed leaf
        sn.remove("base")
        with pytest.raises(SnapshotNotFound):
            sn.remove("base")
        assert list(sn.walk()) == []
        assert sn.check() == []

    @needs_root
    def test_usage(self, sn: Snapshotter, mounter: Mounter) -> None:
        self.layer(sn, mounter, "l1", None, {"big": b"x" * 100_000, "d": None, "d/s": b"12345"})
        size, inodes = sn.usage("l1")
        assert 100_005 <= size < 200_000
        assert inodes >= 3
        target = mounter.mount(sn.prepare("c", "l1"))
        assert sn.usage("c")[0] < 100_000  # only its own changes
        (target / "more").write_bytes(b"y" * 50_000)
        size, inodes = sn.usage("c")
        assert 50_000 <= size < 100_000
        assert inodes >= 1

    # --- crash recovery ---------------------------------------------------------------

    def test_check_clean(self, sn: Snapshotter) -> None:
        assert sn.check() == []
        sn.prepare("k")
        sn.commit("c", "k")
        sn.view("v", "c")
        assert sn.check() == []
        assert sn.cleanup() == []

    def test_crash_left_directory_without_row(self, sn: Snapshotter) -> None:
        sn.prepare("k")
        sn.commit("c", "k")
        sn.prepare("orphan", "c")
        self.lose_row(sn, "orphan")
        problems = sn.check()
        assert len(problems) == 1 and "orphan" in problems[0]
        assert len(sn.cleanup()) == 1
        assert sn.check() == []
        sn.prepare("orphan", "c")  # the key is usable again
        assert sn.check() == []

    def test_crash_left_row_without_directory(self, sn: Snapshotter) -> None:
        sn.prepare("k")
        sn.commit("c", "k")
        sn.prepare("broken", "c")
        self.lose_dir(sn, "broken")
        problems = sn.check()
        assert len(problems) == 1 and "broken" in problems[0]
        assert sn.cleanup() == []  # metadata is only removed by remove()
        sn.remove("broken")
        assert sn.check() == []
        assert sn.stat("c").kind == "committed"

    # --- concurrency -------------------------------------------------------------------

    @needs_root
    def test_concurrent_processes(
        self, make_snapshotter: MakeSnapshotter, tmp_path: Path, mounter: Mounter
    ) -> None:
        root = tmp_path / "root"
        sn = make_snapshotter(root)
        self.layer(sn, mounter, "base", None, {"base": b"b"})
        ctx = multiprocessing.get_context("fork")
        q: multiprocessing.Queue[str] = ctx.Queue()
        start = time.time() + 0.5
        procs = [
            ctx.Process(
                target=_concurrent_worker,
                args=(make_snapshotter, root, tmp_path / "mnt", n, start, q),
            )
            for n in range(8)
        ]
        for p in procs:
            p.start()
        results = sorted(q.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert results == ["ok lost"] * 7 + ["ok won"], results
        names = {i.name for i in sn.walk()}
        assert names == {"base", "same-layer"} | {f"layer-{n}" for n in range(8)}
        for n in range(8):
            view = mounter.mount(sn.view(f"v{n}", f"layer-{n}"))
            assert read_tree(view) == {"base": b"b", f"file-{n}": str(n).encode()}
        assert sn.check() == []
