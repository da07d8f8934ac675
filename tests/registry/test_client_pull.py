"""image/pull.py and the registry client against a fake registry that misbehaves on cue:
resume after a cut, corrupt and missing blobs, auth flows, indexes, mirrors."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.image.platforms import parse as parse_platform
from dockyard.image.pull import Clients, PullError, pull
from dockyard.image.store import ImageStore
from dockyard.registry import config
from dockyard.registry.client_errors import BlobError, RegistryError
from tests.registry.client_helpers import (
    FakeRegistry,
    Image,
    compress,
    make_image,
    sha256,
    tar_of,
)

SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from dockyard.image import pull_blobs

    monkeypatch.setattr(pull_blobs, "BACKOFF", 0.001)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path / "root"))


@pytest.fixture
def no_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> config.RegistriesConf:
    """No registries.conf, no stored logins but the test's own."""
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return config.RegistriesConf()


def three_layers() -> Image:
    layers = [
        tar_of({"a.txt": b"gzip layer\n" * 1000}),
        tar_of({"b.txt": os.urandom(300_000)}),
        tar_of({"c.txt": b"plain layer\n"}),
    ]
    return make_image(layers, ["gzip", "zstd", "plain"])


def stored_blobs(store: ImageStore) -> list[str]:
    return list(store.content.digests())


def assert_clean(store: ImageStore) -> None:
    """Nothing of a failed pull is left: no image, no blob, no lease."""
    assert store.list_images() == []
    assert stored_blobs(store) == []
    assert store.leases.list_leases() == []


def test_pull_stores_image_as_load_would(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    image = three_layers()
    fake.add("team/app", "v1", image)
    result = pull(store, f"{fake.host}/team/app:v1", conf=no_conf)
    assert str(result.reference) == f"{fake.host}/team/app:v1"
    got = result.image
    assert got.id == image.config_digest
    assert got.manifest_digest == image.digest == result.digest
    assert got.tags == [f"{fake.host}/team/app:v1"]
    assert got.repo_digests == [f"{fake.host}/team/app@{image.digest}"]
    assert set(stored_blobs(store)) == {*image.blobs, image.digest}
    assert store.content.read(image.digest) == image.manifest  # byte for byte
    assert store.get(f"{fake.host}/team/app@{image.digest}").id == got.id
    assert store.leases.list_leases() == []
    # layers are unpacked (and their diff_ids checked) at first use, as a create does
    assert store.unpack(got) == got.chain_ids[-1]
    sources = store.conn.execute("SELECT DISTINCT registry, repository FROM blob_sources")
    assert [tuple(r) for r in sources] == [(fake.host, "team/app")]


def test_second_pull_is_up_to_date(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    image = three_layers()
    fake.add("app", "latest", image)
    assert pull(store, f"{fake.host}/app", conf=no_conf).updated
    fake.requests.clear()
    again = pull(store, f"{fake.host}/app", conf=no_conf)
    assert not again.updated
    assert not [r for r in fake.requests if "/blobs/" in r[1]], "no blob fetched again"


def test_resume_after_a_cut(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    image = three_layers()
    big = image.layers[1]
    fake.add("app", "latest", image)
    fake.behaviour.cut_once.add(big)
    result = pull(store, f"{fake.host}/app", conf=no_conf)
    assert result.image.id == image.config_digest
    ranges = fake.ranges(big)
    assert ranges[0] == "" and len(ranges) == 2
    offset = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset < len(image.blobs[big])


def test_resume_when_the_server_ignores_range(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    image = three_layers()
    fake.add("app", "latest", image)
    fake.behaviour.cut_once.add(image.layers[1])
    fake.behaviour.ignore_range = True
    assert pull(store, f"{fake.host}/app", conf=no_conf).image.id == image.config_digest


def test_resume_across_pulls_and_a_bad_partial(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    image = three_layers()
    big = image.layers[1]
    fake.add("app", "latest", image)
    fake.behaviour.cut_always.add(big)
    with pytest.raises(BlobError, match=f"downloading blob {big} .* failed at byte"):
        pull(store, f"{fake.host}/app", conf=no_conf)
    assert_clean(store)
    partial = Path(store.content.ingest_dir) / f"sha256-{big.split(':')[1]}.partial"
    kept = partial.stat().st_size
    assert kept > 0
    fake.behaviour.cut_always.clear()
    fake.requests.clear()
    pull(store, f"{fake.host}/app", conf=no_conf)
    assert fake.ranges(big) == [f"bytes={kept}-"]  # the next pull went on from there
    # a partial whose bytes are wrong: found out at the end, fetched once more from 0
    store.remove(f"{fake.host}/app")
    partial.write_bytes(b"\0" * kept)
    fake.requests.clear()
    pull(store, f"{fake.host}/app", conf=no_conf)
    assert fake.ranges(big) == [f"bytes={kept}-", ""]
    assert store.content.verify(big)


def test_corrupt_blob_leaves_nothing(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    image = three_layers()
    fake.add("app", "latest", image)
    fake.behaviour.corrupt.add(image.layers[2])
    with pytest.raises(BlobError) as info:
        pull(store, f"{fake.host}/app", conf=no_conf)
    message = str(info.value)
    assert "\n" not in message and "is corrupt: digest mismatch" in message
    assert image.layers[2] in message and fake.host in message
    assert_clean(store)
    # the bad data is gone too (a download the failure stopped may stay, to resume)
    bad = f"sha256-{image.layers[2].split(':')[1]}.partial"
    assert bad not in os.listdir(store.content.ingest_dir)


def test_manifest_naming_a_missing_blob(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    image = three_layers()
    fake.add("app", "latest", image)
    del fake.blobs[image.layers[0]]
    with pytest.raises(RegistryError, match="blob unknown"):
        pull(store, f"{fake.host}/app", conf=no_conf)
    assert_clean(store)


def test_unknown_manifest_and_unreachable(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    with pytest.raises(PullError) as info:
        pull(store, f"{fake.host}/nothing:v9", conf=no_conf)
    assert str(info.value) == (
        f"manifest for {fake.host}/nothing:v9 not found: manifest unknown: manifest unknown"
    )
    port = fake.host.split(":")[1]
    fake.stop()
    with pytest.raises(PullError, match=f"registry 127.0.0.1:{port} is unreachable: connection"):
        pull(store, f"127.0.0.1:{port}/app", conf=no_conf)
    assert_clean(store)


def test_bearer_token_flow(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf, tmp_path: Path
) -> None:
    image = three_layers()
    fake.add("app", "latest", image)
    fake.behaviour.token_auth = True
    pull(store, f"{fake.host}/app", conf=no_conf)  # anonymous token
    tokens = [r for r in fake.requests if r[1].startswith("/token")]
    assert tokens and "scope=repository%3Aapp%3Apull" in tokens[0][1]
    assert "service=fake" in tokens[0][1]
    assert "authorization" not in tokens[0][2]
    assert len(tokens) == 1, "one token, cached for every blob"

    store.remove(f"{fake.host}/app")
    fake.behaviour.anonymous_pull = False
    fake.behaviour.users = {"alice": "wonder"}
    with pytest.raises(PullError) as info:
        pull(store, f"{fake.host}/app", conf=no_conf)
    assert str(info.value).startswith(
        f"pull access denied for {fake.host}/app, repository does not exist or may require "
        "'docker login'"
    )
    auth = base64.b64encode(b"alice:wonder").decode()
    (tmp_path / "auth.json").write_text(json.dumps({"auths": {fake.host: {"auth": auth}}}))
    fake.requests.clear()
    pull(store, f"{fake.host}/app", conf=no_conf)
    tokens = [r for r in fake.requests if r[1].startswith("/token")]
    assert tokens[0][2]["authorization"] == f"Basic {auth}"
    wrong = Clients(credentials=None)
    (tmp_path / "auth.json").write_text(
        json.dumps({"auths": {fake.host: {"auth": base64.b64encode(b"alice:nope").decode()}}})
    )
    store.remove(f"{fake.host}/app")
    with pytest.raises(PullError, match="incorrect username or password"):
        pull(store, f"{fake.host}/app", conf=no_conf, clients=wrong)


def test_basic_auth(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf, tmp_path: Path
) -> None:
    from dockyard.registry.client_auth import Credentials

    image = three_layers()
    fake.add("app", "latest", image)
    fake.behaviour.basic_auth = True
    fake.behaviour.users = {"bob": "builder"}
    with pytest.raises(PullError, match=r"pull access denied .*authentication required"):
        pull(store, f"{fake.host}/app", conf=no_conf)
    clients = Clients(credentials=Credentials("bob", "builder"))
    assert pull(store, f"{fake.host}/app", conf=no_conf, clients=clients).updated


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-list"])
def test_index_platform_selection(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf, docker: bool
) -> None:
    amd = make_image([tar_of({"arch": b"amd64\n"})], arch="amd64", docker=docker)
    arm = make_image([tar_of({"arch": b"arm64\n"})], arch="arm64", variant="v8", docker=docker)
    index = fake.add_index("multi", "latest", [amd, arm], docker=docker)
    name = f"{fake.host}/multi"
    host_arch = parse_platform(os.uname().machine).architecture
    default = pull(store, name, conf=no_conf)
    assert default.digest == index
    assert default.image.manifest_digest == (amd if host_arch == "amd64" else arm).digest
    assert default.image.repo_digests == [f"{name}@{index}"]
    chosen = pull(store, name, parse_platform("linux/arm64"), conf=no_conf)
    assert chosen.image.config["architecture"] == "arm64"
    assert chosen.image.id == arm.config_digest
    assert store.get(f"{name}:latest").id == arm.config_digest  # the tag moved
    with pytest.raises(PullError, match=r"no matching manifest for linux/s390x .*linux/amd64"):
        pull(store, name, parse_platform("linux/s390x"), conf=no_conf)


def test_platform_of_a_single_manifest(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    fake.add("one", "latest", make_image([tar_of({"x": b"x"})], arch="arm64"))
    with pytest.raises(PullError, match="does not match the specified platform: wanted"):
        pull(store, f"{fake.host}/one", parse_platform("linux/amd64"), conf=no_conf)
    assert_clean(store)


def test_not_images(fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf) -> None:
    old = json.dumps({"schemaVersion": 1, "name": "old", "fsLayers": []}).encode()
    fake.manifests["old:latest"] = (old, SCHEMA1)
    with pytest.raises(PullError, match="schema 1"):
        pull(store, f"{fake.host}/old", conf=no_conf)
    artifact = make_image([tar_of({"x": b"x"})])
    doc = json.loads(artifact.manifest)
    doc["config"]["mediaType"] = "application/vnd.example.thing.config.v1+json"
    data = json.dumps(doc).encode()
    fake.manifests["thing:latest"] = (data, doc["mediaType"])
    fake.blobs.update(artifact.blobs)
    with pytest.raises(PullError, match="is not a container image"):
        pull(store, f"{fake.host}/thing", conf=no_conf)
    fewer = make_image([tar_of({"x": b"x"})])
    doc = json.loads(fewer.manifest)
    doc["layers"].append(doc["layers"][0])
    fake.manifests["liar:latest"] = (json.dumps(doc).encode(), doc["mediaType"])
    fake.blobs.update(fewer.blobs)
    with pytest.raises(PullError, match="config names 1 layers, the manifest 2"):
        pull(store, f"{fake.host}/liar", conf=no_conf)
    assert_clean(store)


def test_digest_of_a_manifest_is_checked(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    image = three_layers()
    fake.add("app", "latest", image)
    other = three_layers()
    fake.manifests[f"app:{image.digest}"] = (other.manifest, other.manifest_type)
    with pytest.raises(PullError, match="manifest digest mismatch"):
        pull(store, f"{fake.host}/app@{image.digest}", conf=no_conf)


def test_mirror_first_then_registry(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    mirror = FakeRegistry()
    try:
        conf = config.parse(
            {
                "unqualified-search-registries": ["docker.io"],
                "registry": [
                    {
                        "prefix": "docker.io",
                        "location": fake.host,
                        "mirror": [{"location": mirror.host, "insecure": True}],
                    }
                ],
            }
        )
        image = make_image([tar_of({"m": compress(b"m", "plain")})])
        fake.add("library/app", "latest", image)
        result = pull(store, "app", conf=conf)  # not on the mirror: the registry has it
        assert str(result.reference) == "docker.io/library/app:latest"
        assert result.source.host == fake.host
        assert [r for r in mirror.requests if "/manifests/" in r[1]]
        store.remove("app")
        mirror.add("library/app", "latest", image)
        fake.requests.clear()
        result = pull(store, "app", conf=conf)
        assert result.source.host == mirror.host and result.source.mirror
        assert not fake.requests, "the registry itself is not asked when the mirror has it"
        assert store.get("app").tags == ["docker.io/library/app:latest"]
        with pytest.raises(PullError) as info:
            pull(store, "nothing-here", conf=conf)
        assert str(info.value) == (
            f"manifest for nothing-here:latest not found (at {fake.host}/library/nothing-here): "
            f"manifest unknown: manifest unknown (also tried mirror {mirror.host}/library/"
            "nothing-here: manifest unknown: manifest unknown)"
        )
    finally:
        mirror.stop()


def test_layer_digest_is_checked_at_unpack(
    fake: FakeRegistry, store: ImageStore, no_conf: config.RegistriesConf
) -> None:
    from dockyard.image.store import ImageError

    image = make_image([tar_of({"a": b"a"})])
    doc = image.config
    doc["rootfs"]["diff_ids"] = [sha256(b"something else")]
    config_bytes = json.dumps(doc).encode()
    manifest = json.loads(image.manifest)
    manifest["config"]["digest"] = sha256(config_bytes)
    manifest["config"]["size"] = len(config_bytes)
    data = json.dumps(manifest).encode()
    fake.manifests["lie:latest"] = (data, manifest["mediaType"])
    fake.blobs.update(image.blobs)
    fake.blobs[sha256(config_bytes)] = config_bytes
    got = pull(store, f"{fake.host}/lie", conf=no_conf).image
    with pytest.raises(ImageError, match=r"unpacks to sha256:.* the image's config says"):
        store.unpack(got)
    assert not store.snapshots.walk() or all(
        not info.name.startswith("sha256:") for info in store.snapshots.walk()
    )
