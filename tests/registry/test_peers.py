"""Real clients against the registry server: skopeo and podman push, pull, inspect, list."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scripts import test_images

from tests.registry.helpers import Server, oci_layout, run, sha256
from tests.runtime.peers import Podman, needs_root, require

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def layout(
    tmp_path_factory: pytest.TempPathFactory, busybox_image: test_images.BusyboxImage
) -> tuple[Path, str]:
    """An OCI layout of busybox (tag v1) plus a small second layer; its manifest digest."""
    require("skopeo")
    dest = tmp_path_factory.mktemp("layout") / "busybox"
    extra = _tar_with("etc/motd", b"pushed by a test\n")
    return dest, oci_layout(dest, [busybox_image.tar.read_bytes(), extra], tag="v1")


def _tar_with(name: str, data: bytes) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _skopeo(*args: str) -> str:
    res = run(["skopeo", *args], timeout=120)
    assert res.returncode == 0, f"skopeo {' '.join(args)}:\n{res.stderr}"
    return res.stdout


def test_skopeo_push_pull_inspect_list(
    server: Server, layout: tuple[Path, str], tmp_path: Path
) -> None:
    path, digest = layout
    dest = f"docker://{server.host}/library/busybox"
    _skopeo("copy", "--dest-tls-verify=false", f"oci:{path}:v1", f"{dest}:v1")
    _skopeo("copy", "--dest-tls-verify=false", f"oci:{path}:v1", f"{dest}:stable")
    r = server("GET", "/v2/library/busybox/manifests/v1")
    assert r.header("Docker-Content-Digest") == digest
    inspected = json.loads(_skopeo("inspect", "--tls-verify=false", f"{dest}:v1"))
    assert inspected["Digest"] == digest
    assert inspected["RepoTags"] == ["stable", "v1"]
    raw = _skopeo("inspect", "--raw", "--tls-verify=false", f"{dest}:v1")
    assert sha256(raw.encode()) == digest
    tags = json.loads(_skopeo("list-tags", "--tls-verify=false", dest))
    assert tags["Tags"] == ["stable", "v1"]
    # and back out: the same manifest and blobs
    out = tmp_path / "out"
    _skopeo("copy", "--src-tls-verify=false", f"{dest}:v1", f"oci:{out}:v1")
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    for blob in (path / "blobs" / "sha256").iterdir():
        assert (out / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()
    # to another repository: blobs are mounted, the manifest is the same
    _skopeo(
        "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"{dest}:v1", f"docker://{server.host}/a/b/c:v1",
    )  # fmt: skip
    r = server("GET", "/v2/a/b/c/manifests/v1")
    assert r.header("Docker-Content-Digest") == digest
    # pull by digest
    by_digest = tmp_path / "by-digest"
    _skopeo("copy", "--src-tls-verify=false", f"{dest}@{digest}", f"dir:{by_digest}")
    assert sha256((by_digest / "manifest.json").read_bytes()) == digest


def test_skopeo_with_htpasswd_and_token(
    make_server: Callable[..., Server], layout: tuple[Path, str], tmp_path: Path
) -> None:
    path, digest = layout
    htpasswd = tmp_path / "htpasswd"
    assert run(["htpasswd", "-Bbc", str(htpasswd), "alice", "wonderland"]).returncode == 0
    for flags in (("--htpasswd", str(htpasswd)), ("--auth", "token", "--htpasswd", str(htpasswd))):
        srv = make_server(*flags)
        dest = f"docker://{srv.host}/secure/busybox:v1"
        res = run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{path}:v1", dest])
        assert res.returncode != 0  # no credentials
        _skopeo(
            "copy", "--dest-tls-verify=false", "--dest-creds", "alice:wonderland",
            f"oci:{path}:v1", dest,
        )  # fmt: skip
        res = run(["skopeo", "inspect", "--tls-verify=false", "--creds", "alice:bad", dest])
        assert res.returncode != 0
        inspected = _skopeo("inspect", "--tls-verify=false", "--creds", "alice:wonderland", dest)
        assert json.loads(inspected)["Digest"] == digest


@pytest.fixture
def podman() -> Iterator[Podman]:
    needs_root()
    # podman refuses a runroot longer than 50 characters: a short private base
    base = Path(tempfile.mkdtemp(prefix="dy-reg-podman-"))
    pm = Podman(binary=require("podman"), base=base, runtime="runc")
    try:
        yield pm
    finally:
        problems = pm.teardown()
    assert not problems, "podman teardown:\n" + "\n".join(problems)


def test_podman_pull_push(server: Server, layout: tuple[Path, str], podman: Podman) -> None:
    path, _digest = layout
    source = f"{server.host}/podman/source:v1"
    _skopeo("copy", "--dest-tls-verify=false", f"oci:{path}:v1", f"docker://{source}")
    res = podman("pull", "--tls-verify=false", source, timeout=120)
    assert res.returncode == 0, res.describe()
    config = json.loads((path / "index.json").read_text())
    manifest = json.loads(
        (path / "blobs" / "sha256" / config["manifests"][0]["digest"].split(":")[1]).read_text()
    )
    image_id = manifest["config"]["digest"].split(":")[1]
    res = podman("images", "--no-trunc", "--format", "{{.ID}}")
    assert image_id in res.stdout.replace("sha256:", ""), res.describe()
    target = f"{server.host}/podman/pushed:v2"
    res = podman("push", "--tls-verify=false", source, target, timeout=120)
    assert res.returncode == 0, res.describe()
    inspected = json.loads(_skopeo("inspect", "--tls-verify=false", f"docker://{target}"))
    config_blob = server("GET", f"/v2/podman/pushed/blobs/{manifest['config']['digest']}")
    assert config_blob.status == 200
    assert inspected["Layers"] and len(inspected["Layers"]) == 2
    res = podman("rmi", "-a", "-f")
    assert res.returncode == 0, res.describe()
    res = podman("pull", "--tls-verify=false", target, timeout=120)
    assert res.returncode == 0, res.describe()
    # the host's hard nofile limit is low: podman's default can't be set under it
    limits = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")
    res = podman("run", "--rm", "--net=none", *limits, target, "cat", "/etc/motd", timeout=60)
    assert res.stdout == "pushed by a test\n", res.describe()
