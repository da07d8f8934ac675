"""Overlay upper dir → OCI layer, checked by applying it back onto the lower."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import stat
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.image.layer_diff import diff_layer
from dockyard.image.layers import LayerError, apply_layer, apply_layer_with_diff_id
from dockyard.runtime import syscalls
from tests.image.fs_tree import tree_state
from tests.image.test_layers import directory, file, hardlink, make_tar, member, symlink

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay and chown need root")

CAP = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    return tree_state(root, dir_links=False)


def lower_layer() -> bytes:
    return make_tar(
        directory("etc", mtime=1000),
        file("etc/hostname", b"lower\n", mtime=1000),
        file("etc/passwd", b"root:x:0:0\n", mtime=1000),
        directory("usr/bin", mtime=1000),
        file("usr/bin/tool", b"\x7fELF tool", mode=0o755, mtime=1000),
        file("usr/bin/other", b"other", mode=0o755, uid=5, gid=6, mtime=1000),
        directory("data", mtime=1000),
        file("data/a", b"a", mtime=1000),
        file("data/b", b"b", mtime=1000),
        file("data/sub/c", b"c", mtime=1000),
        directory("var/old", mtime=1000),
        file("var/old/log", b"log", mtime=1000),
        file("to_delete", b"bye", mtime=1000),
        directory("replace_me", mtime=1000),
        file("replace_me/x", b"x", mtime=1000),
        directory("replace_me/deep", mtime=1000),
        file("replace_me/deep/y", b"y", mtime=1000),
        symlink("lnk", "etc/hostname", mtime=1000),
        file("rename_me", b"moving", mtime=1000),
    )


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(lower, upper, merged) with the lower made from `lower_layer`; unmounted after."""
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    apply_layer(io.BytesIO(lower_layer()), str(lower))
    options = f"lowerdir={lower},upperdir={upper},workdir={work},index=off,redirect_dir=off"
    sc = syscalls.current()
    sc.mount("overlay", str(merged), "overlay", 0, options + ",metacopy=off")
    try:
        yield lower, upper, merged
    finally:
        try:
            sc.umount2(str(merged), syscalls.MNT_DETACH)
        except OSError:
            pass


def change_everything(m: Path) -> None:
    (m / "newfile").write_bytes(b"new content")
    os.chmod(m / "newfile", 0o640)
    os.chown(m / "newfile", 1000, 1000)
    (m / "etc/hostname").write_text("upper\n")
    os.unlink(m / "to_delete")
    os.unlink(m / "data/a")
    shutil.rmtree(m / "data/sub")
    shutil.rmtree(m / "var/old")
    shutil.rmtree(m / "replace_me")
    os.mkdir(m / "replace_me", 0o750)
    (m / "replace_me/fresh").write_text("fresh")
    os.link(m / "newfile", m / "newlink")
    os.link(m / "usr/bin/tool", m / "usr/bin/tool2")  # copy-up, then a link in the upper
    os.symlink("/etc/passwd", m / "newsym")
    os.symlink("dangling/target", m / "data/dangling")
    os.chmod(m / "usr/bin/tool", 0o4755)
    os.chown(m / "etc/passwd", 0, 42)
    os.lchown(m / "lnk", 7, 7)
    os.mkfifo(m / "fifo", 0o600)
    os.mknod(m / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.makedirs(m / "new/dir/deep", 0o700)
    (m / "new/dir/deep/file").write_text("deep")
    os.setxattr(m / "newfile", "user.note", b"kept")
    os.setxattr(m / "usr/bin/other", "security.capability", CAP)
    os.rename(m / "rename_me", m / "renamed")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(m / "sock"))  # sockets cannot be in a layer: skipped


def test_overlay_round_trip(tmp_path: Path, overlay: tuple[Path, Path, Path]) -> None:
    _lower, upper, merged = overlay
    change_everything(merged)
    os.unlink(merged / "sock")
    expected = tree(merged)
    syscalls.current().umount2(str(merged))

    first, second = io.BytesIO(), io.BytesIO()
    diff_id = diff_layer(str(upper), first)
    assert diff_layer(str(upper), second) == diff_id
    assert first.getvalue() == second.getvalue()
    assert diff_id == "sha256:" + hashlib.sha256(first.getvalue()).hexdigest()

    names = tarfile_names(first.getvalue())
    assert ".wh.to_delete" in names and "data/.wh.a" in names and "var/.wh.old" in names
    assert "replace_me/.wh..wh..opq" in names
    assert names.index("replace_me/.wh..wh..opq") == names.index("replace_me") + 1
    assert ".wh.rename_me" in names

    copy = tmp_path / "copy"
    copy.mkdir()
    apply_layer(io.BytesIO(lower_layer()), str(copy))
    size, applied_id = apply_layer_with_diff_id(io.BytesIO(first.getvalue()), str(copy))
    assert (size, applied_id) == (len(first.getvalue()), diff_id)
    assert tree(copy) == expected
    assert os.lstat(copy / "newfile").st_ino == os.lstat(copy / "newlink").st_ino
    assert os.getxattr(copy / "usr/bin/other", "security.capability") == CAP
    assert "trusted.overlay.opaque" not in os.listxattr(copy / "replace_me")


def tarfile_names(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return tar.getnames()


def members_of(blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        assert tar.format == tarfile.PAX_FORMAT or all(not m.pax_headers for m in tar)
        return {m.name: m for m in tar}


# --- plain directories that look like an upper ----------------------------------------------


def test_upper_without_mount(tmp_path: Path) -> None:
    up = tmp_path / "upper"
    (up / "b/opaque").mkdir(parents=True)
    (up / "b/opaque/inside").write_text("i")
    os.setxattr(up / "b/opaque", "trusted.overlay.opaque", b"y")
    os.setxattr(up / "b/opaque", "user.mine", b"1")
    os.setxattr(up / "b", "trusted.overlay.origin", b"\x00")
    os.mknod(up / "gone", stat.S_IFCHR | 0o000, 0)
    os.link(up / "gone", up / "also_gone")  # overlay shares one whiteout inode
    (up / "a").write_text("a")
    os.link(up / "a", up / "z")
    os.symlink("a", up / "s")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(up / "sock"))
    os.utime(up / "a", (1_700_000_000.7, 1_700_000_000.7))
    out = io.BytesIO()
    diff_layer(str(up), out)
    members = members_of(out.getvalue())
    assert list(members) == [
        "a",
        ".wh.also_gone",
        "b",
        "b/opaque",
        "b/opaque/.wh..wh..opq",
        "b/opaque/inside",
        ".wh.gone",
        "s",
        "z",
    ]
    assert members["a"].mtime == 1_700_000_000
    assert members["z"].islnk() and members["z"].linkname == "a"
    assert members["s"].issym() and members["s"].linkname == "a"
    assert members["b/opaque"].pax_headers == {"SCHILY.xattr.user.mine": "1"}
    assert members["b"].pax_headers == {}
    assert members["a"].uname == members["a"].gname == ""


def test_metacopy_reads_data_from_lowers(tmp_path: Path) -> None:
    lower, up = tmp_path / "lower", tmp_path / "upper"
    (lower / "d").mkdir(parents=True)
    (lower / "d/big").write_bytes(b"real data")
    (up / "d").mkdir(parents=True)
    (up / "d/big").touch()
    os.chmod(up / "d/big", 0o600)
    os.setxattr(up / "d/big", "trusted.overlay.metacopy", b"")
    out = io.BytesIO()
    with pytest.raises(LayerError, match="metacopy"):
        diff_layer(str(up), io.BytesIO())
    diff_layer(str(up), out, lowers=[str(lower)])
    target = tmp_path / "t"
    target.mkdir()
    apply_layer(io.BytesIO(out.getvalue()), str(target))
    assert (target / "d/big").read_bytes() == b"real data"
    assert stat.S_IMODE(os.lstat(target / "d/big").st_mode) == 0o600


def test_redirect_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "moved").mkdir()
    os.setxattr(tmp_path / "moved", "trusted.overlay.redirect", b"/orig")
    with pytest.raises(LayerError, match="moved: overlay redirect_dir"):
        diff_layer(str(tmp_path), io.BytesIO())


def test_devices_and_long_names(tmp_path: Path) -> None:
    up = tmp_path / "upper"
    long_dir = up / ("d" * 200) / ("e" * 200)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 200)).write_text("long")
    os.mknod(up / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 1))
    os.mkfifo(up / "fifo", 0o604)
    out = io.BytesIO()
    diff_layer(str(up), out)
    target = tmp_path / "t"
    target.mkdir()
    apply_layer(io.BytesIO(out.getvalue()), str(target))
    assert tree(target) == tree(up)


def test_same_tar_from_the_same_tree(tmp_path: Path) -> None:
    tar = make_tar(
        directory("x", mode=0o700, uid=3),
        file("x/y", b"y", xattrs={"user.a": b"\xff\x00binary"}),
        hardlink("x/z", "x/y"),
        member("c", tarfile.CHRTYPE, dev=(4, 5)),
    )
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    apply_layer(io.BytesIO(tar), str(one))
    apply_layer(io.BytesIO(tar), str(two))
    out_one, out_two = io.BytesIO(), io.BytesIO()
    assert diff_layer(str(one), out_one) == diff_layer(str(two), out_two)
    assert out_one.getvalue() == out_two.getvalue()
    value = members_of(out_one.getvalue())["x/y"].pax_headers["SCHILY.xattr.user.a"]
    assert value.encode("utf-8", "surrogateescape") == b"\xff\x00binary"
    three = tmp_path / "three"
    three.mkdir()
    apply_layer(io.BytesIO(out_one.getvalue()), str(three))
    assert os.getxattr(three / "x/y", "user.a") == b"\xff\x00binary"
    assert tree(three) == tree(one)


def test_writer_gives_tarfiles_bytes(tmp_path: Path) -> None:
    """The hand-written ustar headers are byte for byte what tarfile's PAX writer makes,
    and tarfile's own header is used where PAX is needed (long or non-ASCII names,
    xattrs, big ids), so diff_ids stay what they were."""
    from dockyard.image import layer_diff

    root = tmp_path / "upper"
    (root / "a" / "b" / ("x" * 97)).mkdir(parents=True)
    (root / "a" / "f").write_text("hello")
    (root / "a" / ("é" * 10)).write_text("u")
    (root / "a" / "b" / ("z" * 120)).write_text("long")
    os.symlink("/" + "t" * 150, root / "a" / "longlink")
    os.symlink("../f", root / "a" / "b" / "rel")
    os.link(root / "a" / "f", root / "a" / "hard")
    os.mkfifo(root / "fifo")
    os.mknod(root / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(root / "a" / "f", "user.test", b"v")
    (root / "big").write_bytes(os.urandom(70_001))
    os.chmod(root / "big", 0o4755)
    os.chown(root / "big", 1000, 3_000_000)
    os.utime(root / "a" / "hard", (0, 2**34))
    for i in range(20):
        (root / "a" / f"n{i}").write_bytes(b"x" * (i * 97))

    class TarfileShim:
        def __init__(self, tar: tarfile.TarFile) -> None:
            self.tar = tar

        def addfile(self, info: tarfile.TarInfo, fd: int | None = None) -> None:
            if fd is None:
                self.tar.addfile(info)
            else:
                with os.fdopen(os.dup(fd), "rb") as data:
                    self.tar.addfile(info, data)

    expected = io.BytesIO()
    with tarfile.open(
        fileobj=expected, mode="w|", format=tarfile.PAX_FORMAT, errors="surrogateescape"
    ) as tar:
        layer_diff._Differ(str(root), TarfileShim(tar), []).directory("")  # type: ignore[arg-type]
    written = io.BytesIO()
    layer_diff.diff_layer(str(root), written)
    assert written.getvalue() == expected.getvalue()
