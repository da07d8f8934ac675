"""-u with names, and the image's USER, resolved from the image's passwd and group files."""

from __future__ import annotations

from pathlib import Path

from dockyard.engine.users import UserError, resolve
from tests.cli.dockyard_helper import Dockyard


def test_resolve_from_layers(tmp_path: Path) -> None:
    top, base = tmp_path / "top", tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (top / "etc").mkdir(parents=True)
    (base / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nold:x:7:7::/:/bin/sh\n")
    (top / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:33:33::/srv:/bin/sh\n")
    (base / "etc/group").write_text("root:x:0:\nweb:x:33:\nadm:x:4:web\nstaff:x:50:web,root\n")
    layers = [str(top), str(base)]  # the top layer's passwd wins
    assert resolve("web", layers) == (33, 33, [4, 50])
    assert resolve("web:staff", layers) == (33, 50, [4])
    assert resolve("33:4", layers) == (33, 4, [50])
    assert resolve("1000", layers) == (1000, 0, [])
    for bad in ("old", "web:nogroup"):
        try:
            resolve(bad, layers)
        except UserError as err:
            assert "no matching entries" in str(err)
        else:
            raise AssertionError(f"{bad} resolved")


def test_links_in_a_layer_never_lead_to_the_host_files(tmp_path: Path) -> None:
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "passwd").write_text("hostonly:x:4242:4242::/:/bin/sh\n")
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "etc").symlink_to(host)  # an image's /etc -> an absolute path
    try:
        resolve("hostonly", [str(layer)])
    except UserError:
        pass
    else:
        raise AssertionError("a user was found in the host's file")


def test_user_names_and_image_user(dy: Dockyard) -> None:
    assert dy("run", "--rm", "-u", "nobody", "busybox", "id").stdout == (
        "uid=65534(nobody) gid=65534(nobody)\n"
    )
    assert dy("run", "--rm", "-u", "nobody:root", "busybox", "id", "-g").stdout == "0\n"
    cid = dy("create", "busybox", "sleep", "60").stdout.strip()
    dy("commit", "-c", "USER nobody", cid, "as-nobody")
    dy("rm", cid)
    assert dy("run", "--rm", "as-nobody", "id", "-u").stdout == "65534\n"
    assert dy("run", "--rm", "-u", "0", "as-nobody", "id", "-u").stdout == "0\n"
