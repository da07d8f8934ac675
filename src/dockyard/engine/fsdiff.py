"""`docker diff`: what a container changed, from its writable layer against its image.

The same walk as Docker's overlay driver (archive.OverlayChanges): every entry
of the upper dir, depth first in name order; a whiteout (0/0 character device)
or an opaque directory that hides one of the image's is a deletion (D); an
entry the image has too is a change (C), except a directory whose size, mode
and mtime are as in the image; anything else is an addition (A). The parent of
an added or deleted entry is listed as changed (C) right before it, once.
Nothing is followed: lower layers are looked at with lstat.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.engine.containers import Engine

_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _opaque(path: str) -> bool:
    for name in _OPAQUE:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def layer_changes(upper: str, lowers: list[str]) -> list[tuple[str, str]]:
    """(kind, path) pairs, kind one of "A", "C", "D", in Docker's order."""
    changes: list[tuple[str, str]] = []
    changed_dirs: set[str] = set()

    def in_lowers(path: str) -> os.stat_result | None:
        for lower in lowers:
            st = _lstat(lower + path)
            if st is not None:
                return st
        return None

    def visit(rel: str) -> None:
        try:
            entries = sorted(os.listdir(upper + rel) if rel else os.listdir(upper))
        except OSError:
            return
        for entry in entries:
            path = f"{rel}/{entry}"
            if path.startswith("/.wh..wh."):
                continue
            st = _lstat(upper + path)
            if st is None:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            if whiteout or (is_dir and _opaque(upper + path) and in_lowers(path) is not None):
                kind = "D"
            else:
                kind = "A"
                old = in_lowers(path)
                if old is not None:
                    kind = "C"
                    if (
                        is_dir
                        and stat.S_ISDIR(old.st_mode)
                        and old.st_size == st.st_size
                        and old.st_mode == st.st_mode
                        and int(old.st_mtime) == int(st.st_mtime)
                    ):
                        kind = ""
            if kind:
                if is_dir:
                    changed_dirs.add(path)
                if kind in ("A", "D"):
                    parent = os.path.dirname(path)
                    if parent != "/" and parent not in changed_dirs:
                        changes.append(("C", parent))
                        changed_dirs.add(parent)
                changes.append((kind, path))
            if is_dir:
                visit(path)

    visit("")
    return changes


def container_changes(engine: Engine, name: str) -> list[tuple[str, str]]:
    """`docker diff CONTAINER`."""
    from dockyard.engine.commit import layer_dirs

    container = engine.get(name)
    upper, lowers, _ = layer_dirs(engine, container)
    return layer_changes(upper, lowers)
