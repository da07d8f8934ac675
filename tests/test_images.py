"""The busybox test image and private bundles (scripts/test_images.py)."""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path

import pytest
from scripts import test_images
from scripts.test_images import BusyboxImage


def test_image_has_busybox_and_applet_links(busybox_image: BusyboxImage) -> None:
    rootfs = busybox_image.rootfs
    busybox = rootfs / "bin" / "busybox"
    assert busybox.is_file() and os.access(busybox, os.X_OK)
    for applet in ("bin/sh", "bin/ls", "sbin/ip", "usr/bin/env"):
        link = rootfs / applet
        assert link.is_symlink(), applet
        # Relative links: they resolve inside the rootfs wherever it lives.
        assert not os.path.isabs(os.readlink(link))
        assert link.resolve() == busybox.resolve()


def test_image_has_users_groups_and_dirs(busybox_image: BusyboxImage) -> None:
    etc = busybox_image.rootfs / "etc"
    assert (etc / "passwd").read_text().splitlines() == [
        "root:x:0:0:root:/root:/bin/sh",
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false",
    ]
    assert (etc / "group").read_text().splitlines() == ["root:x:0:", "nobody:x:65534:"]
    for name in ("proc", "sys", "dev", "tmp", "root", "var", "run", "home"):
        assert (busybox_image.rootfs / name).is_dir(), name
    assert (busybox_image.rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_tar_lists_relative_members(busybox_image: BusyboxImage) -> None:
    with tarfile.open(busybox_image.tar) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "./bin/busybox" in members
    assert members["./bin/sh"].issym() and members["./bin/sh"].linkname == "busybox"
    assert all(name == "." or name.startswith("./") for name in members)
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())


def test_shared_bundle_config(busybox_image: BusyboxImage) -> None:
    config = json.loads((busybox_image.bundle / "config.json").read_text())
    assert config["root"]["path"] == "rootfs"
    assert config["process"]["terminal"] is False
    assert (busybox_image.bundle / "rootfs" / "bin" / "busybox").is_file()


def test_second_call_is_a_cache_hit(busybox_image: BusyboxImage) -> None:
    before = busybox_image.dir.stat().st_mtime_ns, busybox_image.tar.stat().st_mtime_ns
    start = time.perf_counter()
    again = test_images.busybox_image(busybox_image.dir.parent)
    elapsed = time.perf_counter() - start
    assert again == busybox_image
    assert (again.dir.stat().st_mtime_ns, again.tar.stat().st_mtime_ns) == before
    assert elapsed < 0.5


def test_build_in_fresh_cache_leaves_no_temp_dirs(tmp_path: Path) -> None:
    image = test_images.busybox_image(tmp_path)
    assert image.dir == tmp_path / f"busybox-{image.key[:12]}"
    assert not list(tmp_path.glob(".busybox-*.tmp*"))
    assert (image.rootfs / "bin" / "sh").resolve() == (image.rootfs / "bin" / "busybox")


def test_make_bundle_is_private_with_valid_config(
    busybox_image: BusyboxImage, tmp_path: Path
) -> None:
    dest = test_images.make_bundle(
        busybox_image,
        tmp_path / "b",
        ["/bin/echo", "hi"],
        hostname="box",
        linux={"resources": {"memory": {"limit": 64 << 20}}},
    )
    config = json.loads((dest / "config.json").read_text())
    assert config["ociVersion"]
    assert config["process"]["args"] == ["/bin/echo", "hi"]
    assert config["process"]["terminal"] is False
    assert config["root"]["path"] == "rootfs"
    assert config["hostname"] == "box"
    # Overrides merge into the defaults rather than replacing them.
    assert config["linux"]["resources"]["memory"]["limit"] == 64 << 20
    assert config["linux"]["resources"]["devices"]
    assert {"type": "pid"} in config["linux"]["namespaces"]
    # A real copy: writing into it leaves the shared image alone.
    copied = dest / "rootfs" / "bin" / "busybox"
    assert copied.stat().st_ino != (busybox_image.rootfs / "bin" / "busybox").stat().st_ino
    (dest / "rootfs" / "etc" / "scratch").write_text("x")
    assert not (busybox_image.rootfs / "etc" / "scratch").exists()


def test_bundle_fixture(bundle: Path) -> None:
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["sh"]
    assert (bundle / "rootfs" / "bin" / "sh").is_symlink()


def test_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args: object) -> None:
        raise RuntimeError("crash in the middle of the build")

    monkeypatch.setattr(test_images, "write_tar", crash)
    with pytest.raises(RuntimeError, match="crash"):
        test_images.busybox_image(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".busybox.lock"]
