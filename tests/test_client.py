"""The Python API: docker-py's models over the engine, in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts.test_images import BusyboxImage

import dockyard
from tests.conftest import teardown_network


@pytest.fixture
def client(tmp_path: Path, busybox_image: BusyboxImage) -> Iterator[dockyard.Client]:
    c = dockyard.Client(str(tmp_path / "root"))
    c.images.import_tar(str(busybox_image.tar), "busybox")
    yield c
    for container in c.containers.list(all=True):
        container.remove(force=True)
    c.close()
    teardown_network(tmp_path / "root")


def test_run_returns_output_and_removes(client: dockyard.Client) -> None:
    assert client.containers.run("busybox", ["echo", "hi"], remove=True) == b"hi\n"
    assert client.containers.list(all=True) == []


def test_run_failure_raises_container_error(client: dockyard.Client) -> None:
    with pytest.raises(dockyard.ContainerError) as caught:
        client.containers.run("busybox", "sh -c 'echo oops >&2; exit 4'", remove=True)
    assert caught.value.exit_status == 4 and caught.value.stderr == b"oops\n"
    assert client.containers.list(all=True) == []


def test_detached_container_model(client: dockyard.Client) -> None:
    web = client.containers.run(
        "busybox",
        "sh -c 'echo up; sleep 60'",
        detach=True,
        name="web",
        environment={"A": "1"},
        labels={"tier": "front"},
        mem_limit="32m",
    )
    assert isinstance(web, dockyard.client.Container)
    assert web.name == "web" and web.status == "running" and web.labels == {"tier": "front"}
    assert client.containers.get("web").id == web.id
    assert [c.id for c in client.containers.list()] == [web.id]
    web.stop(timeout=1)
    assert web.wait()["StatusCode"] == 137
    assert web.logs() == b"up\n"
    web.remove()
    assert client.containers.list(all=True) == []


def test_images(client: dockyard.Client) -> None:
    image = client.images.get("busybox")
    assert image.tags == ["busybox:latest"]
    image.tag("localhost:5000/bb", "v1")
    assert sorted(client.images.get(image.id).tags) == ["busybox:latest", "localhost:5000/bb:v1"]
    client.images.remove("localhost:5000/bb:v1")
    assert [i.id for i in client.images.list()] == [image.id]
