"""`docker cp`: copy between a container's file system and the host, with Docker's
archive semantics.

The container is seen through its merged view: the mounted rootfs while it
runs, otherwise its snapshot mounted under `<root>/tmp/` (read-only to copy out,
read-write to copy in) and unmounted afterwards. Paths inside the container are
resolved with the container root as `/`: every component is reached through a
directory fd, and a symlink is resolved in scope (`/` is the container root,
`..` stops there; `layers._Root.walk`), so neither an absolute link nor
`../../..` can lead to a host file. What is read is tarred without following
any link (`commit.TreeWalker`); what is written is unpacked by `layers.apply_layer`,
which never writes outside its target directory.

Volumes and bind mounts are part of that view (`copy_view.View`): a path under
a mount destination is reached in the mount's source on the host, resolved in
the same scoped way, and a directory copied out carries the mounts below it.
Writing into a read-only mount, or outside any mount of a read-only rootfs, is
refused with Docker's messages.

Ownership: without `archive` (-a), copied files belong to root (uid 0) at the
destination; with it, uid/gid come from the source.
"""

from __future__ import annotations

import contextlib
import os
import stat

from dockyard.engine.containers import EngineError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import tarfile
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

    from dockyard.engine.commit import TreeWalker
    from dockyard.engine.containers import Container, Engine
    from dockyard.engine.copy_view import View

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CopyError(EngineError):
    """A copy that can't be done; `daemon` errors print as Docker's daemon errors do."""

    def __init__(self, message: str, daemon: bool = True) -> None:
        super().__init__(message)
        self.daemon = daemon


def not_found(path: str, container: Container) -> CopyError:
    return CopyError(f"Could not find the file {path} in container {container.name}")


# ---------------------------------------------------------------------------- the view


@contextlib.contextmanager
def _container_root(engine: Engine, container: Container, writable: bool) -> Iterator[str]:
    """The directory where the container's merged file system is, while the generator runs."""
    rootfs = os.path.join(container.dir, "rootfs")
    if os.path.ismount(rootfs):
        yield rootfs
        return
    import secrets

    from dockyard.engine.commit import layer_dirs, read_only_view
    from dockyard.storage.snapshots import mount_all, unmount_all

    _, _, mounts = layer_dirs(engine, container)
    view = mounts if writable else read_only_view(mounts)
    target = os.path.join(engine.root, "tmp", f"cp-{container.id[:12]}-{secrets.token_hex(4)}")
    os.makedirs(target, 0o700)
    try:
        mount_all(view, target)
        try:
            yield target
        finally:
            unmount_all(target)
    finally:
        os.rmdir(target)


@contextlib.contextmanager
def _view(engine: Engine, container: Container, writable: bool) -> Iterator[View]:
    """The container's merged view with its volumes and bind mounts over it."""
    from dockyard.engine.copy_view import View, ViewError, container_mounts

    mounts = container_mounts(engine, container)
    with _container_root(engine, container, writable) as top:
        view = View(top, mounts)
        try:
            yield view
        except ViewError as exc:
            raise CopyError(str(exc)) from None
        finally:
            view.close()


# ---------------------------------------------------------------------------- resolving


def _real(parts: list[str]) -> list[str]:
    return [p for p in parts if p not in ("", ".")]


def _resolve(view: View, path: str, follow_last: bool) -> list[str] | None:
    from dockyard.engine.copy_view import ViewError

    try:
        return view.resolve(path, follow_last)
    except ViewError as exc:
        raise CopyError(str(exc)) from None


def _contents_only(path: str) -> bool:
    """`SRC/.`: copy what is in the directory, not the directory itself."""
    return path.endswith("/.") or path == "." or _real(path.split("/")) == []


def _base(path: str) -> str:
    parts = _real(path.rstrip("/").split("/"))
    return parts[-1] if parts else "."


# ---------------------------------------------------------------------------- tarring


def write_entry(
    out: BinaryIO,
    parent_fd: int,
    leaf: str,
    name: str,
    make_walker: Callable[[tarfile.TarFile], TreeWalker] | None = None,
) -> None:
    """Tar `leaf` of `parent_fd` (recursively, never following a link) as `name`.

    `leaf` "" is the directory `parent_fd` itself; `name` "" tars only its contents.
    """
    import tarfile

    from dockyard.engine.commit import TreeWalker, read_xattrs
    from dockyard.image.layers import _io

    with tarfile.open(
        fileobj=_io(out), mode="w|", format=tarfile.PAX_FORMAT, errors="surrogateescape"
    ) as tar:
        walker = make_walker(tar) if make_walker else TreeWalker(tar)
        st = os.fstat(parent_fd) if not leaf else os.lstat(leaf, dir_fd=parent_fd)
        if stat.S_ISDIR(st.st_mode):
            fd = os.dup(parent_fd) if not leaf else os.open(leaf, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                if name:
                    info = walker.info(name, os.fstat(fd), read_xattrs(fd))
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                walker.directory(fd, name)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            walker.regular(parent_fd, leaf, name)
        elif stat.S_ISLNK(st.st_mode):
            info = walker.info(name, st, {})
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(leaf, dir_fd=parent_fd)
            tar.addfile(info)
        else:
            raise CopyError(f"{name}: cannot copy this kind of file", daemon=False)


def _piped(produce: Callable[[BinaryIO], None], consume: Callable[[BinaryIO], None]) -> None:
    """Run `produce` (writing a tar) in a thread and `consume` (reading it) here."""
    import threading

    read_fd, write_fd = os.pipe()
    failed: list[BaseException] = []

    def producer() -> None:
        try:
            with open(write_fd, "wb") as sink:
                produce(sink)
        except BrokenPipeError:
            pass  # the consumer stopped; its error is the one to report
        except BaseException as exc:  # reported by the main thread
            failed.append(exc)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        with open(read_fd, "rb") as source:
            consume(source)
    finally:
        thread.join()
    if failed:
        raise failed[0]


def _extract(stream: BinaryIO, dir_fd: int, same_owner: bool) -> None:
    """Unpack a tar into the directory `dir_fd`, never outside it."""
    from dockyard.image.layers import LayerError, apply_layer

    try:
        # /proc/self/fd/N is the very directory already opened: no path to swap
        apply_layer(stream, f"/proc/self/fd/{dir_fd}", same_owner=same_owner)
    except LayerError as exc:
        raise CopyError(f"extracting archive: {exc}") from None


# ---------------------------------------------------------------------------- out of


@contextlib.contextmanager
def _source(engine: Engine, name: str, path: str, follow: bool) -> Iterator[tuple[View, list[str]]]:
    """(the container's view, canonical names) of an existing source path."""
    container = engine.get(name)
    if not path.startswith("/"):
        path = "/" + path
    with _view(engine, container, writable=False) as view:
        names = _resolve(view, path, follow_last=follow)
        if names is None or view.lstat(names) is None:
            raise not_found(path, container)
        yield view, names


def _tar_names(view: View, names: list[str], out: BinaryIO, rebase: str) -> None:
    found = view.parent_and_leaf(names)
    if found is None:
        raise CopyError("the source changed while it was copied")
    parent, leaf = found
    try:
        write_entry(out, parent, leaf, rebase, lambda tar: view.walker(tar, names, rebase))
    finally:
        os.close(parent)


def copy_out_stream(engine: Engine, name: str, path: str, out: BinaryIO, follow: bool) -> None:
    """`cp CONTAINER:SRC -`: a tar of SRC, its entries named after SRC's base name."""
    with _source(engine, name, path, follow) as (view, names):
        st = view.lstat(names)
        src_dir = st is not None and stat.S_ISDIR(st.st_mode)
        rebase = "." if src_dir and _contents_only(path) else _base(path)
        _tar_names(view, names, out, rebase)


def copy_out(
    engine: Engine, name: str, path: str, dest: str, *, follow: bool, archive: bool
) -> None:
    """`cp CONTAINER:SRC DEST`: Docker's rules for a file or directory to a host path."""
    with _source(engine, name, path, follow) as (view, names):
        st = view.lstat(names)
        assert st is not None
        src_dir = stat.S_ISDIR(st.st_mode)
        target, rebase = host_destination(dest, src_dir, _contents_only(path), _base(path))
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _piped(
                lambda sink: _tar_names(view, names, sink, rebase),
                lambda source: _extract(source, fd, archive),
            )
        finally:
            os.close(fd)


def host_destination(dest: str, src_dir: bool, contents: bool, base: str) -> tuple[str, str]:
    """(directory to unpack into, name of the top entry there; "" for contents only)."""
    if os.path.isdir(dest):
        return dest, "" if (src_dir and contents) else base
    if os.path.lexists(dest):
        if src_dir:
            raise CopyError(f'cannot copy a directory to a file: "{dest}"', daemon=False)
        return os.path.dirname(os.path.abspath(dest)), os.path.basename(os.path.abspath(dest))
    if dest.endswith("/") and not src_dir:
        raise CopyError(f'invalid destination: directory "{dest}" does not exist', daemon=False)
    full = os.path.abspath(dest)
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        raise CopyError(
            f'invalid output path: directory "{os.path.dirname(dest.rstrip("/")) or "."}"'
            " does not exist",
            daemon=False,
        )
    return parent, os.path.basename(full)


# ---------------------------------------------------------------------------- into


@contextlib.contextmanager
def _destination(
    engine: Engine, name: str, path: str
) -> Iterator[tuple[Container, View, list[str], os.stat_result | None]]:
    container = engine.get(name)
    if not path.startswith("/"):
        path = "/" + path
    with _view(engine, container, writable=True) as view:
        names = _resolve(view, path, follow_last=True)
        if names is None:  # a parent is missing: Docker names the directory
            raise not_found(os.path.dirname(path.rstrip("/")) or "/", container)
        yield container, view, names, view.lstat(names)


def _check_writable(container: Container, view: View, names: list[str]) -> None:
    """Docker's rule: into a mount only when it is read-write, elsewhere only when the
    rootfs is; a file bind-mounted from the host can't be replaced."""
    mount, _ = view.covering(names)
    if mount is None:
        if _read_only_rootfs(container):
            raise CopyError("container rootfs is marked read-only")
        return
    if not mount.rw:
        raise CopyError("mounted volume is marked read-only")
    if mount.file:
        raise CopyError(f"{mount.path} is a file bind-mounted from the host: cp can't replace it")


def _read_only_rootfs(container: Container) -> bool:
    import json

    try:
        with open(os.path.join(container.dir, "config.json"), "rb") as f:
            return bool((json.load(f).get("root") or {}).get("readonly"))
    except (OSError, ValueError, AttributeError):
        return False


def copy_in_stream(engine: Engine, name: str, path: str, data: BinaryIO, archive: bool) -> None:
    """`cp - CONTAINER:DEST`: a tar on stdin unpacked into the directory DEST."""
    with _destination(engine, name, path) as (container, view, names, st):
        if st is None:
            raise not_found(path, container)
        if not stat.S_ISDIR(st.st_mode):
            raise CopyError(f'destination "{name}:{path}" must be a directory', daemon=False)
        _check_writable(container, view, names)
        fd = view.open_dir(names)
        if fd is None:
            raise not_found(path, container)
        try:
            _extract(data, fd, archive)
        finally:
            os.close(fd)


def copy_in(engine: Engine, src: str, name: str, path: str, *, follow: bool, archive: bool) -> None:
    """`cp SRC CONTAINER:DEST`: Docker's rules for a host file or directory to a container."""
    full = os.path.abspath(src)
    try:
        src_st = os.stat(full) if follow else os.lstat(full)
    except FileNotFoundError:
        raise CopyError(f"lstat {full}: no such file or directory", daemon=False) from None
    if follow and os.path.islink(full):
        full = os.path.realpath(full)
    src_dir = stat.S_ISDIR(src_st.st_mode)
    contents = _contents_only(src)
    base = _base(src)
    with _destination(engine, name, path) as (container, view, names, st):
        if st is not None and stat.S_ISDIR(st.st_mode):
            target, rebase = names, "" if (src_dir and contents) else base
        elif st is not None:
            if src_dir:
                raise CopyError(f'cannot copy a directory to a file: "{name}:{path}"', daemon=False)
            target, rebase = names[:-1], names[-1]
        else:
            if path.endswith("/") and not src_dir:
                raise CopyError(
                    f'invalid destination: directory "{name}:{path}" does not exist',
                    daemon=False,
                )
            parent = view.lstat(names[:-1])
            if parent is None or not stat.S_ISDIR(parent.st_mode):
                missing = "/" + "/".join(names[:-1])
                raise not_found(missing, container)
            target, rebase = names[:-1], names[-1]
        if src_dir and rebase and view.mount_at([*target, rebase]):
            target, rebase = [*target, rebase], ""  # a directory onto a mount point: into it
        _check_writable(container, view, [*target, rebase] if rebase else target)
        fd = view.open_dir(target)
        if fd is None:
            raise not_found(path, container)
        try:
            _piped(
                lambda sink: _tar_host(full, sink, rebase),
                lambda source: _extract(source, fd, archive),
            )
        finally:
            os.close(fd)


def _tar_host(full: str, out: BinaryIO, rebase: str) -> None:
    if full == "/":
        parent, leaf = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), ""
    else:
        parent = os.open(os.path.dirname(full), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        leaf = os.path.basename(full)
    try:
        write_entry(out, parent, leaf, rebase)
    finally:
        os.close(parent)
