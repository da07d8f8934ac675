"""`docker build --output`: the exporters, with docker buildx's `-o` syntax.

Parsing follows buildx (util/buildflags/export.go and controller/build's
CreateExports): CSV `key=value` fields, keys case-insensitive; one bare field
that is not `type=…` is `type=local,dest=<it>`, and `-` alone is a tar on
stdout. `tar`, `oci` and `docker` write a file, or stdout for `dest=-` (and for
no dest, except `docker`: with no dest it loads the image, which the builder
has done already). `registry` is `image` with `push=true`. An unknown type is
BuildKit's `exporter "x" could not be found`.

What is written:
- `local`: the image's root file system, its layers applied in order
  (whiteouts included) into a hidden directory inside dest and then moved into
  place, merged over what dest already holds (BuildKit merges too). Files are
  owned by the exporting user, as BuildKit's local exporter chowns them to the
  client's uid/gid; device nodes are therefore skipped.
- `tar`: that root file system as one tar, ownership kept (BuildKit's tar exporter).
- `oci` / `docker`: one archive that is both an OCI image layout and a
  docker-save tar (`dockyard.image.archive.save`); `name=` (comma-separated)
  becomes each index entry's image name, as BuildKit's exporters write it.
A dest file is written beside itself and renamed into place after an fsync, so
a reader never sees half an archive and a failed export leaves the old file;
`local` applies every layer before it moves anything, so a broken layer leaves
dest as it was.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

    from dockyard.image import reference as refs
    from dockyard.image.store import Image, ImageStore

TYPES = ("local", "tar", "oci", "docker", "image", "registry", "cacheonly")
_EXAMPLE = "e.g. type=local,dest=out or type=oci,dest=image.tar"
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class OutputError(Exception):
    """An `--output` that can't be parsed or written; the message says which and how."""


class OutputSpec:
    """One parsed `--output`: `type` (one of TYPES), `dest` (None when not given, "-"
    for stdout) and `attrs` (every other key, lowercased; `name`, `push`, ...)."""

    __slots__ = ("attrs", "dest", "type")

    def __init__(
        self, type: str, dest: str | None = None, attrs: dict[str, str] | None = None
    ) -> None:
        self.type, self.dest, self.attrs = type, dest, dict(attrs or {})

    def __repr__(self) -> str:
        return f"OutputSpec({self.type!r}, dest={self.dest!r}, attrs={self.attrs!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutputSpec):
            return NotImplemented
        return (self.type, self.dest, self.attrs) == (other.type, other.dest, other.attrs)

    @property
    def names(self) -> list[str]:
        """The image names of `name=` (comma-separated, as buildx joins `-t` tags)."""
        return [n.strip() for n in self.attrs.get("name", "").split(",") if n.strip()]

    @property
    def push(self) -> bool:
        return _bool("push", self.attrs.get("push", "false"))

    @property
    def to_stdout(self) -> bool:
        return self.dest == "-"

    @property
    def handled_by_export(self) -> bool:
        """Whether `export()` writes it; else the builder keeps, tags or pushes the image."""
        return self.type in ("local", "tar", "oci") or (self.type == "docker" and bool(self.dest))


def _bool(key: str, value: str) -> bool:
    """Go's strconv.ParseBool, which BuildKit applies to exporter options."""
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise OutputError(f'non-bool value specified for {key}: "{value}" (use true or false)')


def parse_output(text: str) -> OutputSpec:
    """Parse one `--output`/`-o` value; OutputError (one line) when it is not valid."""
    import csv

    try:
        fields = next(csv.reader([text]), [])
    except csv.Error as err:
        raise OutputError(f"invalid --output {text!r}: {err}") from None
    if len(fields) == 1 and fields[0] == text and not text.startswith("type="):
        spec = OutputSpec("tar", "-") if text == "-" else OutputSpec("local", text)
    else:
        spec = OutputSpec("")
        for field in fields:
            key, sep, value = field.partition("=")
            if not sep:
                raise OutputError(f"invalid value {field} in --output: use key=value, {_EXAMPLE}")
            key = key.strip().lower()
            if key == "type":
                spec.type = value
            elif key == "dest":
                spec.dest = value
            else:
                spec.attrs[key] = value
    _check(spec)
    return spec


def _check(spec: OutputSpec) -> None:
    """buildx's checks, made before the build so a bad output fails it early."""
    kind, dest = spec.type, spec.dest
    if not kind:
        raise OutputError(f"type is required for output: {_EXAMPLE}")
    if kind not in TYPES:
        raise OutputError(f'exporter "{kind}" could not be found: use one of {", ".join(TYPES)}')
    if kind == "local":
        if not dest:
            raise OutputError("dest is required for local exporter: type=local,dest=<directory>")
        if dest == "-":
            raise OutputError("dest cannot be stdout for local exporter: use type=tar,dest=-")
        if os.path.exists(dest) and not os.path.isdir(dest):
            raise OutputError(f"destination directory {dest} is a file: give a directory")
    elif kind in ("oci", "docker") and not _bool_or_true(spec.attrs.get("tar")):
        if not dest or dest == "-":
            raise OutputError(f"type={kind},tar=false writes a directory: give dest=<directory>")
        if os.path.exists(dest) and not os.path.isdir(dest):
            raise OutputError(f"destination directory {dest} is a file: give a directory")
    elif kind in ("tar", "oci", "docker"):
        if not dest and kind != "docker":
            spec.dest = dest = "-"
        if dest and dest != "-" and os.path.isdir(dest):
            raise OutputError(f"destination file {dest} is a directory: give a file name")
    if kind == "registry":
        spec.attrs["push"] = "true"  # buildx: registry is image,push=true
    _bool("push", spec.attrs.get("push", "false"))  # checked now, not after the build
    if kind in ("oci", "docker", "image", "registry"):  # the others ignore name=
        _references(spec)


def _bool_or_true(value: str | None) -> bool:
    """buildx reads `tar=` leniently: anything but a valid boolean means true."""
    try:
        return value is None or _bool("tar", value)
    except OutputError:
        return True


def _references(spec: OutputSpec) -> list[refs.Reference]:
    from dockyard.image import reference as refs

    found = []
    for name in spec.names:
        try:
            ref = refs.parse(name)
        except refs.ReferenceError as err:
            raise OutputError(f"invalid name in --output: {err}") from None
        if ref.digest is None and ref not in found:
            found.append(ref)
    return found


# ---------------------------------------------------------------------------- export


def export(
    store: ImageStore, image_id: str, spec: OutputSpec, stdout: BinaryIO | None = None
) -> None:
    """Write image `image_id` as `spec` asks; `stdout` (default sys.stdout) for dest `-`."""
    import functools

    _check(spec)  # a spec made by hand is held to the same rules as a parsed one
    if not spec.handled_by_export:
        raise OutputError(
            f"type={spec.type} is not written by export(): the builder keeps, tags or pushes it"
        )
    image = store.get(image_id)
    if spec.type == "local":
        _local(store, image, str(spec.dest))
        return
    if spec.type in ("oci", "docker") and not _bool_or_true(spec.attrs.get("tar")):
        _layout_dir(store, image, _references(spec), str(spec.dest))
        return
    write: Callable[[BinaryIO], None]
    if spec.type == "tar":
        write = functools.partial(_rootfs_tar, store, image)
    else:
        write = functools.partial(_archive, store, image, _references(spec))
    if spec.dest == "-":
        if stdout is None:
            import sys

            stdout = sys.stdout.buffer
        try:
            console = stdout.isatty()
        except (AttributeError, ValueError):
            console = False
        if console:
            raise OutputError(
                f"dest file is required for {spec.type} exporter. refusing to write to console"
            )
        write(stdout)
        stdout.flush()
    else:
        _write_file(str(spec.dest), write)


def _layout_dir(store: ImageStore, image: Image, names: list[refs.Reference], dest: str) -> None:
    """tar=false: the same OCI layout as a directory. Blobs already there stay; index.json
    and the other small files are replaced whole (temp + rename)."""
    import tarfile
    import tempfile

    from dockyard.runtime.state import write_atomic

    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryFile() as archive:
        _archive(store, image, names, archive)
        archive.seek(0)
        with tarfile.open(fileobj=archive, mode="r:") as tar:
            for member in tar:  # our own archive: blobs/sha256/<hex> and top-level files
                path = os.path.join(dest, member.name)
                if member.isdir():
                    os.makedirs(path, exist_ok=True)
                    continue
                data = tar.extractfile(member)
                if data is None or (member.name.startswith("blobs/") and os.path.exists(path)):
                    continue
                write_atomic(path, data.read(), 0o644)


def _layers(store: ImageStore, image: Image) -> list[str]:
    import json

    manifest = json.loads(store.content.read(image.manifest_digest))
    return [str(layer["digest"]) for layer in manifest.get("layers") or []]


def _flatten(store: ImageStore, image: Image, target: str, same_owner: bool) -> None:
    """Apply the image's layers in order onto `target` (whiteouts remove what is below)."""
    from dockyard.image.layers import LayerError, apply_layer
    from dockyard.storage.leases import CONTENT

    layers = _layers(store, image)
    # The lease keeps the blobs from an `rmi` + collection in another process meanwhile.
    with store.leases.create() as lease:
        lease.add(CONTENT, image.manifest_digest, *layers)
        for digest in layers:
            with store.content.open(digest) as raw:
                try:
                    apply_layer(raw, target, same_owner=same_owner)
                except LayerError as err:
                    raise OutputError(
                        f"cannot export image {image.short_id}: layer {digest}: {err}"
                    ) from None


def _local(store: ImageStore, image: Image, dest: str) -> None:
    import shutil
    import tempfile

    os.makedirs(dest, 0o700, exist_ok=True)  # BuildKit: MkdirAll(dest, 0700)
    # Flattened inside dest so that moving the entries is a rename on one file system.
    work = tempfile.mkdtemp(dir=dest, prefix=".dockyard-export-")
    try:
        _flatten(store, image, work, same_owner=False)
        src = os.open(work, _DIR_FLAGS)
        dst = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _merge(src, dst, skip=os.path.basename(work))
        finally:
            os.close(src)
            os.close(dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _merge(src: int, dst: int, skip: str = "") -> None:
    """Move everything below `src` into `dst`: a directory over a directory merges,
    anything else replaces what is there (never following a symlink in dst)."""
    from dockyard.image.layers import _lstat, _remove

    for name in os.listdir(src):
        if name == skip:
            continue
        st = os.lstat(name, dir_fd=src)
        old = _lstat(name, dst)
        if old is not None and stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(old.st_mode):
            inner = os.open(name, _DIR_FLAGS, dir_fd=src)
            outer = os.open(name, _DIR_FLAGS, dir_fd=dst)
            try:
                _merge(inner, outer)
                os.fchmod(outer, stat.S_IMODE(st.st_mode))
                os.utime(outer, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(inner)
                os.close(outer)
            continue
        if old is not None:
            _remove(name, dst, old)
        os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)


def _rootfs_tar(store: ImageStore, image: Image, out: BinaryIO) -> None:
    import shutil
    import tempfile

    from dockyard.engine.commit import write_tree

    tmp = os.path.join(store.root, "tmp")
    os.makedirs(tmp, 0o700, exist_ok=True)
    work = tempfile.mkdtemp(dir=tmp, prefix="export-")
    try:
        # Ownership needs root; without it the tar says who exported it.
        _flatten(store, image, work, same_owner=os.geteuid() == 0)
        write_tree(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _archive(store: ImageStore, image: Image, tags: list[refs.Reference], out: BinaryIO) -> None:
    """archive.save's tar of one image, its index entries named `tags` (none: untagged)."""
    import json
    import tarfile

    from dockyard.image import archive
    from dockyard.image.layers import _io
    from dockyard.oci import image_spec as spec

    if not tags:
        archive.save(store, [image.id], out)
        return
    # save() names an image only by tags the store has; these need not be (buildx
    # writes `-t` names into an OCI archive without tagging anything), so this is
    # save()'s layout for one image with its own names.
    manifest_bytes = store.content.read(image.manifest_digest)
    manifest = json.loads(manifest_bytes)
    config = str(manifest["config"]["digest"])
    layers = [str(layer["digest"]) for layer in manifest.get("layers") or []]
    descriptor = spec.descriptor(
        str(manifest.get("mediaType") or spec.MEDIA_MANIFEST),
        image.manifest_digest,
        len(manifest_bytes),
    )
    index: list[dict[str, object]] = []
    repositories: dict[str, dict[str, str]] = {}
    for ref in tags:
        annotations = {archive._CONTAINERD_NAME: str(ref), spec.ANNOTATION_REF_NAME: ref.tag}
        index.append({**descriptor, "annotations": annotations})
        repo = ref.familiar().rsplit(":", 1)[0]
        repositories.setdefault(repo, {})[str(ref.tag)] = image.id.split(":", 1)[1]
    docker = [
        {
            "Config": archive._blob_path(config),
            "RepoTags": [ref.familiar() for ref in tags],
            "Layers": [archive._blob_path(d) for d in layers],
        }
    ]
    with tarfile.open(fileobj=_io(out), mode="w|", format=tarfile.PAX_FORMAT) as tar:
        archive._directory(tar, "blobs")
        archive._directory(tar, "blobs/sha256")
        for digest in dict.fromkeys((config, *layers, image.manifest_digest)):
            archive._blob(tar, store, digest)
        doc = {"schemaVersion": 2, "mediaType": spec.MEDIA_INDEX, "manifests": index}
        archive._file(tar, "index.json", json.dumps(doc).encode())
        archive._file(tar, "manifest.json", json.dumps(docker).encode())
        archive._file(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        archive._file(tar, "repositories", json.dumps(repositories).encode())


def _write_file(path: str, write: Callable[[BinaryIO], None]) -> None:
    """temp + fsync + rename beside `path`: the old file or the whole new one, never half."""

    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise OutputError(f"destination file {path} is a directory: give a file name")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    from dockyard.runtime.state import write_atomic_stream

    write_atomic_stream(path, write, 0o666 & ~_umask())  # the mode os.Create (buildx) makes


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
