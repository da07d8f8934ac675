"""`dockyard cp` sees the container's volumes and bind mounts, running or stopped."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.cli.dockyard_helper import DOCKYARD, Dockyard

NOT_FOUND = "Error response from daemon: Could not find the file"


@pytest.fixture(params=["running", "stopped"])
def state(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _box(dy: Dockyard, state: str, *flags: str, name: str = "box") -> None:
    verb = ("run", "-d") if state == "running" else ("create",)
    dy(*verb, "--name", name, *flags, "busybox", "sleep", "300")


def _volume_dir(dy: Dockyard, name: str) -> Path:
    return dy.root / "volumes" / name / "_data"


def _cp_out(dy: Dockyard, src: str) -> bytes:
    out = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), "cp", src, "-"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout


def _members(data: bytes) -> dict[str, bytes | None]:
    """name -> file content (None for anything else)."""
    found: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            reader = tar.extractfile(member) if member.isfile() else None
            found[member.name] = reader.read() if reader else None
    return found


def test_cp_into_and_out_of_a_named_volume(dy: Dockyard, state: str, tmp_path: Path) -> None:
    _box(dy, state, "-v", "data:/data")
    src = tmp_path / "in.txt"
    src.write_text("into the volume\n")
    dy("cp", str(src), "box:/data/")
    assert (_volume_dir(dy, "data") / "in.txt").read_text() == "into the volume\n"
    dy("cp", str(src), "box:/data/renamed.txt")
    assert (_volume_dir(dy, "data") / "renamed.txt").read_text() == "into the volume\n"
    (_volume_dir(dy, "data") / "host.txt").write_text("written on the host\n")
    out = tmp_path / "out"
    out.mkdir()
    dy("cp", "box:/data/host.txt", str(out))
    assert (out / "host.txt").read_text() == "written on the host\n"
    dy("cp", "box:/data", str(out / "whole"))
    assert sorted(os.listdir(out / "whole")) == ["host.txt", "in.txt", "renamed.txt"]
    assert _members(_cp_out(dy, "box:/data/.")) == {
        ".": None,
        "./host.txt": b"written on the host\n",
        "./in.txt": b"into the volume\n",
        "./renamed.txt": b"into the volume\n",
    }
    if state == "running":  # the container itself sees what cp wrote
        assert dy("exec", "box", "cat", "/data/in.txt").stdout == "into the volume\n"
    else:
        dy("start", "box")
        assert dy("exec", "box", "cat", "/data/renamed.txt").stdout == "into the volume\n"
    # nothing landed in the rootfs under the mount point
    dy("stop", "-t", "0", "box")
    diff = dy("diff", "box").stdout.splitlines()
    assert not [line for line in diff if line.split()[-1].startswith("/data/")], diff


def test_cp_with_bind_mounts_and_nested_volumes(dy: Dockyard, state: str, tmp_path: Path) -> None:
    host = tmp_path / "hostdir"
    host.mkdir()
    (host / "from-host.txt").write_text("bound\n")
    _box(dy, state, "-v", f"{host}:/srv", "-v", "inner:/srv/inner")
    src = tmp_path / "payload"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("payload\n")
    dy("cp", str(src), "box:/srv/")
    assert (host / "payload" / "sub" / "f.txt").read_text() == "payload\n"
    dy("cp", str(src / "sub" / "f.txt"), "box:/srv/inner/")
    assert (_volume_dir(dy, "inner") / "f.txt").read_text() == "payload\n"
    assert not (host / "inner" / "f.txt").exists()  # the longest mount wins
    # a directory copied out carries the mounts below it, not what is under them
    (host / "inner").mkdir(exist_ok=True)
    (host / "inner" / "hidden.txt").write_text("under the mount point\n")
    members = _members(_cp_out(dy, "box:/srv"))
    assert members["srv/from-host.txt"] == b"bound\n"
    assert members["srv/payload/sub/f.txt"] == b"payload\n"
    assert members["srv/inner/f.txt"] == b"payload\n"
    assert "srv/inner/hidden.txt" not in members
    # a directory onto a mount point goes into the mount
    other = tmp_path / "inner"
    other.mkdir()
    (other / "g.txt").write_text("g\n")
    dy("cp", str(other), "box:/srv/")
    assert (_volume_dir(dy, "inner") / "g.txt").read_text() == "g\n"


def test_symlinks_in_a_mount_stay_in_the_container(
    dy: Dockyard, state: str, tmp_path: Path
) -> None:
    host = tmp_path / "hostdir"
    host.mkdir()
    secret = tmp_path / "secret.txt"  # next to the bind source: never reachable
    secret.write_text("host secret\n")
    os.symlink("/", host / "root-link")
    os.symlink("../secret.txt", host / "up-link")
    os.symlink(str(secret), host / "abs-link")
    _box(dy, state, "-v", f"{host}:/bind")
    # `..` and `/` are the container's: up-link is /secret.txt in the container
    err = dy("cp", "box:/bind/up-link", str(tmp_path / "x"), "-L", check=False)
    assert err.returncode == 1 and err.stderr == f"{NOT_FOUND} /bind/up-link in container box\n"
    err = dy("cp", "-L", "box:/bind/abs-link", str(tmp_path / "y"), check=False)
    assert err.returncode == 1 and not (tmp_path / "y").exists()
    # into a link to "/": lands in the container's root, not the host's
    name = f"dockyard-cp-test-{os.getpid()}"
    src = tmp_path / name
    src.write_text("in the container root\n")
    dy("cp", str(src), "box:/bind/root-link/")
    assert not Path("/", name).exists()
    assert _members(_cp_out(dy, f"box:/{name}")) == {name: b"in the container root\n"}
    # a link itself is copied as a link
    assert _members(_cp_out(dy, "box:/bind/up-link")) == {"up-link": None}


def test_read_only_mounts_and_rootfs(dy: Dockyard, state: str, tmp_path: Path) -> None:
    _box(dy, state, "--read-only", "-v", "rw:/rw", "-v", "ro:/ro:ro")
    src = tmp_path / "f.txt"
    src.write_text("f\n")
    dy("cp", str(src), "box:/rw/")
    assert (_volume_dir(dy, "rw") / "f.txt").read_text() == "f\n"
    err = dy("cp", str(src), "box:/ro/", check=False)
    assert err.returncode == 1
    assert err.stderr == "Error response from daemon: mounted volume is marked read-only\n"
    assert not (_volume_dir(dy, "ro") / "f.txt").exists()
    err = dy("cp", str(src), "box:/tmp/", check=False)
    assert err.returncode == 1
    assert err.stderr == "Error response from daemon: container rootfs is marked read-only\n"
    # reading from a read-only volume is fine
    (_volume_dir(dy, "ro") / "r.txt").write_text("readable\n")
    assert _members(_cp_out(dy, "box:/ro/r.txt")) == {"r.txt": b"readable\n"}


def test_missing_bind_source_is_one_line(dy: Dockyard, tmp_path: Path) -> None:
    host = tmp_path / "gone"
    host.mkdir()
    _box(dy, "stopped", "-v", f"{host}:/gone")
    host.rmdir()
    err = dy("cp", "box:/gone/x", str(tmp_path), check=False)
    assert err.returncode == 1 and err.stderr.count("\n") == 1
    assert err.stderr.startswith("Error response from daemon: the bind mounted at /gone:")
