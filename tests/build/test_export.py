"""`build --output`: buildx's -o syntax, and the local/tar/oci/docker exporters."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from scripts.test_images import BusyboxImage

from dockyard.build.export import OutputError, OutputSpec, export, parse_output
from dockyard.image import archive
from dockyard.image.store import Image, ImageStore
from dockyard.oci import image_spec


def layer(files: dict[str, bytes | None]) -> bytes:
    """A layer tar: bytes are a file, None a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode, info.uid, info.gid = len(data), 0o644, 1000, 1000
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path / "root"))


@pytest.fixture
def busybox(store: ImageStore, busybox_image: BusyboxImage) -> Image:
    with open(busybox_image.tar, "rb") as f:
        return store.import_tar(f, "busybox")


@pytest.fixture
def layered(store: ImageStore) -> Image:
    """Two layers: the second deletes `gone`, empties `dir` (opaque) and adds files."""
    base = layer({"keep": b"k", "gone": b"g", "dir": None, "dir/a": b"a", "dir/b": b"b"})
    upper = layer({".wh.gone": b"", "dir": None, "dir/.wh..wh..opq": b"", "dir/c": b"c"})
    digests = [store.content.put(base), store.content.put(upper)]
    config = image_spec.new_config(digests, "2026-01-01T00:00:00Z")
    layers = [
        image_spec.descriptor(image_spec.MEDIA_LAYER, d, len(b))
        for d, b in zip(digests, (base, upper), strict=True)
    ]
    return store.add_image(config, layers, [])


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


# ---------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    ("text", "type_", "dest", "attrs"),
    [
        ("out", "local", "out", {}),
        ("-", "tar", "-", {}),
        ("type=local,dest=out", "local", "out", {}),
        ("TYPE=local, Dest=out", "local", "out", {}),
        ("type=tar,dest=rootfs.tar", "tar", "rootfs.tar", {}),
        ("type=tar", "tar", "-", {}),
        ("type=oci", "oci", "-", {}),
        ("type=oci,dest=-", "oci", "-", {}),
        ("type=oci,dest=img.tar,name=app:v1", "oci", "img.tar", {"name": "app:v1"}),
        ('type=oci,"dest=a,b.tar"', "oci", "a,b.tar", {}),
        ("type=docker", "docker", None, {}),
        ("type=docker,dest=img.tar,tar=true", "docker", "img.tar", {"tar": "true"}),
        ("type=image,name=app:v1", "image", None, {"name": "app:v1"}),
        ("type=image,name=app,push=false", "image", None, {"name": "app", "push": "false"}),
        ("type=registry,name=r.io/app", "registry", None, {"name": "r.io/app", "push": "true"}),
        ("type=cacheonly", "cacheonly", None, {}),
        ("dest=out", "local", "dest=out", {}),  # buildx: one bare field is a directory
    ],
)
def test_parse_output(text: str, type_: str, dest: str | None, attrs: dict[str, str]) -> None:
    assert parse_output(text) == OutputSpec(type_, dest, attrs)


def test_parse_output_names_and_push() -> None:
    spec = parse_output('type=image,"name=app:v1,r.io/app:v2",push=True')
    assert spec.names == ["app:v1", "r.io/app:v2"]
    assert spec.push and not spec.handled_by_export
    assert parse_output("type=registry,name=app").push
    assert not parse_output("type=image,name=app").push
    assert parse_output("-").to_stdout and not parse_output("out").to_stdout
    assert [parse_output(t).handled_by_export for t in ("o", "-", "type=oci", "type=docker")] == [
        True,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "type is required for output"),
        ("dest=out,name=x", "type is required for output"),
        ("type=foo,dest=x", 'exporter "foo" could not be found: use one of local, tar'),
        ("type=Local,dest=x", 'exporter "Local" could not be found'),
        ("type=local", "dest is required for local exporter"),
        ("type=local,dest=", "dest is required for local exporter"),
        ("type=local,dest=-", "dest cannot be stdout for local exporter"),
        ("type=tar,bogus", "invalid value bogus in --output: use key=value"),
        ("type=image,push=maybe", 'non-bool value specified for push: "maybe"'),
        ("type=oci,tar=false", "type=oci,tar=false writes a directory: give dest="),
        ("type=oci,tar=false,dest=-", "type=oci,tar=false writes a directory"),
        ("type=oci,dest=x,name=Bad Name", "invalid name in --output:"),
    ],
)
def test_parse_output_errors(text: str, message: str) -> None:
    with pytest.raises(OutputError) as info:
        parse_output(text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_parse_output_checks_the_destination(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"^destination directory .*/file is a file"):
        parse_output(f"type=local,dest={tmp_path / 'file'}")
    with pytest.raises(OutputError, match=r"^destination directory .*/file is a file"):
        parse_output(str(tmp_path / "file"))
    with pytest.raises(OutputError, match=r"^destination file .* is a directory"):
        parse_output(f"type=tar,dest={tmp_path}")
    with pytest.raises(OutputError, match=r"^destination file .* is a directory"):
        parse_output(f"type=docker,dest={tmp_path}")


# ---------------------------------------------------------------------------- local


def test_local_writes_the_root_file_system(
    store: ImageStore, busybox: Image, busybox_image: BusyboxImage, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "rootfs"  # parents are made
    export(store, busybox.id, parse_output(str(dest)))
    busybox_bin = dest / "bin" / "busybox"
    assert busybox_bin.is_file()
    assert busybox_bin.read_bytes() == (busybox_image.rootfs / "bin" / "busybox").read_bytes()
    assert os.readlink(dest / "bin" / "sh") == "busybox"
    assert stat.S_IMODE(busybox_bin.stat().st_mode) == 0o755
    assert tree(dest) == tree(busybox_image.rootfs)
    assert not [p for p in os.listdir(dest) if p.startswith(".dockyard-export")]
    work = Path(store.root, "tmp")
    assert not work.exists() or not os.listdir(work)


def test_local_applies_whiteouts_and_owns_files_as_the_caller(
    store: ImageStore, layered: Image, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    export(store, layered.id, OutputSpec("local", str(dest)))
    assert tree(dest) == ["dir", "dir/c", "keep"]
    assert (dest / "dir" / "c").read_bytes() == b"c"
    st = (dest / "keep").stat()
    # BuildKit's local exporter gives the files to the user who exports them
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert int(st.st_mtime) == 1_600_000_000


def test_local_merges_into_an_existing_directory(
    store: ImageStore, layered: Image, tmp_path: Path
) -> None:
    dest, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "mine.txt").write_text("kept")
    (dest / "keep").write_text("replaced")
    (dest / "dir").symlink_to(outside)  # replaced by the image's directory, never followed
    export(store, layered.id, parse_output(f"type=local,dest={dest}"))
    assert tree(dest) == ["dir", "dir/c", "keep", "mine.txt"]
    assert (dest / "keep").read_bytes() == b"k"
    assert not (dest / "dir").is_symlink()
    assert os.listdir(outside) == []


def test_local_with_a_broken_layer_leaves_dest_alone(store: ImageStore, tmp_path: Path) -> None:
    good, bad = layer({"a": b"a"}), b"not a tar " * 100
    digests = [store.content.put(good), store.content.put(bad)]
    config = image_spec.new_config(digests, "2026-01-01T00:00:00Z")
    layers = [image_spec.descriptor(image_spec.MEDIA_LAYER, d, 1) for d in digests]
    image = store.add_image(config, layers, [])
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("kept")
    with pytest.raises(OutputError, match=rf"^cannot export image {image.short_id}: layer sha256:"):
        export(store, image.id, parse_output(str(dest)))
    assert os.listdir(dest) == ["mine.txt"]


# ---------------------------------------------------------------------------- tar


def test_tar_to_a_file_and_to_stdout(store: ImageStore, busybox: Image, tmp_path: Path) -> None:
    dest = tmp_path / "rootfs.tar"
    export(store, busybox.id, parse_output(f"type=tar,dest={dest}"))
    names = tar_names(dest.read_bytes())
    assert "bin/busybox" in names and "bin/sh" in names
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~_umask()
    out = io.BytesIO()
    export(store, busybox.id, parse_output("-"), stdout=out)
    assert tar_names(out.getvalue()) == names
    assert not os.listdir(os.path.join(store.root, "tmp"))  # the flattened tree is gone


def test_tar_of_layers_with_whiteouts_keeps_owners(store: ImageStore, layered: Image) -> None:
    out = io.BytesIO()
    export(store, layered.id, OutputSpec("tar", "-"), stdout=out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["dir", "dir/c", "keep"]
        if os.geteuid() == 0:
            assert (members["keep"].uid, members["keep"].gid) == (1000, 1000)
        assert tar.extractfile("keep").read() == b"k"  # type: ignore[union-attr]


def test_stdout_that_is_a_terminal_is_refused(store: ImageStore, layered: Image) -> None:
    master, slave = os.openpty()  # the master stays open: else the slave is no tty
    try:
        with open(slave, "wb") as tty, pytest.raises(OutputError) as info:
            export(store, layered.id, parse_output("-"), stdout=tty)
    finally:
        os.close(master)
    assert str(info.value) == "dest file is required for tar exporter. refusing to write to console"


# ---------------------------------------------------------------------------- oci / docker


@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_archive_loads_back(store: ImageStore, busybox: Image, tmp_path: Path, kind: str) -> None:
    dest = tmp_path / f"{kind}.tar"
    export(store, busybox.id, parse_output(f"type={kind},dest={dest}"))
    names = tar_names(dest.read_bytes())
    assert {"index.json", "manifest.json", "oci-layout"} <= set(names)
    fresh = ImageStore(str(tmp_path / "fresh"))
    with open(dest, "rb") as f:
        assert archive.load(fresh, f) == [f"Loaded image ID: {busybox.id}"]  # untagged
    loaded = fresh.get(busybox.id)
    assert loaded.manifest_digest == busybox.manifest_digest


def test_archive_with_names(store: ImageStore, busybox: Image, tmp_path: Path) -> None:
    dest = tmp_path / "named.tar"
    export(store, busybox.id, parse_output(f'type=oci,dest={dest},"name=app:v1,r.io/x/app"'))
    with tarfile.open(dest) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
        names = tar.getnames()
    annotations = [m["annotations"] for m in index["manifests"]]
    assert annotations == [
        {
            "io.containerd.image.name": "docker.io/library/app:v1",
            image_spec.ANNOTATION_REF_NAME: "v1",
        },
        {"io.containerd.image.name": "r.io/x/app:latest", image_spec.ANNOTATION_REF_NAME: "latest"},
    ]
    assert {m["digest"] for m in index["manifests"]} == {busybox.manifest_digest}
    assert manifest[0]["RepoTags"] == ["app:v1", "r.io/x/app:latest"]
    assert all(path in names for path in manifest[0]["Layers"])
    assert repositories == {
        "app": {"v1": busybox.id.split(":")[1]},
        "r.io/x/app": {"latest": busybox.id.split(":")[1]},
    }
    assert store.get(busybox.id).tags == ["docker.io/library/busybox:latest"]  # store untouched
    fresh = ImageStore(str(tmp_path / "fresh"))
    with open(dest, "rb") as f:
        assert archive.load(fresh, f) == ["Loaded image: app:v1", "Loaded image: r.io/x/app:latest"]
    assert fresh.get("app:v1").id == busybox.id


def test_archive_to_stdout(store: ImageStore, layered: Image) -> None:
    out = io.BytesIO()
    export(store, layered.id, parse_output("type=docker,dest=-,name=two:layers"), stdout=out)
    fresh_root = os.path.join(store.root, "..", "fresh")
    fresh = ImageStore(fresh_root)
    out.seek(0)
    assert archive.load(fresh, out) == ["Loaded image: two:layers"]
    assert fresh.get("two:layers").diff_ids == layered.diff_ids


def test_failed_export_leaves_the_old_file(
    store: ImageStore, layered: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "img.tar"
    dest.write_bytes(b"old")

    def broken(store: ImageStore, names: list[str], out: io.BytesIO) -> None:
        out.write(b"half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive, "save", broken)
    with pytest.raises(OSError, match="No space left"):
        export(store, layered.id, parse_output(f"type=oci,dest={dest}"))
    assert dest.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["img.tar", "root"]  # no temp file left


def test_types_the_builder_handles_are_refused(store: ImageStore, layered: Image) -> None:
    for text in ("type=image,name=a", "type=registry,name=a", "type=docker", "type=cacheonly"):
        with pytest.raises(OutputError, match=r"is not written by export\(\)"):
            export(store, layered.id, parse_output(text))


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_the_archive(store: ImageStore, busybox: Image, tmp_path: Path) -> None:
    dest = tmp_path / "img.tar"
    export(store, busybox.id, parse_output(f"type=oci,dest={dest},name=app:v1"))
    for transport in ("oci-archive", "docker-archive"):
        done = subprocess.run(
            ["skopeo", "inspect", f"{transport}:{dest}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert len(info["Layers"]) == len(busybox.diff_ids)
        if transport == "oci-archive":
            assert info["Digest"] == busybox.manifest_digest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
