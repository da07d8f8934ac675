"""save, load, history, export, commit, image prune: end to end, and against podman/skopeo."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.dockyard_helper import DOCKYARD, Dockyard
from tests.runtime.peers import Podman, needs_root, require, run

ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")


def _image_id(dy: Dockyard, name: str = "busybox") -> str:
    return dy("images", "-q", "--no-trunc", name).stdout.split()[0]


# ------------------------------------------------------------------ save / load


def test_save_rmi_load_round_trip(dy: Dockyard, tmp_path: Path) -> None:
    before = _image_id(dy)
    archive = tmp_path / "bb.tar"
    dy("save", "-o", str(archive), "busybox")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert {"manifest.json", "index.json", "oci-layout", "repositories"} <= set(names)
    dy("rmi", "busybox")
    out = dy("load", "-i", str(archive))
    assert out.stdout == "Loaded image: busybox:latest\n"
    assert _image_id(dy) == before
    assert dy("run", "--rm", "busybox", "echo", "ok").stdout == "ok\n"


def test_save_to_stdout_and_load_from_stdin(dy: Dockyard, tmp_path: Path) -> None:
    archive = tmp_path / "bb.tar"
    with open(archive, "wb") as f:
        subprocess.run([DOCKYARD, "--root", str(dy.root), "save", "busybox"], stdout=f, check=True)
    other = Dockyard(tmp_path / "other")
    with open(archive, "rb") as f:
        out = subprocess.run(
            [DOCKYARD, "--root", str(other.root), "load", "-q"],
            stdin=f,
            capture_output=True,
            text=True,
            check=True,
        )
    assert out.stdout == "Loaded image: busybox:latest\n"
    assert _image_id(other) == _image_id(dy)


def test_save_errors(dy: Dockyard, tmp_path: Path) -> None:
    out = dy("save", "-o", str(tmp_path / "x.tar"), "nope", check=False)
    assert out.returncode == 1 and out.stderr.strip() == "Error: No such image: nope"
    assert not (tmp_path / "x.tar").exists()
    out = dy("save", "--help")
    assert "-o" in out.stdout


def test_load_corrupt_archive_stores_nothing(dy: Dockyard, tmp_path: Path) -> None:
    archive = tmp_path / "bb.tar"
    dy("save", "-o", str(archive), "busybox")
    data = bytearray(archive.read_bytes())
    at = data.index(b"root:x:0:0")  # /etc/passwd inside the layer blob
    data[at : at + 4] = b"ROOT"
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    other = Dockyard(tmp_path / "other")
    out = other("load", "-i", str(bad), check=False)
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "invalid archive" in out.stderr
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(archive.read_bytes()[: len(data) // 3])
    out = other("load", "-i", str(truncated), check=False)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert other("images", "-q").stdout == ""
    assert not [p for p in (other.root / "blobs" / "sha256").glob("*")]


# ------------------------------------------------------------------ history


def test_history(dy: Dockyard) -> None:
    lines = dy("history", "busybox").stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert lines[1].startswith(_image_id(dy)[7:19]) and "dockyard import" in lines[1]
    assert dy("history", "-q", "--no-trunc", "busybox").stdout.split() == [_image_id(dy)]
    out = dy("history", "nope", check=False)
    assert out.returncode == 1 and "No such image: nope" in out.stderr


# ------------------------------------------------------------------ commit / export


def test_commit_keeps_files_and_whiteouts(dy: Dockyard) -> None:
    script = "echo committed > /hello.txt; rm /bin/ls; sleep 60"
    cid = dy("run", "-d", "busybox", "sh", "-c", script).stdout.strip()
    for _ in range(100):  # the export shows when the script has run
        names = _exported(dy, cid).splitlines()
        if "hello.txt" in names and "bin/ls" not in names:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the container's changes never showed in its export")
    out = dy("commit", "-m", "a message", "-a", "me", "-c", "CMD cat /hello.txt", cid, "snap:v1")
    image_id = out.stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert dy("run", "--rm", "snap:v1").stdout == "committed\n"
    res = dy("run", "--rm", "snap:v1", "sh", "-c", "test -e /bin/ls; echo $?")
    assert res.stdout == "1\n"
    history = dy("history", "--no-trunc", "snap:v1").stdout.splitlines()
    assert image_id in history[1] and "a message" in history[1] and script in history[1]
    assert dy("ps", "-q").stdout.strip() == cid[:12]  # still running after the pause
    dy("rm", "-f", cid)


def _exported(dy: Dockyard, cid: str) -> str:
    out = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), "export", cid], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        return "\n".join(tar.getnames())


def test_export_lists_container_files(dy: Dockyard, tmp_path: Path) -> None:
    cid = dy("create", "busybox", "true").stdout.strip()
    dy("start", cid)
    dy("wait", cid)
    out = tmp_path / "fs.tar"
    dy("export", "-o", str(out), cid)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        busybox = tar.getmember("bin/busybox")
        sh = tar.getmember("bin/sh")
    assert {"bin/busybox", "etc/passwd", "tmp"} <= names
    assert busybox.isfile() and busybox.mode & 0o111 and busybox.uid == 0
    assert sh.issym() or sh.islnk()
    out2 = dy("export", "nope", check=False)
    assert out2.returncode == 1 and "No such container: nope" in out2.stderr


# ------------------------------------------------------------------ prune


def test_image_prune(dy: Dockyard) -> None:
    cid = dy("create", "busybox", "true").stdout.strip()
    dangling = dy("commit", cid).stdout.strip()
    dy("commit", cid, "kept:v1")
    out = dy("image", "prune", "-f").stdout.splitlines()
    assert out[0] == "Deleted Images:" and f"deleted: {dangling}" in out
    assert out[-1].startswith("Total reclaimed space: ")
    assert "kept" in dy("images").stdout
    dy("rm", cid)
    everything = dy("image", "prune", "-a", "-f").stdout
    assert "untagged: kept:v1" in everything and "untagged: busybox:latest" in everything
    assert dy("images", "-q").stdout == ""
    assert dy("image", "prune", "-f").stdout == "Total reclaimed space: 0B\n"
    assert dy("image", "ls", "-q").stdout == ""


# ------------------------------------------------------------------ real peers


@pytest.fixture
def podman() -> Iterator[Podman]:
    needs_root()
    require("conmon")
    # podman refuses a runroot longer than 50 characters: a short base under /tmp
    base = Path(tempfile.mkdtemp(prefix="dy-pm-", dir="/tmp"))
    pm = Podman(binary=require("podman"), base=base, runtime=require("runc"))
    try:
        yield pm
    finally:
        problems = pm.teardown()
    assert not problems, "podman teardown:\n" + "\n".join(problems)


@pytest.mark.peer
def test_dockyard_save_runs_in_podman(dy: Dockyard, podman: Podman, tmp_path: Path) -> None:
    archive = tmp_path / "bb.tar"
    dy("save", "-o", str(archive), "busybox")
    res = podman("load", "-i", str(archive), timeout=60)
    assert res.returncode == 0 and "busybox:latest" in res.stdout, res.describe()
    res = podman("run", "--rm", *ULIMITS, "busybox", "echo", "ok", timeout=60)
    assert (res.returncode, res.stdout) == (0, "ok\n"), res.describe()


@pytest.mark.peer
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_save_loads_and_runs(dy: Dockyard, podman: Podman, tmp_path: Path, fmt: str) -> None:
    image_id = _image_id(dy)
    archive = tmp_path / "bb.tar"
    dy("save", "-o", str(archive), "busybox")
    assert podman("load", "-i", str(archive), timeout=60).returncode == 0
    saved = tmp_path / f"podman-{fmt}.tar"
    res = podman("save", "--format", fmt, "-o", str(saved), "busybox", timeout=60)
    assert res.returncode == 0, res.describe()
    other = Dockyard(tmp_path / "other")
    assert other("load", "-i", str(saved)).stdout == "Loaded image: busybox:latest\n"
    assert _image_id(other) == image_id
    assert other("run", "--rm", "busybox", "echo", "ok").stdout == "ok\n"


@pytest.mark.peer
def test_skopeo_reads_oci_archive(dy: Dockyard, tmp_path: Path) -> None:
    needs_root()
    skopeo = require("skopeo")
    archive = tmp_path / "bb.tar"
    dy("save", "-o", str(archive), "busybox")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    ours = [p.rsplit("/", 1)[1] for p in manifest[0]["Layers"]]
    layout = tmp_path / "layout"
    res = run(
        [skopeo, "copy", "--preserve-digests", f"oci-archive:{archive}", f"oci:{layout}:latest"],
        timeout=60,
    )
    assert res.returncode == 0, res.describe()
    res = run([skopeo, "inspect", f"oci:{layout}:latest"], timeout=60)
    assert res.returncode == 0, res.describe()
    assert [d.split(":")[1] for d in json.loads(res.stdout)["Layers"]] == ours
    # and a plain copy (which may compress) keeps the diff_ids
    res = run([skopeo, "copy", f"oci-archive:{archive}", f"oci:{tmp_path / 'l2'}:x"], timeout=60)
    assert res.returncode == 0, res.describe()
    res = run([skopeo, "inspect", "--config", f"oci:{tmp_path / 'l2'}:x"], timeout=60)
    assert json.loads(res.stdout)["rootfs"]["diff_ids"] == [f"sha256:{d}" for d in ours]
