"""The Python API's images.pull / images.push (docker-py's shapes), and pulls racing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts.test_images import BusyboxImage

import dockyard
from dockyard.client import _pull_name
from tests.conftest import teardown_network
from tests.registry.client_helpers import FakeRegistry, ReferenceRegistry, make_image, tar_of
from tests.runtime.peers import require

DOCKYARD = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dockyard")


@pytest.fixture(autouse=True)
def own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    monkeypatch.setenv("DOCKYARD_REGISTRIES_CONF", str(conf))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def client(tmp_path: Path, busybox_image: BusyboxImage) -> Iterator[dockyard.Client]:
    c = dockyard.Client(str(tmp_path / "root"))
    c.images.import_tar(str(busybox_image.tar), "busybox")
    yield c
    for container in c.containers.list(all=True):
        container.remove(force=True)
    c.close()
    teardown_network(tmp_path / "root")


def test_pull_name() -> None:
    assert _pull_name("busybox", None) == "busybox"
    assert _pull_name("busybox", "1.36") == "busybox:1.36"
    assert _pull_name("busybox:old", "new") == "busybox:new"
    assert _pull_name("localhost:5000/app", "v1") == "localhost:5000/app:v1"
    assert _pull_name("app", "sha256:" + "a" * 64) == "app@sha256:" + "a" * 64


def test_push_and_pull(client: dockyard.Client, tmp_path: Path) -> None:
    require("docker-registry")
    registry = ReferenceRegistry(tmp_path / "registry")
    try:
        repo = f"{registry.host}/api/bb"
        client.images.get("busybox").tag(repo, "v1")
        text = client.images.push(repo, "v1")
        messages = [json.loads(line) for line in text.split("\r\n") if line]
        assert messages[0] == {"status": f"The push refers to repository [{repo}]"}
        assert any(m.get("status") == "Pushed" for m in messages)
        aux = messages[-1]["aux"]
        assert aux["Tag"] == "v1" and aux["Digest"].startswith("sha256:") and aux["Size"] > 0
        streamed = list(client.images.push(repo, "v1", stream=True, decode=True))
        assert any(m.get("status") == "Layer already exists" for m in streamed)

        other = dockyard.Client(str(tmp_path / "other"))
        try:
            image = other.images.pull(repo, "v1")
            assert isinstance(image, dockyard.client.Image)
            assert image.id == client.images.get("busybox").id
            assert image.tags == [f"{repo}:v1"]
            assert other.containers.run(f"{repo}:v1", ["echo", "api"], remove=True) == b"api\n"
            client.images.get("busybox").tag(repo, "v2")
            client.images.push(repo, "v2")
            every = other.images.pull(repo, all_tags=True)
            assert isinstance(every, list) and len(every) == 2
        finally:
            other.close()
            teardown_network(tmp_path / "other")
    finally:
        registry.stop()


def test_concurrent_pulls_of_one_image(tmp_path: Path) -> None:
    fake = FakeRegistry()
    try:
        layers = [tar_of({f"f{i}": bytes([i]) * 400_000}) for i in range(4)]
        image = make_image(layers)
        fake.add("same", "v1", image)
        root = tmp_path / "root"
        procs = [
            subprocess.Popen(
                [DOCKYARD, "--root", str(root), "pull", "-q", f"{fake.host}/same:v1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        results = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, results
        listing = subprocess.run(
            [DOCKYARD, "--root", str(root), "images", "-q", "--no-trunc"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert listing.split() == [image.config_digest]
    finally:
        fake.stop()
