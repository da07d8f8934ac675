"""`dockyard registry gc`: remove blobs no manifest needs, and abandoned uploads.

Mark and sweep under the storage's exclusive gc lock (manifest pushes take it
shared while they check and record their blobs): the blobs every manifest of
every repository needs (its own bytes, config, layers) are kept, and so is any
blob younger than the grace period, which a push in progress may be about to
reference (the server refreshes the mtime of a blob it tells a client exists).
Uploads nobody wrote to for `upload_age` seconds, and stale ingests, go too.
A dry run reports the same without removing anything. Safe while servers run.
"""

from __future__ import annotations

import os
import time

from dockyard.registry.storage import GRACE_SECONDS, RegistryStorage

UPLOAD_AGE_SECONDS = 24 * 3600.0


class GcReport:
    """What a collection removed (or, in a dry run, would remove)."""

    def __init__(self) -> None:
        self.blobs: list[tuple[str, int]] = []
        self.kept_young: list[str] = []
        self.uploads: list[str] = []
        self.ingests: list[str] = []

    @property
    def freed(self) -> int:
        return sum(size for _, size in self.blobs)


def collect(
    root: str,
    dry_run: bool = False,
    grace: float = GRACE_SECONDS,
    upload_age: float = UPLOAD_AGE_SECONDS,
) -> GcReport:
    """Collect garbage in the registry storage at `root`; see the module docstring."""
    report = GcReport()
    storage = RegistryStorage(root, grace)
    try:
        with storage.exclusive_lock():
            referenced = storage.meta.referenced_blobs()
            cutoff = time.time() - grace
            for digest in storage.blobs.digests():
                if digest in referenced:
                    continue
                path = storage.blobs._blob_path(digest)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                if st.st_mtime > cutoff:
                    report.kept_young.append(digest)
                    continue
                if not dry_run:
                    storage.blobs.delete(digest)
                report.blobs.append((digest, st.st_size))
            if not dry_run and report.blobs:
                storage.meta.forget_blobs([d for d, _ in report.blobs])
        for upload in storage.uploads.stale(upload_age):
            if not dry_run:
                storage.uploads.remove(upload)
            report.uploads.append(upload.id)
        if dry_run:
            report.ingests = storage.blobs.stale_ingests(grace)
        else:
            report.ingests = storage.blobs.remove_stale_ingests(grace)
    finally:
        storage.close()
    return report
