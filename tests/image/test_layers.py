"""Applying OCI layers: every member type and attribute, whiteouts, compression, diff_id."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from dockyard.image.layer_diff import compress
from dockyard.image.layers import (
    LayerError,
    apply_layer,
    apply_layer_with_diff_id,
    normalize_name,
    open_layer,
)
from tests.image.fs_tree import tree_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers are applied as root")

MTIME = 1_600_000_000
Member = tuple[tarfile.TarInfo, bytes | None]


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes | None = None,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: float = MTIME,
    linkname: str = "",
    xattrs: dict[str, bytes] | None = None,
    dev: tuple[int, int] = (0, 0),
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, mtime
    info.linkname = linkname
    info.devmajor, info.devminor = dev
    if xattrs:
        info.pax_headers = {
            "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
        }
    if data is not None:
        info.size = len(data)
    return info, data


def file(name: str, data: bytes = b"", **kw: object) -> Member:
    return member(name, tarfile.REGTYPE, data, **kw)  # type: ignore[arg-type]


def directory(name: str, **kw: object) -> Member:
    kw.setdefault("mode", 0o755)
    return member(name, tarfile.DIRTYPE, **kw)  # type: ignore[arg-type]


def symlink(name: str, target: str, **kw: object) -> Member:
    return member(name, tarfile.SYMTYPE, linkname=target, **kw)  # type: ignore[arg-type]


def hardlink(name: str, target: str, **kw: object) -> Member:
    return member(name, tarfile.LNKTYPE, linkname=target, **kw)  # type: ignore[arg-type]


def make_tar(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def apply(tar: bytes, target: Path, **kw: bool) -> int:
    return apply_layer(io.BytesIO(tar), str(target), **kw)


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    return tree_state(root, dir_links=True)


# --- member types and attributes ---------------------------------------------------------


def test_regular_files_contents_owner_mode_mtime(tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    tar = make_tar(
        file("small", b"hello", mode=0o640, uid=1000, gid=2000, mtime=1234567890),
        file("big", big),
        file("empty"),
        file("./dot/slash", b"x"),
        file("/abs/olute", b"y"),
    )
    target = tmp_path / "t"
    target.mkdir()
    assert apply(tar, target) == len(tar)
    st = os.lstat(target / "small")
    assert (target / "small").read_bytes() == b"hello"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1000, 2000)
    assert st.st_mtime == 1234567890
    assert (target / "big").read_bytes() == big
    assert (target / "empty").read_bytes() == b""
    assert (target / "dot/slash").read_bytes() == b"x"
    assert (target / "abs/olute").read_bytes() == b"y"
    # implicit parents are made 0755
    assert stat.S_IMODE(os.lstat(target / "abs").st_mode) == 0o755


def test_subsecond_pax_mtime(tmp_path: Path) -> None:
    tar = make_tar(file("f", b"", mtime=1_600_000_000.5))
    apply(tar, tmp_path)
    assert os.lstat(tmp_path / "f").st_mtime_ns == 1_600_000_000_500_000_000


def test_special_mode_bits_survive_chown(tmp_path: Path) -> None:
    tar = make_tar(
        file("suid", b"#!", mode=0o4755, uid=1000, gid=1000),
        file("sgid", b"#!", mode=0o2755, uid=1000, gid=50),
        directory("sticky", mode=0o1777, uid=5, gid=5),
        directory("sgiddir", mode=0o2775, uid=7, gid=8),
    )
    apply(tar, tmp_path)
    modes = {n: stat.S_IMODE(os.lstat(tmp_path / n).st_mode) for n in ("suid", "sgid")}
    assert modes == {"suid": 0o4755, "sgid": 0o2755}
    st = os.lstat(tmp_path / "sticky")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o1777, 5, 5)
    assert stat.S_IMODE(os.lstat(tmp_path / "sgiddir").st_mode) == 0o2775


def test_directories_mode_applied_when_existing_and_mtime_set_last(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    (tmp_path / "d" / "lower").write_text("keep")
    tar = make_tar(
        directory("d", mode=0o751, mtime=1000),
        directory("d/e", mode=0o555, mtime=2000),
        file("d/e/f", b"in a read-only dir", mtime=3000),
        directory("./", mode=0o711, mtime=4000),
    )
    apply(tar, tmp_path)
    st = os.lstat(tmp_path / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o751, 1000)
    st = os.lstat(tmp_path / "d/e")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o555, 2000)
    assert (tmp_path / "d/lower").read_text() == "keep"
    assert os.lstat(tmp_path / "d/e/f").st_mtime == 3000
    st = os.lstat(tmp_path)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o711, 4000)


def test_symlinks_owner_and_time_on_the_link(tmp_path: Path) -> None:
    tar = make_tar(
        symlink("abs", "/etc/passwd", uid=3, gid=4, mtime=1111),
        symlink("rel", "../../../x"),
        symlink("dangling", "nowhere"),
    )
    apply(tar, tmp_path)
    st = os.lstat(tmp_path / "abs")
    assert stat.S_ISLNK(st.st_mode)
    assert (os.readlink(tmp_path / "abs"), st.st_uid, st.st_gid) == ("/etc/passwd", 3, 4)
    assert st.st_mtime == 1111
    assert os.readlink(tmp_path / "rel") == "../../../x"
    assert os.readlink(tmp_path / "dangling") == "nowhere"


def test_hard_links(tmp_path: Path) -> None:
    (tmp_path / "lowerfile").write_text("from below")
    os.symlink("target-of-link", tmp_path / "lowerlink")
    tar = make_tar(
        file("a/f", b"shared", mode=0o600),
        hardlink("b/g", "a/f"),
        hardlink("/c", "/a/f"),
        hardlink("lower2", "lowerfile"),
        hardlink("link2", "./lowerlink"),
    )
    apply(tar, tmp_path)
    f, g, c = (os.lstat(tmp_path / n) for n in ("a/f", "b/g", "c"))
    assert f.st_ino == g.st_ino == c.st_ino and f.st_nlink == 3
    assert (tmp_path / "b/g").read_bytes() == b"shared"
    assert os.lstat(tmp_path / "lower2").st_ino == os.lstat(tmp_path / "lowerfile").st_ino
    assert os.readlink(tmp_path / "link2") == "target-of-link"


@pytest.mark.parametrize(
    ("linkname", "problem"),
    [
        ("missing", "does not exist"),
        ("nodir/missing", "does not exist"),
        ("d", "is a directory"),
        ("../outside", "climbs out"),
        ("", "target directory itself"),
    ],
)
def test_bad_hard_links_are_refused(tmp_path: Path, linkname: str, problem: str) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(LayerError, match=problem) as info:
        apply(make_tar(hardlink("x", linkname)), tmp_path)
    assert str(info.value).startswith("x: ")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_devices_and_fifos(tmp_path: Path) -> None:
    tar = make_tar(
        member("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3), uid=0, gid=5),
        member("dev/loop9", tarfile.BLKTYPE, mode=0o660, dev=(7, 9)),
        member("run/fifo", tarfile.FIFOTYPE, mode=0o620, uid=1, gid=2),
    )
    target = tmp_path / "root"
    target.mkdir()
    apply(tar, target)
    st = os.lstat(target / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o666, 5)
    st = os.lstat(target / "dev/loop9")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 9)
    st = os.lstat(target / "run/fifo")
    assert stat.S_ISFIFO(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o620, 1, 2)
    # without same_owner (rootless): devices skipped, fifo kept, ownership not applied
    rootless = tmp_path / "rootless"
    rootless.mkdir()
    apply(tar, rootless, same_owner=False)
    assert not (rootless / "dev/null").exists() and not (rootless / "dev/loop9").exists()
    st = os.lstat(rootless / "run/fifo")
    assert stat.S_ISFIFO(st.st_mode) and st.st_uid == os.geteuid()


def test_xattrs_including_file_capabilities(tmp_path: Path) -> None:
    # VFS_CAP_REVISION_2, effective, permitted = CAP_NET_BIND_SERVICE
    cap = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)
    binary = bytes(range(256))
    tar = make_tar(
        file(
            "bin/ping",
            b"\x7fELF",
            mode=0o755,
            uid=0,
            xattrs={"security.capability": cap, "user.note": b"hello", "trusted.bin": binary},
        ),
        directory("d", xattrs={"user.dir": b"yes", "trusted.overlay.opaque": b"y"}),
        symlink("l", "d", xattrs={"trusted.link": b"on the link"}),
        member("p", tarfile.FIFOTYPE, xattrs={"trusted.fifo": b"f"}),
    )
    apply(tar, tmp_path)
    ping = tmp_path / "bin/ping"
    assert os.getxattr(ping, "security.capability") == cap
    assert os.getxattr(ping, "user.note") == b"hello"
    assert os.getxattr(ping, "trusted.bin") == binary
    assert os.getxattr(tmp_path / "d", "user.dir") == b"yes"
    # overlay's own xattrs are never taken from a layer
    assert "trusted.overlay.opaque" not in os.listxattr(tmp_path / "d")
    assert os.getxattr(tmp_path / "l", "trusted.link", follow_symlinks=False) == b"on the link"
    assert "trusted.link" not in os.listxattr(tmp_path / "d")
    assert os.getxattr(tmp_path / "p", "trusted.fifo", follow_symlinks=False) == b"f"


@pytest.mark.parametrize("fmt", ["gnu", "pax", "oldgnu"])
def test_sparse_files_keep_holes(tmp_path: Path, fmt: str) -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar makes the sparse archives")
    src = tmp_path / "src"
    src.mkdir()
    size = 64 << 20
    with open(src / "sparse", "wb") as f:
        f.truncate(size)
        f.seek(1 << 20)
        f.write(b"data in the middle")
        f.seek(size - 5)
        f.write(b"tail!")
    tar = subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-cf", "-", "-C", str(src), "sparse"],
        check=True,
        capture_output=True,
    ).stdout
    assert len(tar) < 1 << 20
    target = tmp_path / "t"
    target.mkdir()
    assert apply_layer_with_diff_id(io.BytesIO(tar), str(target)) == (
        len(tar),
        "sha256:" + hashlib.sha256(tar).hexdigest(),
    )
    st = os.lstat(target / "sparse")
    assert st.st_size == size
    assert st.st_blocks * 512 < 1 << 20  # holes kept
    with open(target / "sparse", "rb") as f:
        f.seek(1 << 20)
        assert f.read(18) == b"data in the middle"
        f.seek(size - 5)
        assert f.read() == b"tail!"
        f.seek(0)
        assert f.read(1 << 20) == bytes(1 << 20)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_and_link_targets(tmp_path: Path, fmt: int) -> None:
    deep = "/".join(["d" * 60] * 6) + "/" + "f" * 200
    long_target = "t" * 250
    tar = make_tar(
        file(deep, b"deep"),
        symlink("l" * 180, long_target),
        hardlink("h" * 150, deep),
        fmt=fmt,
    )
    apply(tar, tmp_path)
    assert (tmp_path / deep).read_bytes() == b"deep"
    assert os.readlink(tmp_path / ("l" * 180)) == long_target
    assert os.lstat(tmp_path / ("h" * 150)).st_ino == os.lstat(tmp_path / deep).st_ino


def test_non_ascii_names(tmp_path: Path) -> None:
    apply(make_tar(file("ünïcødé/文件", b"x")), tmp_path)
    assert (tmp_path / "ünïcødé/文件").read_bytes() == b"x"


# --- replacing what the lower layers hold --------------------------------------------------


def test_member_replaces_symlink_never_writes_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_text("sentinel")
    outside.chmod(0o755)
    target = tmp_path / "t"
    target.mkdir()
    os.symlink(outside / "file", target / "l")
    os.symlink(outside, target / "ldir")
    apply(
        make_tar(
            file("l", b"replaced"),
            directory("ldir", mode=0o700),
            member("lfifo", tarfile.FIFOTYPE),
        ),
        target,
    )
    assert (outside / "file").read_text() == "sentinel"
    assert stat.S_IMODE(os.lstat(outside).st_mode) == 0o755
    assert not os.path.islink(target / "l") and (target / "l").read_bytes() == b"replaced"
    assert os.path.isdir(target / "ldir") and not os.path.islink(target / "ldir")
    assert os.listdir(outside) == ["file"]


def test_types_replace_each_other(tmp_path: Path) -> None:
    (tmp_path / "was_dir").mkdir()
    (tmp_path / "was_dir/child").write_text("x")
    (tmp_path / "was_file").write_text("x")
    apply(make_tar(file("was_dir", b"now a file"), directory("was_file")), tmp_path)
    assert (tmp_path / "was_dir").read_bytes() == b"now a file"
    assert (tmp_path / "was_file").is_dir()


def test_parent_symlink_is_resolved_inside_target(tmp_path: Path) -> None:
    """Docker's usrmerge case: `bin -> usr/bin` below, `bin/tool` in the layer."""
    (tmp_path / "usr/bin").mkdir(parents=True)
    os.symlink("usr/bin", tmp_path / "bin")
    os.symlink("/usr", tmp_path / "absusr")
    apply(make_tar(file("bin/tool", b"1"), file("absusr/lib/x", b"2")), tmp_path)
    assert (tmp_path / "usr/bin/tool").read_bytes() == b"1"
    assert (tmp_path / "usr/lib/x").read_bytes() == b"2"
    assert os.path.islink(tmp_path / "bin")


def test_file_under_a_file_parent_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(LayerError, match=r"^f/x: f is not a directory$"):
        apply(make_tar(file("f/x", b"")), tmp_path)


# --- whiteouts -----------------------------------------------------------------------------


def lower_tree(root: Path) -> None:
    for rel in ("a/f1", "a/f2", "b/deep/er", "d/x", "d/sub/z", "keep"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    os.symlink("a", root / "la")


def test_whiteouts_delete_lower_entries(tmp_path: Path) -> None:
    lower_tree(tmp_path)
    apply(
        make_tar(
            file("a/.wh.f1"),
            file(".wh.b"),
            file(".wh.la"),
            file(".wh.never-was"),
            file("nothere/.wh.x"),
            file(".wh..wh.plnk/123.456"),
        ),
        tmp_path,
    )
    assert sorted(os.listdir(tmp_path)) == ["a", "d", "keep"]
    assert os.listdir(tmp_path / "a") == ["f2"]
    assert not (tmp_path / "nothere").exists()


def test_whiteout_through_parent_symlink_stays_inside(tmp_path: Path) -> None:
    lower_tree(tmp_path)
    apply(make_tar(file("la/.wh.f2")), tmp_path)  # la -> a
    assert os.listdir(tmp_path / "a") == ["f1"]


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_directory_keeps_only_this_layer(tmp_path: Path, marker_first: bool) -> None:
    lower_tree(tmp_path)
    marker = file("d/.wh..wh..opq")
    entries = [file("d/new", b"n"), file("d/sub/fresh", b"f")]
    members = [directory("d"), marker, *entries] if marker_first else [*entries, marker]
    apply(make_tar(*members), tmp_path)
    assert sorted(os.listdir(tmp_path / "d")) == ["new", "sub"]
    assert os.listdir(tmp_path / "d/sub") == ["fresh"]
    assert (tmp_path / "keep").exists() and sorted(os.listdir(tmp_path / "a")) == ["f1", "f2"]


def test_opaque_of_missing_directory_is_a_no_op(tmp_path: Path) -> None:
    apply(make_tar(file("nope/.wh..wh..opq")), tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", [".wh..", ".wh...", "a/.wh.", "a/.wh..."])
def test_whiteout_of_dot_names_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(LayerError, match="invalid entry name"):
        apply(make_tar(file(name)), tmp_path)
    assert (tmp_path / "a").is_dir()


# --- compression, diff_id, idempotence -----------------------------------------------------


def sample_tar() -> bytes:
    return make_tar(
        directory("etc", mode=0o755),
        file("etc/hostname", b"dockyard\n"),
        file("bin/sh", os.urandom(100_000), mode=0o755),
        symlink("bin/ash", "sh"),
        hardlink("bin/busybox", "bin/sh"),
        member("dev/zero", tarfile.CHRTYPE, dev=(1, 5)),
    )


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_compression_detected_and_diff_id(tmp_path: Path, kind: str) -> None:
    tar = sample_tar()
    blob = io.BytesIO()
    written = compress(io.BytesIO(tar), blob, kind)  # type: ignore[arg-type]
    assert written == len(blob.getvalue())
    again = io.BytesIO()
    compress(io.BytesIO(tar), again, kind)  # type: ignore[arg-type]
    assert again.getvalue() == blob.getvalue()  # same layer, same blob (gzip mtime 0)
    if kind != "none":
        assert blob.getvalue()[:2] in (b"\x1f\x8b", b"\x28\xb5")
    reference = tmp_path / "ref"
    reference.mkdir()
    apply(tar, reference)
    target = tmp_path / "t"
    target.mkdir()
    size, diff_id = apply_layer_with_diff_id(io.BytesIO(blob.getvalue()), str(target))
    assert size == len(tar)
    assert diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert snapshot(target) == snapshot(reference)
    assert open_layer(io.BytesIO(blob.getvalue())).read() == tar


class _Pipe(io.RawIOBase):
    """A non-seekable stream that hands out at most 7 bytes a read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        chunk = self._data.read(min(len(b), 7))
        b[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_open_layer_on_a_non_seekable_stream(kind: str) -> None:
    tar = sample_tar()
    blob = io.BytesIO()
    compress(io.BytesIO(tar), blob, kind)  # type: ignore[arg-type]
    stream = _Pipe(blob.getvalue())
    assert open_layer(stream).read() == tar  # type: ignore[arg-type]


def test_applying_twice_is_idempotent(tmp_path: Path) -> None:
    lower_tree(tmp_path / "once")
    lower_tree(tmp_path / "twice")
    layer = make_tar(
        file("bin/sh", b"shell", mode=0o755),
        hardlink("bin/busybox", "bin/sh"),
        symlink("bin/ash", "sh"),
        member("dev/zero", tarfile.CHRTYPE, dev=(1, 5)),
        file("a/.wh.f1"),
        directory("d", mode=0o700),
        file("d/.wh..wh..opq"),
        file("d/n", b"n"),
    )
    apply(layer, tmp_path / "once")
    apply(layer, tmp_path / "twice")
    apply(layer, tmp_path / "twice")
    assert snapshot(tmp_path / "twice") == snapshot(tmp_path / "once")


# --- broken input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (b"\x1f\x8b\x08\x00garbage-garbage", "<layer>"),
        (b"\x28\xb5\x2f\xfdgarbage-garbage", "<layer>"),
        (b"not a tar at all" * 64, "not a tar archive"),
    ],
)
def test_broken_streams_raise_layer_error(tmp_path: Path, blob: bytes, problem: str) -> None:
    with pytest.raises(LayerError, match=problem) as info:
        apply(blob, tmp_path)
    assert "\n" not in str(info.value)


def test_truncated_member_names_it(tmp_path: Path) -> None:
    tar = make_tar(file("big", os.urandom(100_000)))
    with pytest.raises(LayerError, match=r"^big: "):
        apply(tar[:50_000], tmp_path)


def test_empty_stream_is_an_empty_layer(tmp_path: Path) -> None:
    assert apply(b"", tmp_path) == 0


def test_missing_target(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="cannot open target"):
        apply(make_tar(file("x")), tmp_path / "absent")


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("a/b", ["a", "b"]),
        ("./a//b/", ["a", "b"]),
        ("/etc/x", ["etc", "x"]),
        ("/../../etc/x", ["etc", "x"]),
        ("a/../b", ["b"]),
        ("./", []),
        ("/", []),
    ],
)
def test_normalize_name(name: str, parts: list[str]) -> None:
    assert normalize_name(name) == parts


@pytest.mark.parametrize("name", ["..", "../x", "a/../../x", "./../x"])
def test_normalize_name_refuses_climbing(name: str) -> None:
    with pytest.raises(LayerError, match="climbs out"):
        normalize_name(name)
