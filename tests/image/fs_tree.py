"""What a tree of files looks like, for comparing what a layer made with what was expected."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def tree_state(root: Path, dir_links: bool = True) -> dict[str, tuple[object, ...]]:
    """Names, types, modes, owners, link counts, mtimes, contents and xattrs below `root`.

    dir_links=False leaves out directories' link counts (overlayfs fakes them).
    """
    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = st.st_rdev
            xattrs = {
                k: os.getxattr(path, k, follow_symlinks=False)
                for k in sorted(os.listxattr(path, follow_symlinks=False))
            }
            links = None if stat.S_ISDIR(st.st_mode) and not dir_links else st.st_nlink
            seen[os.path.relpath(path, root)] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                links,
                int(st.st_mtime),
                content,
                xattrs,
            )
    return seen
