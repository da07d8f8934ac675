"""Apply tar headers with their data straight onto a directory: COPY/ADD of a build
write thousands of files this way, with the layer code's safety (every path reached
through directory fds, symlinks resolved inside the target) but without building a
tar and parsing it back."""

from __future__ import annotations

import io
import os

from dockyard.image.layers import (
    _CHUNK,
    WHITEOUT_PREFIX,
    LayerError,
    _Applier,
    _Root,
    _write_all,
    normalize_name,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import tarfile
    from collections.abc import Callable, Iterable
    from typing import IO


class _EntryApplier(_Applier):
    def __init__(self, root: _Root, same_owner: bool) -> None:
        super().__init__(root, None, same_owner)  # type: ignore[arg-type]
        self.source: Callable[[], IO[bytes]] | None = None
        # The directory of the last regular file: files come in directory order, and
        # opening every parent again for each of them was most of the time.
        self.parent: tuple[tuple[str, ...], int, list[str]] | None = None

    def member(self, m: tarfile.TarInfo) -> None:
        parts = normalize_name(m.name)
        whiteout = parts[-1].startswith(WHITEOUT_PREFIX) or parts[0].startswith(WHITEOUT_PREFIX)
        if not m.isreg() or len(parts) < 2 or whiteout:
            self.drop_parent()
            super().member(m)
            return
        key = tuple(parts[:-1])
        if self.parent is None or self.parent[0] != key:
            self.drop_parent()
            opened = self.root.walk(parts[:-1], m.name, create=True)
            assert opened is not None
            self.parent = (key, opened[0], opened[1])
        self.entry(m, self.parent[1], self.parent[2], parts[-1])

    def drop_parent(self) -> None:
        if self.parent is not None:
            os.close(self.parent[1])
            self.parent = None

    def contents(self, m: tarfile.TarInfo, fd: int) -> None:
        if self.source is None:
            raise LayerError(f"{m.name}: no file data")
        with self.source() as src:
            # A plain file: the kernel copies (a tar member's stream has the tar's fd).
            if type(src) is io.BufferedReader and isinstance(src.raw, io.FileIO):
                in_fd = src.fileno()
                while os.sendfile(fd, in_fd, None, 1 << 30) > 0:
                    pass
                return
            while chunk := src.read(_CHUNK):
                _write_all(fd, chunk)


def apply_entries(
    entries: Iterable[tuple[tarfile.TarInfo, Callable[[], IO[bytes]] | None]],
    target: str,
    *,
    same_owner: bool = True,
) -> None:
    """Write each (header, opener of a regular file's data) onto `target`, in order,
    as `apply_layer` would write the same members from a tar."""
    root = _Root(target)
    applier: _EntryApplier | None = None
    try:
        applier = _EntryApplier(root, same_owner)
        for info, opener in entries:
            applier.source = opener
            try:
                applier.member(info)
            except OSError as exc:
                raise LayerError(f"{info.name}: {exc.strerror or exc}") from None
        applier.drop_parent()
        applier.finish()
    finally:
        if applier is not None:
            applier.drop_parent()
        root.close()
