"""apply_entries: headers and data written straight onto a directory, and the donor
tree whose identical files are hard-linked instead of written again."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from dockyard.image.layer_entries import apply_entries
from dockyard.image.layers import LayerError

Entry = tuple[tarfile.TarInfo, Callable[[], IO[bytes]] | None]


def regular(name: str, data: bytes, mtime: int = 1_000_000, mode: int = 0o644) -> Entry:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, mode
    return info, lambda: io.BytesIO(data)


def directory(name: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_000_000
    return info, None


def test_entries_are_written_with_their_metadata(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    apply_entries([directory("d"), regular("d/f", b"hello", mode=0o600)], str(target))
    st = (target / "d" / "f").stat()
    assert (target / "d" / "f").read_bytes() == b"hello"
    assert (st.st_mode & 0o7777, st.st_mtime, st.st_nlink) == (0o600, 1_000_000, 1)


def test_a_path_through_a_symlink_out_of_the_target_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "esc").symlink_to(outside)
    apply_entries([regular("esc/f", b"x")], str(target))
    # resolved inside the target (as chroot would): /<tmp>/outside does not exist there
    assert not (outside / "f").exists()
    with pytest.raises(LayerError):
        apply_entries([regular("../f", b"x")], str(target))


def _donor(tmp_path: Path, entries: list[Entry]) -> Path:
    donor = tmp_path / "donor"
    donor.mkdir()
    apply_entries(entries, str(donor))
    return donor


def test_identical_files_of_the_donor_are_linked(tmp_path: Path) -> None:
    donor = _donor(
        tmp_path,
        [
            directory("d"),
            regular("d/same", b"same bytes"),
            regular("d/edited", b"old bytes!"),  # same size, other bytes
            regular("d/touched", b"t", mtime=5),
            regular("d/chmodded", b"c", mode=0o600),
        ],
    )
    target = tmp_path / "t"
    target.mkdir()
    entries = [
        directory("d"),
        regular("d/same", b"same bytes"),
        regular("d/edited", b"new bytes!"),
        regular("d/touched", b"t", mtime=6),
        regular("d/chmodded", b"c", mode=0o644),
        regular("d/new", b"n"),
    ]
    apply_entries(entries, str(target), donor=str(donor))

    def inode(root: Path, name: str) -> int:
        return (root / "d" / name).stat().st_ino

    assert inode(target, "same") == inode(donor, "same")
    for name in ("edited", "touched", "chmodded"):
        assert inode(target, name) != inode(donor, name), name
    assert (target / "d" / "edited").read_bytes() == b"new bytes!"
    assert (donor / "d" / "edited").read_bytes() == b"old bytes!"  # the donor is untouched
    assert (target / "d" / "touched").stat().st_mtime == 6
    assert (donor / "d" / "touched").stat().st_mtime == 5
    assert (target / "d" / "chmodded").stat().st_mode & 0o777 == 0o644
    assert (target / "d" / "new").read_bytes() == b"n"


def test_the_donor_is_never_reached_through_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    apply_entries([regular("f", b"secret")], str(elsewhere))
    donor = tmp_path / "donor"
    donor.mkdir()
    (donor / "d").symlink_to(elsewhere)
    target = tmp_path / "t"
    target.mkdir()
    apply_entries([directory("d"), regular("d/f", b"secret")], str(target), donor=str(donor))
    assert (target / "d" / "f").stat().st_ino != (elsewhere / "f").stat().st_ino
    assert (target / "d" / "f").read_bytes() == b"secret"


def test_a_missing_donor_or_file_is_written(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    apply_entries([regular("f", b"x")], str(target), donor=str(tmp_path / "none"))
    assert (target / "f").read_bytes() == b"x"
    donor = _donor(tmp_path, [regular("g", b"y")])
    os.chmod(donor / "g", 0o644)
    apply_entries([regular("g", b"yy")], str(target), donor=str(donor))
    assert (target / "g").read_bytes() == b"yy"
