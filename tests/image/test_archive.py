"""save/load archives: docker-save + OCI layout, old docker-save, OCI layout, bad archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from dockyard.image.archive import ArchiveError, load, save
from dockyard.image.store import ImageNotFound, ImageStore
from dockyard.oci import image_spec


def rootfs_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path / "root"))


@pytest.fixture
def other(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path / "other"))


def _image(store: ImageStore, ref: str = "hello:v1") -> str:
    tar = rootfs_tar({"bin/hello": b"#!/bin/sh\necho hi\n"})
    return store.import_tar(io.BytesIO(tar), ref, ["CMD /bin/hello"]).id


def _saved(store: ImageStore, *names: str) -> bytes:
    out = io.BytesIO()
    save(store, list(names), out)
    return out.getvalue()


def test_save_writes_docker_and_oci_layout(store: ImageStore) -> None:
    image_id = _image(store)
    with tarfile.open(fileobj=io.BytesIO(_saved(store, "hello:v1"))) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        layout = json.load(tar.extractfile("oci-layout"))  # type: ignore[arg-type]
        repos = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["hello:v1"]
    assert manifest[0]["Config"] == "blobs/sha256/" + image_id.split(":")[1]
    assert all(path in names for path in manifest[0]["Layers"])
    assert layout == {"imageLayoutVersion": "1.0.0"}
    desc = index["manifests"][0]
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    assert desc["annotations"]["io.containerd.image.name"] == "docker.io/library/hello:v1"
    assert desc["digest"] == store.get("hello:v1").manifest_digest
    assert repos == {"hello": {"v1": image_id.split(":")[1]}}


def test_round_trip_keeps_id_and_tag(store: ImageStore, other: ImageStore) -> None:
    image_id = _image(store)
    data = _saved(store, "hello:v1")
    assert load(other, io.BytesIO(data)) == ["Loaded image: hello:v1"]
    loaded = other.get("hello:v1")
    assert loaded.id == image_id
    assert loaded.manifest_digest == store.get(image_id).manifest_digest


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.ZstdCompressor().compress])
def test_load_compressed_archives(store: ImageStore, other: ImageStore, compress: object) -> None:
    image_id = _image(store)
    data = compress(_saved(store, "hello:v1"))  # type: ignore[operator]
    load(other, io.BytesIO(data))
    assert other.get("hello:v1").id == image_id


def test_save_by_id_is_untagged(store: ImageStore, other: ImageStore) -> None:
    image_id = _image(store)
    assert load(other, io.BytesIO(_saved(store, image_id[7:19]))) == [
        f"Loaded image ID: {image_id}"
    ]
    assert other.get(image_id).tags == []


def test_save_unknown_image(store: ImageStore) -> None:
    with pytest.raises(ImageNotFound, match="No such image: nope"):
        _saved(store, "nope")


def _nothing_stored(store: ImageStore) -> None:
    assert list(store.content.digests()) == []
    assert store.list_images() == []


def test_corrupt_blob_is_refused_and_nothing_stored(store: ImageStore, other: ImageStore) -> None:
    _image(store)
    data = bytearray(_saved(store, "hello:v1"))
    at = data.index(b"echo hi")
    data[at : at + 7] = b"echo HO"  # the layer's bytes no longer match its digest
    with pytest.raises(ArchiveError, match="invalid archive"):
        load(other, io.BytesIO(bytes(data)))
    _nothing_stored(other)


def test_truncated_archive_is_refused(store: ImageStore, other: ImageStore) -> None:
    _image(store)
    data = _saved(store, "hello:v1")
    with pytest.raises(ArchiveError, match="invalid archive"):
        load(other, io.BytesIO(data[: len(data) // 2]))
    _nothing_stored(other)


def test_not_an_archive(other: ImageStore) -> None:
    with pytest.raises(ArchiveError):
        load(other, io.BytesIO(make_tar({"hello.txt": b"hi"})))
    _nothing_stored(other)


def test_old_docker_save_with_symlinked_layer(other: ImageStore) -> None:
    layer = rootfs_tar({"etc/motd": b"hi\n"})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(layer)}"] * 2},
        },
        indent=2,  # not canonical: the ID must still be the digest of these bytes
    ).encode()
    manifest = [
        {
            "Config": f"{sha(config)}.json",
            "RepoTags": ["example.com/app:1"],
            "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"],
        }
    ]
    archive = make_tar(
        {
            "aaaa/layer.tar": layer,
            "aaaa/VERSION": b"1.0",
            f"{sha(config)}.json": config,
            "manifest.json": json.dumps(manifest).encode(),
        },
        links={"bbbb/layer.tar": "../aaaa/layer.tar"},
    )
    assert load(other, io.BytesIO(archive)) == ["Loaded image: example.com/app:1"]
    image = other.get("example.com/app:1")
    assert image.id == f"sha256:{sha(config)}"
    assert image.config["config"] == {"Cmd": ["sh"]}


def test_wrong_diff_id_is_refused(other: ImageStore) -> None:
    layer = rootfs_tar({"etc/motd": b"hi\n"})
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}})
    manifest = [{"Config": "c.json", "RepoTags": ["a:b"], "Layers": ["l.tar"]}]
    archive = make_tar(
        {"l.tar": layer, "c.json": config.encode(), "manifest.json": json.dumps(manifest).encode()}
    )
    with pytest.raises(ArchiveError, match="diff_id"):
        load(other, io.BytesIO(archive))
    _nothing_stored(other)


def test_oci_layout_with_gzip_layer_and_full_ref_name(other: ImageStore) -> None:
    plain = rootfs_tar({"etc/motd": b"hi\n"})
    layer = gzip.compress(plain)
    config = image_spec.canonical(
        image_spec.new_config([f"sha256:{sha(plain)}"], "2024-01-01T00:00:00Z", {"Cmd": ["sh"]})
    )
    manifest = image_spec.canonical(
        image_spec.new_manifest(
            image_spec.descriptor(image_spec.MEDIA_CONFIG, f"sha256:{sha(config)}", len(config)),
            [
                image_spec.descriptor(
                    image_spec.MEDIA_LAYER_GZIP, f"sha256:{sha(layer)}", len(layer)
                )
            ],
        )
    )
    ref = {"org.opencontainers.image.ref.name": "localhost/app:2"}
    index = {
        "schemaVersion": 2,
        "manifests": [
            image_spec.descriptor(
                image_spec.MEDIA_MANIFEST,
                f"sha256:{sha(manifest)}",
                len(manifest),
                annotations=ref,
            )
        ],
    }
    archive = make_tar(
        {
            "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
            f"blobs/sha256/{sha(layer)}": layer,
            f"blobs/sha256/{sha(config)}": config,
            f"blobs/sha256/{sha(manifest)}": manifest,
            "index.json": json.dumps(index).encode(),
        }
    )
    assert load(other, io.BytesIO(archive)) == ["Loaded image: localhost/app:2"]
    image = other.get("localhost/app:2")
    assert image.id == f"sha256:{sha(config)}"
    stored = json.loads(other.content.read(image.manifest_digest))
    assert stored["layers"][0]["mediaType"] == image_spec.MEDIA_LAYER_GZIP


def test_bare_tag_ref_name_loads_untagged(store: ImageStore, other: ImageStore) -> None:
    image_id = _image(store)
    data = _saved(store, "hello:v1")
    # drop the docker-save part and containerd's name: a pure OCI layout with ref.name "v1"
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as src:
        for m in src.getmembers():
            if m.isfile() and m.name not in ("manifest.json", "repositories"):
                members[m.name] = src.extractfile(m).read()  # type: ignore[union-attr]
    index = json.loads(members["index.json"])
    del index["manifests"][0]["annotations"]["io.containerd.image.name"]
    members["index.json"] = json.dumps(index).encode()
    assert load(other, io.BytesIO(make_tar(members))) == [f"Loaded image ID: {image_id}"]
