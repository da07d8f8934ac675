"""Hostile layers never change anything outside the target directory.

Each apply runs in a forked child chrooted into a small fake world (tmp/world with
/etc/passwd, /outside/f and /target), so an escape through an absolute path
would land in the fake world, where the check sees it, not on the host.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tempfile
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.image.layers import LayerError, apply_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")

OK, REFUSED, CRASHED = 0, 3, 4


def make_world(root: Path, lower: bool = False) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "outside/dir").mkdir(parents=True)
    (root / "outside/f").write_text("sentinel")
    (root / "target").mkdir()
    if lower:  # a hostile lower layer: symlinks pointing out of the target
        os.symlink("/outside", root / "target/a")
        os.symlink("../../..", root / "target/b")
        os.symlink("/etc/passwd", root / "target/x")
        os.symlink("/", root / "target/etc")


def world_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything in the world except what is below /target."""
    state: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != "target"]
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            s = os.lstat(path)
            content: object = None
            if stat.S_ISREG(s.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(s.st_mode):
                content = os.readlink(path)
            state[os.path.normpath(os.path.join(rel_dir, name))] = (
                s.st_mode,
                s.st_uid,
                s.st_gid,
                s.st_nlink,
                s.st_mtime_ns,
                content,
            )
    target = os.lstat(root / "target")
    state["target"] = (stat.S_IFMT(target.st_mode), target.st_ino)
    return state


def apply_in_chroot(world: Path, tar: bytes, same_owner: bool = True) -> tuple[int, str]:
    """Apply `tar` onto /target inside a chroot of `world`: (OK|REFUSED|CRASHED, message)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = CRASHED
        try:
            os.close(r)
            os.chroot(world)
            os.chdir("/")
            try:
                apply_layer(io.BytesIO(tar), "/target", same_owner=same_owner)
                code = OK
            except LayerError as exc:
                os.write(w, str(exc).encode())
                code = REFUSED
        except BaseException:
            os.write(w, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), message


def entry(
    kind: str, name: str, link: str = "", data: bytes = b"x"
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "chr": tarfile.CHRTYPE,
        "fifo": tarfile.FIFOTYPE,
    }[kind]
    info.mode = 0o700 if kind == "dir" else 0o666
    info.mtime = 1
    info.linkname = link
    if kind == "chr":
        info.devmajor, info.devminor = 1, 3
    if kind == "file":
        info.size = len(data)
    return info, data


def build(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def check(world: Path, tar: bytes, same_owner: bool = True) -> tuple[int, str]:
    before = world_state(world)
    code, message = apply_in_chroot(world, tar, same_owner)
    assert code in (OK, REFUSED), message
    if code == REFUSED:
        assert message and "\n" not in message
    assert world_state(world) == before
    return code, message


# --- generated hostile layers --------------------------------------------------------------

SEGMENTS = ["a", "b", "x", "..", ".", "", "etc", "passwd", "outside", "f", "target"]
SEGMENTS += [".wh.a", ".wh.outside", ".wh.f", ".wh..wh..opq", ".wh...", ".wh.."]
PREFIXES = ["", "", "/", "./", "../", "/../", "//", "../../"]
LINK_TARGETS = [
    "/",
    "/etc",
    "/etc/passwd",
    "/outside",
    "/outside/f",
    "..",
    "../..",
    "../../outside",
    "../outside/f",
    "../../etc/passwd",
    "/target",
    ".",
]

names = st.builds(
    lambda prefix, segments: prefix + "/".join(segments),
    st.sampled_from(PREFIXES),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5),
)
members = st.lists(
    st.tuples(
        st.sampled_from(["file", "file", "dir", "symlink", "symlink", "hardlink", "chr", "fifo"]),
        names,
        st.one_of(names, st.sampled_from(LINK_TARGETS)),
    ),
    min_size=1,
    max_size=10,
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layer=members, lower=st.booleans(), same_owner=st.booleans())
def test_generated_layers_stay_inside_target(
    tmp_path: Path, layer: list[tuple[str, str, str]], lower: bool, same_owner: bool
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        world = Path(tmp)
        make_world(world, lower=lower)
        tar = build(*(entry(kind, name, link) for kind, name, link in layer))
        check(world, tar, same_owner)
        # a second apply (idempotence on hostile input) is just as contained
        check(world, tar, same_owner)


# --- explicit escapes ----------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Path:
    make_world(tmp_path / "world")
    return tmp_path / "world"


def test_dotdot_climbing_out_is_refused(world: Path) -> None:
    code, message = check(world, build(entry("file", "../../etc/x")))
    assert code == REFUSED and message == "../../etc/x: path climbs out of the target directory"


def test_absolute_name_lands_inside_target(world: Path) -> None:
    assert check(world, build(entry("file", "/etc/x", data=b"in")))[0] == OK
    assert (world / "target/etc/x").read_bytes() == b"in"


def test_symlink_parent_to_outside_is_resolved_inside(world: Path) -> None:
    tar = build(entry("symlink", "a", "/outside"), entry("file", "a/x", data=b"in"))
    assert check(world, tar)[0] == OK
    assert (world / "target/outside/x").read_bytes() == b"in"
    assert os.readlink(world / "target/a") == "/outside"


def test_symlink_parent_climbing_with_dotdot(world: Path) -> None:
    tar = build(entry("symlink", "a", "../.."), entry("file", "a/etc/x", data=b"in"))
    assert check(world, tar)[0] == OK
    assert (world / "target/etc/x").read_bytes() == b"in"


def test_symlink_loop_is_refused(world: Path) -> None:
    tar = build(entry("symlink", "a", "b"), entry("symlink", "b", "a"), entry("file", "a/x"))
    code, message = check(world, tar)
    assert code == REFUSED and "too many levels of symlinks" in message


@pytest.mark.parametrize("link", ["/etc/passwd", "../outside/f", "a/f", "../../etc/passwd"])
def test_hardlinks_out_of_target_are_refused(world: Path, link: str) -> None:
    tar = build(entry("symlink", "a", "/outside"), entry("hardlink", "h", link))
    code, message = check(world, tar)
    assert code == REFUSED and message.startswith("h: hard link target")
    assert os.lstat(world / "outside/f").st_nlink == 1


def test_hardlink_to_absolute_name_means_inside_target(world: Path) -> None:
    tar = build(entry("file", "etc/passwd", data=b"mine"), entry("hardlink", "h", "/etc/passwd"))
    assert check(world, tar)[0] == OK
    assert (world / "target/h").read_bytes() == b"mine"


@pytest.mark.parametrize("name", [".wh...", "a/.wh...", "../.wh.outside", ".wh.."])
def test_whiteouts_climbing_out_are_refused(world: Path, name: str) -> None:
    (world / "target/a").mkdir()
    code, _ = check(world, build(entry("file", name)))
    assert code == REFUSED


def test_whiteouts_through_symlinks_stay_inside(world: Path) -> None:
    os.symlink("/outside", world / "target/l")
    os.symlink("../..", world / "target/up")
    tar = build(
        entry("file", "l/.wh.f"),
        entry("file", "l/.wh..wh..opq"),
        entry("file", "up/outside/.wh.f"),
        entry("file", "/.wh.outside"),
    )
    assert check(world, tar)[0] == OK
    assert (world / "outside/f").read_text() == "sentinel"


def test_entries_replace_symlinks_to_outside(world: Path) -> None:
    os.symlink("/etc/passwd", world / "target/x")
    os.symlink("/outside", world / "target/d")
    os.symlink("/outside/f", world / "target/h")
    tar = build(
        entry("file", "x", data=b"replaced"),
        entry("dir", "d"),
        entry("file", "y"),
        entry("hardlink", "h", "y"),
        entry("dir", "./"),
    )
    assert check(world, tar)[0] == OK
    assert (world / "target/x").read_bytes() == b"replaced"
    assert stat.S_ISDIR(os.lstat(world / "target/d").st_mode)


def test_device_without_same_owner_is_skipped(world: Path) -> None:
    tar = build(entry("chr", "dev/null"), entry("fifo", "dev/fifo"))
    assert check(world, tar, same_owner=False)[0] == OK
    assert not os.path.lexists(world / "target/dev/null")
    assert stat.S_ISFIFO(os.lstat(world / "target/dev/fifo").st_mode)


def test_non_directory_root_entry_is_refused(world: Path) -> None:
    code, message = check(world, build(entry("symlink", "./", "/outside")))
    assert code == REFUSED and "root of the layer must be a directory" in message


def test_plain_tmp_dir_with_relative_escapes(tmp_path: Path) -> None:
    """Without chroot too: nothing appears in tmp except inside target."""
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/f").write_text("sentinel")
    tars = [
        build(entry("symlink", "a", "../outside"), entry("file", "a/x")),
        build(entry("symlink", "a", "../../.."), entry("dir", "a/outside")),
        build(entry("file", "../outside/g")),
        build(entry("hardlink", "h", "../outside/f")),
        build(entry("symlink", "w", "../outside"), entry("file", "w/.wh.f")),
    ]
    for tar in tars:
        before = sorted(str(p) for p in tmp_path.rglob("*") if target not in p.parents)
        try:
            apply_layer(io.BytesIO(tar), str(target))
        except LayerError:
            pass
        after = sorted(str(p) for p in tmp_path.rglob("*") if target not in p.parents)
        assert after == before
        assert (tmp_path / "outside/f").read_text() == "sentinel"
        assert os.lstat(tmp_path / "outside/f").st_nlink == 1
