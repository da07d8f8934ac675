"""`inspect` vs `image inspect` vs `container inspect`, `--type`, names that collide,
and Config.Cmd/Entrypoint as the container was created."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from scripts.test_images import BusyboxImage

from tests.cli.dockyard_helper import Dockyard


def _docs(dy: Dockyard, *args: str) -> list[dict[str, Any]]:
    out = dy(*args)
    docs = json.loads(out.stdout)
    assert isinstance(docs, list)
    return docs


def _kind(doc: dict[str, Any]) -> str:
    return "container" if "State" in doc else "image"


def _image_id(dy: Dockyard, name: str = "busybox") -> str:
    return str(_docs(dy, "image", "inspect", name)[0]["Id"])


def test_a_name_of_both_a_container_and_an_image(dy: Dockyard) -> None:
    image_id = _image_id(dy)
    dy("create", "--name", "busybox", "busybox", "true")
    [doc] = _docs(dy, "inspect", "busybox")
    assert _kind(doc) == "container" and doc["Name"] == "/busybox"  # Docker: containers first
    for args in (("image", "inspect"), ("inspect", "--type", "image")):
        [doc] = _docs(dy, *args, "busybox")
        assert _kind(doc) == "image" and doc["Id"] == image_id
        assert doc["RepoTags"] == ["busybox:latest"]
    for args in (("container", "inspect"), ("inspect", "--type", "container")):
        [doc] = _docs(dy, *args, "busybox")
        assert _kind(doc) == "container" and doc["Image"] == image_id
    out = dy("inspect", "-f", "{{.Id}}", "busybox", "--type", "image")
    assert out.stdout == image_id + "\n"


def test_a_container_named_like_an_image_id_prefix(dy: Dockyard) -> None:
    image_id = _image_id(dy)
    prefix = image_id.removeprefix("sha256:")[:12]
    cid = dy("create", "--name", prefix, "busybox", "true").stdout.strip()
    [doc] = _docs(dy, "inspect", prefix)
    assert _kind(doc) == "container" and doc["Id"] == cid
    [doc] = _docs(dy, "image", "inspect", prefix)
    assert _kind(doc) == "image" and doc["Id"] == image_id
    [doc] = _docs(dy, "inspect", "--type", "image", prefix)
    assert doc["Id"] == image_id
    # and the container's own ID prefix names the container, whatever the type filter
    [doc] = _docs(dy, "container", "inspect", cid[:12])
    assert doc["Id"] == cid
    out = dy("image", "inspect", cid[:12], check=False)
    if not image_id.removeprefix("sha256:").startswith(cid[:12]):
        assert out.returncode == 1 and out.stderr == f"Error: No such image: {cid[:12]}\n"


def test_a_tag_wins_over_another_image_id_prefix(dy: Dockyard, tmp_path: Path) -> None:
    """Docker looks a name up as a tag before it tries it as an ID prefix."""
    busybox_id = _image_id(dy)
    prefix = busybox_id.removeprefix("sha256:")[:8]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    rootfs = tmp_path / "other.tar"
    rootfs.write_bytes(buf.getvalue())
    other_id = dy("import", str(rootfs), prefix).stdout.strip()
    assert other_id != busybox_id
    [doc] = _docs(dy, "image", "inspect", prefix)
    assert doc["Id"] == other_id and doc["RepoTags"] == [f"{prefix}:latest"]
    [doc] = _docs(dy, "image", "inspect", busybox_id.removeprefix("sha256:")[:10])
    assert doc["Id"] == busybox_id
    # rmi of the tag removes the tagged image, not the one whose ID starts so
    assert dy("rmi", prefix).stdout.splitlines() == [
        f"Untagged: {prefix}:latest",
        f"Deleted: {other_id}",
    ]
    [doc] = _docs(dy, "image", "inspect", prefix)
    assert doc["Id"] == busybox_id  # now only the ID prefix matches


def test_type_filters_and_not_found_messages(dy: Dockyard) -> None:
    dy("create", "--name", "onlyctr", "busybox", "true")
    out = dy("inspect", "--type", "container", "busybox", check=False)
    assert out.returncode == 1 and out.stderr == "Error: No such container: busybox\n"
    assert json.loads(out.stdout) == []
    out = dy("inspect", "--type", "image", "onlyctr", check=False)
    assert out.returncode == 1 and out.stderr == "Error: No such image: onlyctr\n"
    out = dy("image", "inspect", "onlyctr", check=False)
    assert out.returncode == 1 and out.stderr == "Error: No such image: onlyctr\n"
    out = dy("container", "inspect", "busybox", check=False)
    assert out.returncode == 1 and out.stderr == "Error: No such container: busybox\n"
    out = dy("inspect", "nosuch", check=False)
    assert out.returncode == 1 and out.stderr == "Error: No such object: nosuch\n"
    # several names: the found ones print, each missing one is a line, exit 1
    out = dy("inspect", "--type", "image", "busybox", "onlyctr", check=False)
    assert out.returncode == 1 and [_kind(d) for d in json.loads(out.stdout)] == ["image"]
    out = dy("inspect", "--type", "bogus", "busybox", check=False)
    assert out.returncode == 2 and "invalid choice: 'bogus'" in out.stderr
    assert "Traceback" not in out.stderr


def test_volumes_come_after_containers_and_images(dy: Dockyard) -> None:
    dy("volume", "create", "vol1")
    dy("volume", "create", "busybox")
    [doc] = _docs(dy, "inspect", "vol1")
    assert doc["Name"] == "vol1" and doc["Mountpoint"].endswith("/volumes/vol1/_data")
    [doc] = _docs(dy, "inspect", "busybox")
    assert _kind(doc) == "image"  # an image before a volume of the same name
    [doc] = _docs(dy, "inspect", "--type", "volume", "busybox")
    assert doc["Name"] == "busybox" and doc["Driver"] == "local"
    dy("create", "--name", "vol1", "busybox", "true")
    [doc] = _docs(dy, "inspect", "vol1")
    assert _kind(doc) == "container"
    out = dy("inspect", "--type", "volume", "nosuch", check=False)
    assert out.returncode == 1 and out.stderr == "Error: No such volume: nosuch\n"


def test_config_shows_what_the_container_was_created_with(
    dy: Dockyard, busybox_image: BusyboxImage
) -> None:
    dy(
        "import",
        "--change",
        'ENTRYPOINT ["/bin/sh", "-c"]',
        "--change",
        'CMD ["echo img"]',
        str(busybox_image.tar),
        "withcmd",
    )
    dy("create", "--name", "plain", "withcmd")
    dy("create", "--name", "args", "withcmd", "echo hi")
    dy("create", "--name", "ep", "--entrypoint", "/bin/echo", "withcmd", "one", "two")
    dy("create", "--name", "eponly", "--entrypoint", "/bin/true", "withcmd")
    cases = {
        "plain": (["echo img"], ["/bin/sh", "-c"], "/bin/sh", ["-c", "echo img"]),
        "args": (["echo hi"], ["/bin/sh", "-c"], "/bin/sh", ["-c", "echo hi"]),
        "ep": (["one", "two"], ["/bin/echo"], "/bin/echo", ["one", "two"]),
        "eponly": (None, ["/bin/true"], "/bin/true", []),  # --entrypoint resets the CMD
    }
    for name, (cmd, entrypoint, path, args) in cases.items():
        [doc] = _docs(dy, "inspect", name)
        assert doc["Config"]["Cmd"] == cmd, name
        assert doc["Config"]["Entrypoint"] == entrypoint, name
        assert (doc["Path"], doc["Args"]) == (path, args), name
    [image] = _docs(dy, "image", "inspect", "withcmd")
    assert image["Config"]["Entrypoint"] == ["/bin/sh", "-c"]  # the image's stay its own
    out = dy("inspect", "-f", "{{json .Config.Entrypoint}} {{json .Config.Cmd}}", "ep")
    assert out.stdout == '["/bin/echo"] ["one","two"]\n'
    assert dy("start", "-a", "ep").stdout == "one two\n"
