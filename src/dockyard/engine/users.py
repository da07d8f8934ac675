"""`-u name[:group]`: resolved against the image's /etc/passwd and /etc/group, as Docker does.

The files are read from the image's layer directories (the top-most layer that
has the file wins), so nothing is mounted to look a name up.
"""

from __future__ import annotations

import os


class UserError(ValueError):
    """A user or group the image doesn't know."""


def _read(layer_dirs: list[str], path: str) -> list[list[str]]:
    for directory in layer_dirs:
        candidate = os.path.join(directory, path)
        # A symlink in a layer (the file, or a directory on the way) could point anywhere
        # on the host: only a plain file reached without one counts.
        inside = os.path.realpath(candidate) == os.path.join(os.path.realpath(directory), path)
        if inside and os.path.isfile(candidate):
            with open(candidate, encoding="utf-8", errors="replace") as f:
                return [line.rstrip("\n").split(":") for line in f if line.strip()]
    return []


def resolve(spec: str, layer_dirs: list[str]) -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary gids) for USER[:GROUP], names or numbers."""
    user, _, group = spec.partition(":")
    passwd = [e for e in _read(layer_dirs, "etc/passwd") if len(e) >= 4]
    groups = [e for e in _read(layer_dirs, "etc/group") if len(e) >= 3]
    entry = next((e for e in passwd if e[0] == user or (user.isdigit() and e[2] == user)), None)
    if user.isdigit():
        uid = int(user)
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    elif entry is None:
        raise UserError(f"unable to find user {user}: no matching entries in passwd file")
    else:
        uid, gid = int(entry[2]), int(entry[3])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            match = next((g for g in groups if g[0] == group), None)
            if match is None:
                raise UserError(f"unable to find group {group}: no matching entries in group file")
            gid = int(match[2])
    name = entry[0] if entry else None
    extra = sorted(
        {
            int(g[2])
            for g in groups
            if name and len(g) > 3 and name in g[3].split(",") and g[2].isdigit()
        }
        - {gid}
    )
    return uid, gid, extra
