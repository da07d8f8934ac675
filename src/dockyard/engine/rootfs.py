"""Mounting a container's root file system for a start.

A container that is removed when it exits (`run --rm`, AutoRemove) gets its
overlay with `volatile` (Linux >= 5.10), as Podman does for `--rm`: unmounting
an overlay otherwise syncs the whole upper file system (a journal commit, most
of the cost of a short `run --rm`), for a layer that is deleted a moment later.
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.storage.snapshots import Mount


def mount_rootfs(mounts: list[Mount], target: str, volatile: bool) -> None:
    for mount in mounts:
        if mount.type != "overlay":
            mount.mount(target)
            continue
        _clear_volatile_marker(mount)
        if volatile:
            from dockyard.storage.snapshots import Mount as MountType

            fast = MountType(mount.type, mount.source, [*mount.options, "volatile"])
            try:
                fast.mount(target)
                continue
            except OSError as err:
                if err.errno != errno.EINVAL:  # EINVAL: a kernel without `volatile`
                    raise
        mount.mount(target)


def _clear_volatile_marker(mount: Mount) -> None:
    """A volatile mount leaves `work/incompat/volatile` in its workdir, and overlayfs
    refuses any later mount of that workdir while it is there (the upper dir may
    have lost writes in a crash). The layers of a container that is started again
    (a `restart` of a --rm container, say) are still the container's own: drop it."""
    for option in mount.options:
        if option.startswith("workdir="):
            marker = os.path.join(option[len("workdir=") :], "work", "incompat")
            if os.path.isdir(marker):
                import shutil

                shutil.rmtree(marker, ignore_errors=True)
