"""The image store: import, lookup, tag, remove, unpack into shared layer snapshots."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from dockyard.image.store import ImageError, ImageNotFound, ImageStore
from dockyard.oci import image_spec
from dockyard.storage.snapshots import unmount


def rootfs_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path / "root"))


def test_import_records_an_oci_image(store: ImageStore) -> None:
    tar = rootfs_tar({"bin/hello": b"#!/bin/sh\necho hi\n", "etc/motd": b"welcome\n"})
    image = store.import_tar(
        io.BytesIO(gzip.compress(tar)), "hello:v1", ["CMD /bin/hello", "ENV A=1"], "first"
    )
    assert image.tags == ["docker.io/library/hello:v1"]
    assert image.diff_ids == [image_spec.digest_of(tar)]  # diff_id of the uncompressed tar
    assert image.config["config"] == {"Cmd": ["/bin/sh", "-c", "/bin/hello"], "Env": ["A=1"]}
    assert image.config["os"] == "linux" and image.config["history"][0]["comment"] == "first"
    manifest = json.loads(store.content.read(image.manifest_digest))
    assert manifest["mediaType"] == image_spec.MEDIA_MANIFEST
    assert manifest["config"]["digest"] == image.id
    assert store.content.read(manifest["layers"][0]["digest"]) == tar
    assert image_spec.digest_of(store.content.read(image.id)) == image.id


def test_lookup_by_name_and_id(store: ImageStore) -> None:
    image = store.import_tar(io.BytesIO(rootfs_tar({"a": b"1"})), "docker.io/library/x")
    for name in (
        "x",
        "x:latest",
        "library/x",
        image.id,
        image.id[7:],
        image.short_id,
        image.id[7:10],
    ):
        assert store.get(name).id == image.id
    with pytest.raises(ImageNotFound, match="No such image: nope"):
        store.get("nope")
    with pytest.raises(ImageNotFound):
        store.get("0" * 64)


def test_tag_and_remove(store: ImageStore) -> None:
    image = store.import_tar(io.BytesIO(rootfs_tar({"a": b"1"})), "one")
    store.tag("one", "localhost:5000/two:t")
    assert sorted(store.get(image.id).tags) == [
        "docker.io/library/one:latest",
        "localhost:5000/two:t",
    ]
    assert store.remove("one") == [("Untagged", "one:latest")]
    assert store.get(image.id).tags == ["localhost:5000/two:t"]
    blobs = set(store.content.digests())
    assert store.remove("localhost:5000/two:t") == [
        ("Untagged", "localhost:5000/two:t"),
        ("Deleted", image.id),
    ]
    assert store.list_images() == []
    assert not blobs & set(store.content.digests())  # config, manifest and layer collected


def test_remove_refuses_an_image_with_several_tags_by_id(store: ImageStore) -> None:
    image = store.import_tar(io.BytesIO(rootfs_tar({"a": b"1"})), "one")
    store.tag("one", "two")
    with pytest.raises(ImageError, match="must be forced"):
        store.remove(image.short_id)
    assert [kind for kind, _ in store.remove(image.short_id, force=True)] == [
        "Untagged",
        "Untagged",
        "Deleted",
    ]


def test_bad_references(store: ImageStore) -> None:
    store.import_tar(io.BytesIO(rootfs_tar({"a": b"1"})), "one")
    with pytest.raises(ImageError, match="digest reference"):
        store.tag("one", "two@sha256:" + "a" * 64)


def test_unpack_shares_layers(store: ImageStore, tmp_path: Path) -> None:
    tar = rootfs_tar({"bin/tool": b"x" * 100, "etc/conf": b"c"})
    first = store.import_tar(io.BytesIO(tar), "first")
    second = store.import_tar(io.BytesIO(gzip.compress(tar)), "second", ["CMD x"])
    top = store.unpack(first)
    assert top == first.chain_ids[-1]
    assert store.unpack(second) == top  # same layer: unpacked once
    target = tmp_path / "view"
    target.mkdir()
    (mount,) = store.snapshots.view("look", top)
    mount.mount(str(target))
    try:
        assert (target / "bin/tool").read_bytes() == b"x" * 100
        assert (target / "etc/conf").read_bytes() == b"c"
    finally:
        unmount(str(target))
        store.snapshots.remove("look")
    assert not os.listdir(os.path.join(store.root, "tmp"))


def test_unpack_two_layers_with_whiteout(store: ImageStore, tmp_path: Path) -> None:
    base = rootfs_tar({"keep": b"k", "gone": b"g"})
    upper = rootfs_tar({".wh.gone": b"", "new": b"n"})
    base_digest = store.content.put(base)
    upper_digest = store.content.put(upper)
    config = image_spec.new_config([base_digest, upper_digest], "2026-01-01T00:00:00Z")
    layers = [
        image_spec.descriptor(image_spec.MEDIA_LAYER, d, len(b))
        for d, b in ((base_digest, base), (upper_digest, upper))
    ]
    image = store.add_image(config, layers, [])
    top = store.unpack(image)
    target = tmp_path / "v"
    target.mkdir()
    (mount,) = store.snapshots.view("look2", top)
    mount.mount(str(target))
    try:
        assert sorted(os.listdir(target)) == ["keep", "new"]
    finally:
        unmount(str(target))
        store.snapshots.remove("look2")
