"""COPY written straight into a new snapshot's directory, not through an overlay mount.

Creating thousands of files through a mounted overlay costs tens of microseconds
each; a plain directory is several times faster. The new snapshot's directory
(its future upper dir, not mounted) gets what overlay's copy-up would have put
there: the destination's existing parent directories with their metadata, then
the copied files. A read-only view of the parent image answers the lookups
(the destination through its symlinks, whether it is a directory, --chown
names). The directory is then committed as the layer's snapshot, as containerd
commits an active one; the layer blob is its diff.

A directory of the copy over a symlink of the parent replaces it, as Docker's
untar does (upper shadows lower). When a file of the parent stands where the
destination needs a directory, the merged-view path gives the error (None).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from dockyard.build.copy_steps import _Placement
    from dockyard.build.executor import Builder, Stage
    from dockyard.storage.leases import Lease
    from dockyard.storage.snapshots import Mount

_SKIPPED_XATTRS = ("trusted.overlay.", "user.overlay.")


class _Fallback(Exception):
    """The merged view is needed (a file where a directory must be)."""


def resolve_in(root: str, rel: str) -> str:
    """`rel` with every symlink on the way resolved inside `root` (as chroot would)."""
    from dockyard.runtime.mounts import secure_join

    resolved = os.path.relpath(secure_join(root, rel), root)
    return "" if resolved == "." else resolved


def _upper(mounts: list[Mount]) -> str:
    for m in mounts:
        for opt in m.options:
            if opt.startswith("upperdir="):
                return opt.split("=", 1)[1]
        if "bind" in m.options:
            return m.source
    raise RuntimeError("a prepared snapshot without a directory")


def _copy_up(view: str, upper: str, rel: str) -> None:
    """Make directory `rel` (and its parents) in `upper` as overlay's copy-up would:
    the parent image's metadata where it has the directory, 0755 root where not."""
    parts = [p for p in rel.split("/") if p]
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        dest = os.path.join(upper, sub)
        if os.path.lexists(dest):
            continue
        src = os.path.join(view, sub)
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            os.mkdir(dest, 0o755)
            os.chmod(dest, 0o755)
            now = time.time()
            os.utime(dest, (now, now))  # made now, as Docker's (and the merged path's)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise _Fallback  # a file (or symlink) in the way: the merged view decides
        os.mkdir(dest, 0o700)
        os.chown(dest, st.st_uid, st.st_gid)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(src, follow_symlinks=False):
            if not name.startswith(_SKIPPED_XATTRS):
                os.setxattr(dest, name, os.getxattr(src, name, follow_symlinks=False))
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))


@contextlib.contextmanager
def image_view(b: Builder, image_id: str, lease: Lease | None = None) -> Iterator[str]:
    """Image `image_id` mounted read-only (an empty directory for one with no layers)."""
    from dockyard.storage.snapshots import mount_all, unmount_all

    images = b.images
    if lease is None:
        with images.leases.create() as own, image_view(b, image_id, own) as view:
            yield view
        return
    parent = images.get(image_id)
    chains = parent.chain_ids
    key = f"{b.tmp_prefix('view')}{secrets.token_hex(6)}"
    view = os.path.join(b.root, "tmp", key)
    os.makedirs(view, 0o700)
    try:
        if not chains:
            yield view
            return
        images.unpack(parent, lease)
        mount_all(images.snapshots.view(key, chains[-1]), view)
        try:
            yield view
        finally:
            unmount_all(view)
            images.snapshots.remove(key)
    finally:
        os.rmdir(view)


def copy_direct(
    b: Builder, st: Stage, placement: _Placement, key: str, created_by: str, donor_key: str
) -> str | None:
    """The COPY as a new image; None when it must go through the merged view.

    `donor_key` names the same COPY on the same parent whatever its sources hold: the
    tree of its last result lends the files that are still the same (hard links)."""
    from dockyard.build.steps import commit_snapshot_dir

    images = b.images
    chains = images.get(st.image_id).chain_ids
    active = f"{b.tmp_prefix('copy')}{secrets.token_hex(6)}"
    with images.leases.create() as lease:
        committed = False
        try:
            with image_view(b, st.image_id, lease) as view:
                upper = _upper(images.snapshots.prepare(active, chains[-1] if chains else None))
                donor = _donor_tree(b, donor_key, len(chains), lease)
                if not _prepare_tree(b, placement, view, upper, donor):
                    return None
            image_id = commit_snapshot_dir(b, st, upper, active, created_by, lease)
            committed = True
        finally:
            if not committed:
                _remove_quietly(b, active)
    b.remember(key, st.image_id, image_id)
    b.remember(donor_key, st.image_id, image_id)
    return image_id


def _donor_tree(b: Builder, donor_key: str, depth: int, lease: Lease) -> str | None:
    """The directory of the COPY layer of the image last made under `donor_key`, kept
    from garbage collection by `lease`; None if there is none (or it isn't unpacked)."""
    from dockyard.storage.leases import SNAPSHOT
    from dockyard.storage.snapshots import SnapshotNotFound

    image_id = b.cached(donor_key)
    if image_id is None:
        return None
    chains = b.images.get(image_id).chain_ids
    if len(chains) != depth + 1:
        return None  # not one layer on this parent (an old entry of another shape)
    lease.add(SNAPSHOT, chains[-1])
    try:
        return b.images.snapshots.layer_dirs(chains[-1])[0]
    except SnapshotNotFound:
        return None


def _prepare_tree(
    b: Builder, placement: _Placement, view: str, upper: str, donor: str | None = None
) -> bool:
    """Write the copy into `upper`; False when the merged view is needed instead."""
    dest_rel = resolve_in(view, placement.dest.lstrip("/"))
    into_dir = (
        placement.as_dir
        or len(placement.sources) > 1
        or any(s.is_dir for s in placement.sources)
        or os.path.isdir(os.path.join(view, dest_rel))
    )
    target_dir = dest_rel if into_dir else os.path.dirname(dest_rel)
    try:
        _copy_up(view, upper, target_dir)
    except _Fallback:
        return False
    placement.write(upper, look=view, dest=dest_rel, into_dir=into_dir, donor=donor)
    return True


def _remove_quietly(b: Builder, key: str) -> None:
    from dockyard.storage.snapshots import SnapshotNotFound

    try:
        b.images.snapshots.remove(key)
    except SnapshotNotFound:
        pass
