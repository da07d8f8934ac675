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
    return without_mount_points(layer_changes(upper, lowers), upper, lowers)


# Where the engine bind-mounts the container's own files; the runtime creates the
# mount points when the image lacks them. Docker keeps them in an "init" layer
# under the container's, so `diff` and `commit` never show them.
MOUNT_POINTS = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")


def without_mount_points(
    changes: list[tuple[str, str]], upper: str, lowers: list[str]
) -> list[tuple[str, str]]:
    """`changes` less the mount points of MOUNT_POINTS (when they are empty files), and
    less /etc when making them is all that changed its entries (mode and owner as below)."""
    hidden = set()
    for path in MOUNT_POINTS:
        st = _lstat(upper + path)
        if st is not None and st.st_size == 0:
            hidden.add(path)
    kept = [(kind, path) for kind, path in changes if path not in hidden]
    # /etc's mtime moved when the mount points were made; other entries added to or
    # deleted from /etc itself would move it too, and then it stays listed.
    entries_changed = any(
        kind in ("A", "D") and path.startswith("/etc/") and "/" not in path[5:]
        for kind, path in kept
    )
    if hidden and not entries_changed:
        above = _lstat(upper + "/etc")
        below = next((st for st in (_lstat(d + "/etc") for d in lowers) if st is not None), None)
        if (
            above is not None
            and below is not None
            and (above.st_mode, above.st_uid, above.st_gid)
            == (below.st_mode, below.st_uid, below.st_gid)
        ):
            kept = [(kind, path) for kind, path in kept if path != "/etc"]
    return kept
