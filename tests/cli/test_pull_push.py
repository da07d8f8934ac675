"""pull, push, login, logout, search end to end: `dockyard` against the reference registry
(distribution's docker-registry), and against podman and skopeo on the same registry."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts.test_images import BusyboxImage

from tests.cli.dockyard_helper import DOCKYARD, Dockyard
from tests.registry.client_helpers import (
    FakeRegistry,
    ReferenceRegistry,
    compress,
    htpasswd_file,
    isolate_registry_settings,
    make_image,
    make_index,
    sha256,
    tar_of,
    write_layout,
)
from tests.runtime.peers import Podman, needs_root, require, run, run_in_pty

ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")


@pytest.fixture(autouse=True)
def own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Logins in this test's auth.json; an empty registries.conf unless a test writes one."""
    return isolate_registry_settings(tmp_path, monkeypatch)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ReferenceRegistry]:
    require("docker-registry")
    reg = ReferenceRegistry(tmp_path / "registry")
    try:
        yield reg
    finally:
        reg.stop()


def other_root(tmp_path: Path, name: str = "other") -> Dockyard:
    return Dockyard(tmp_path / name)


def digest_line(out: str) -> str:
    """The digest of push's `TAG: digest: sha256:… size: N` line."""
    line = [ln for ln in out.splitlines() if ": digest: " in ln][-1]
    return line.split(": digest: ")[1].split()[0]


def image_id(d: Dockyard, name: str) -> str:
    return d("images", "-q", "--no-trunc", name).stdout.split()[0]


def test_push_then_pull_back(dy: Dockyard, registry: ReferenceRegistry, tmp_path: Path) -> None:
    name = f"{registry.host}/bb:v1"
    dy("tag", "busybox", name)
    out = dy("push", name).stdout
    lines = out.splitlines()
    assert lines[0] == f"The push refers to repository [{registry.host}/bb]"
    assert lines[-2].endswith(": Pushed") and lines[-1].startswith("v1: digest: sha256:")
    digest = digest_line(out)
    size = int(lines[-1].rsplit(" ", 1)[1])
    other = other_root(tmp_path)
    pulled = other("pull", name).stdout.splitlines()
    assert pulled[0] == "v1: Pulling from bb"
    assert pulled[-3:] == [
        f"Digest: {digest}",
        f"Status: Downloaded newer image for {name}",
        name,
    ]
    assert any(ln.endswith(": Pull complete") for ln in pulled)
    assert image_id(other, name) == image_id(dy, "busybox")
    listing = other("images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}")
    assert listing.stdout == f"{registry.host}/bb v1 {digest}\n"
    inspect = json.loads(other("image", "inspect", name).stdout)[0]
    assert inspect["RepoDigests"] == [f"{registry.host}/bb@{digest}"]
    pushed = dy("image", "inspect", "--format", "{{json .RepoDigests}}", name).stdout
    assert f"{registry.host}/bb@{digest}" in json.loads(pushed)
    assert other("run", "--rm", name, "echo", "ok").stdout == "ok\n"
    again = other("pull", name).stdout.splitlines()
    assert f"Status: Image is up to date for {name}" in again
    by_digest = other("pull", f"{registry.host}/bb@{digest}").stdout.splitlines()
    assert by_digest[-1] == f"{registry.host}/bb@{digest}"
    skopeo = run(["skopeo", "inspect", "--tls-verify=false", f"docker://{name}"], timeout=60)
    assert skopeo.returncode == 0, skopeo.describe()
    assert json.loads(skopeo.stdout)["Digest"] == digest
    raw = run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{name}"])
    assert len(raw.stdout.encode()) == size


def test_skip_existing_mount_and_chunks(
    dy: Dockyard, registry: ReferenceRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = f"{registry.host}/first/bb:v1"
    dy("tag", "busybox", first)
    dy("push", first)
    again = dy("push", first).stdout
    assert ": Layer already exists" in again and ": Pushed" not in again
    second = f"{registry.host}/second/bb:v1"
    dy("tag", "busybox", second)
    mounted = dy("push", second).stdout
    assert ": Mounted from first/bb" in mounted, mounted
    # a store that pulled from a repository mounts from it too
    other = other_root(tmp_path)
    other("pull", "-q", first)
    other("tag", first, f"{registry.host}/third/bb:v1")
    assert ": Mounted from first/bb" in other("push", f"{registry.host}/third/bb:v1").stdout
    # chunked uploads (PATCH with Content-Range, then PUT)
    monkeypatch.setenv("DOCKYARD_PUSH_CHUNK_SIZE", "100000")
    dy("import", _tar(tmp_path), "chunky")
    chunky = f"{registry.host}/chunky:v1"
    dy("tag", "chunky", chunky)
    pushed = digest_line(dy("push", chunky).stdout)
    monkeypatch.delenv("DOCKYARD_PUSH_CHUNK_SIZE")
    fresh = other_root(tmp_path, "fresh")
    assert fresh("pull", "-q", chunky).stdout == f"{chunky}\n"
    assert fresh("images", "--digests", "--format", "{{.Digest}}").stdout == f"{pushed}\n"
    assert image_id(fresh, chunky) == image_id(dy, "chunky")


def _tar(tmp_path: Path) -> str:
    """A root file system tar of ~600 kB (several chunks)."""
    path = tmp_path / "chunky.tar"
    path.write_bytes(tar_of({"data/random": os.urandom(600_000), "etc/hostname": b"x\n"}))
    return str(path)


def test_login_push_pull_logout(dy: Dockyard, tmp_path: Path) -> None:
    require("docker-registry")
    require("htpasswd")
    auth_file = tmp_path / "auth.json"
    reg = ReferenceRegistry(
        tmp_path / "registry", htpasswd=htpasswd_file(tmp_path / "htpasswd", "alice", "s3cret")
    )
    try:
        name = f"{reg.host}/private/bb:v1"
        dy("tag", "busybox", name)
        denied = dy("push", name, check=False)
        assert denied.returncode == 1
        assert denied.stderr.splitlines()[-1] == (
            f"Error: unauthorized: authentication required: cannot push to {reg.host}/private/bb"
            f" (log in first: dockyard login {reg.host})"
        )
        wrong = dy("login", "-u", "alice", "-p", "nope", reg.host, check=False)
        assert wrong.returncode == 1
        assert wrong.stderr.splitlines()[-1] == (
            f"Error: {reg.host}: unauthorized: incorrect username or password"
        )
        assert not auth_file.exists()
        login = subprocess.run(
            [DOCKYARD, "--root", str(dy.root), "login", "-u", "alice", "--password-stdin",
             f"http://{reg.host}/"],
            input="s3cret\n", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (login.returncode, login.stdout) == (0, "Login Succeeded\n"), login.stderr
        token = base64.b64encode(b"alice:s3cret").decode()
        assert json.loads(auth_file.read_text()) == {"auths": {reg.host: {"auth": token}}}
        assert auth_file.stat().st_mode & 0o777 == 0o600
        digest = digest_line(dy("push", name).stdout)
        other = other_root(tmp_path)
        assert other("pull", "-q", name).stdout == f"{name}\n"
        assert dy("logout", reg.host).stdout == f"Removing login credentials for {reg.host}\n"
        assert json.loads(auth_file.read_text()) == {"auths": {}}
        assert dy("logout", reg.host).stdout == f"Not logged in to {reg.host}\n"
        fresh = other_root(tmp_path, "fresh")
        failed = fresh("pull", name, check=False)
        assert failed.returncode == 1
        assert failed.stderr.splitlines()[-1].startswith(
            f"Error: pull access denied for {reg.host}/private/bb, repository does not exist "
            "or may require 'docker login'"
        )
        assert fresh("images", "-q").stdout == ""
        assert other("images", "--digests", "--format", "{{.Digest}}").stdout == f"{digest}\n"
    finally:
        reg.stop()


def test_short_name_through_a_docker_io_mirror(
    dy: Dockyard, registry: ReferenceRegistry, tmp_path: Path, own_settings: Path
) -> None:
    dy("tag", "busybox", f"{registry.host}/library/busybox:latest")
    dy("push", f"{registry.host}/library/busybox:latest")
    own_settings.write_text(
        'unqualified-search-registries = ["docker.io"]\n'
        '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
        f'[[registry.mirror]]\nlocation = "{registry.host}"\ninsecure = true\n'
    )
    other = other_root(tmp_path)
    out = other("pull", "busybox").stdout.splitlines()
    assert out[0] == "Using default tag: latest"
    assert out[1] == "latest: Pulling from library/busybox"
    assert out[-2:] == [
        "Status: Downloaded newer image for busybox:latest",
        "docker.io/library/busybox:latest",
    ]
    assert other("images", "--format", "{{.Repository}}:{{.Tag}}").stdout == "busybox:latest\n"
    assert other("run", "--rm", "busybox", "echo", "mirrored").stdout == "mirrored\n"
    # the mirror lacks it and docker.io can't be reached: one line naming both
    failed = other("pull", "nosuchimage", check=False)
    assert failed.returncode == 1
    message = failed.stderr.strip()
    assert "\n" not in message and message.startswith("Error: registry docker.io is unreachable")
    assert f"mirror {registry.host}/library/nosuchimage: manifest unknown" in message


def _public_address() -> str | None:
    """A non-loopback IPv4 address of this host (not a container bridge)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True, text=True, timeout=10, check=False,
    ).stdout  # fmt: skip
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 3 and not parts[1].startswith(("dy", "dockyard", "veth", "br-", "cni")):
            return parts[3].split("/")[0]
    return None


def test_insecure_registry_needs_config(dy: Dockyard, tmp_path: Path, own_settings: Path) -> None:
    require("docker-registry")
    address = _public_address()
    if address is None:
        pytest.skip("no non-loopback address to serve a registry on")
    reg = ReferenceRegistry(tmp_path / "registry", host=address)
    try:
        name = f"{reg.host}/bb:v1"
        dy("tag", "busybox", name)
        refused = dy("push", name, check=False)
        assert refused.returncode == 1
        assert refused.stderr.splitlines()[-1] == (
            f"Error: registry {reg.host} is unreachable: http: server gave HTTP response to "
            "HTTPS client (an insecure registry? mark it insecure in registries.conf)"
        )
        assert dy("push", "--tls-verify=false", name).returncode == 0
        other = other_root(tmp_path)
        assert other("pull", name, check=False).returncode == 1
        own_settings.write_text(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
        assert other("pull", "-q", name).stdout == f"{name}\n"
    finally:
        reg.stop()


def test_search(dy: Dockyard, registry: ReferenceRegistry) -> None:
    for repo in ("apps/nginx", "nginx-light", "busybox"):
        dy("tag", "busybox", f"{registry.host}/{repo}:v1")
        dy("push", "-q", f"{registry.host}/{repo}:v1")
    out = dy("search", f"{registry.host}/ngin").stdout.splitlines()
    assert out[0].split() == ["NAME", "DESCRIPTION", "STARS", "OFFICIAL"]
    assert [ln.split()[0] for ln in out[1:]] == [
        f"{registry.host}/apps/nginx",
        f"{registry.host}/nginx-light",
    ]
    names = dy("search", "--format", "{{.Name}}", "--limit", "1", f"{registry.host}/n").stdout
    assert names == f"{registry.host}/apps/nginx\n"
    assert dy("search", f"{registry.host}/zzz").stdout.splitlines()[1:] == []


def test_index_platforms_via_skopeo(
    dy: Dockyard, registry: ReferenceRegistry, tmp_path: Path, busybox_image: BusyboxImage
) -> None:
    skopeo = require("skopeo")
    rootfs = busybox_image.tar.read_bytes()
    amd = make_image([rootfs], ["gzip"], arch="amd64", cmd=["/bin/echo", "amd64 here"])
    arm = make_image([tar_of({"arm": b"arm64\n"})], arch="arm64", variant="v8")
    index, media = make_index([amd, arm])
    layout = tmp_path / "layout"
    write_layout(layout, {"multi": (index, media)}, {**amd.blobs, **arm.blobs, sha256(
        amd.manifest): amd.manifest, sha256(arm.manifest): arm.manifest})  # fmt: skip
    name = f"{registry.host}/multi:latest"
    res = run(
        [skopeo, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{layout}:multi", f"docker://{name}"],
        timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.describe()
    other = other_root(tmp_path)
    out = other("pull", name).stdout.splitlines()
    assert f"Digest: {sha256(index)}" in out
    if os.uname().machine == "x86_64":
        assert other("run", "--rm", name).stdout == "amd64 here\n"
        arch = "{{.Architecture}}"
        assert other("image", "inspect", "--format", arch, name).stdout == "amd64\n"
    other("pull", "-q", "--platform", "linux/arm64", name)
    assert other("image", "inspect", "--format", "{{.Architecture}}", name).stdout == "arm64\n"
    wrong = other("pull", "--platform", "linux/s390x", name, check=False)
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("Error: no matching manifest for linux/s390x")
    bad = other("pull", "--platform", "x/y/z/w", name, check=False)
    assert bad.stderr == 'Error: invalid platform "x/y/z/w": use os/arch[/variant], e.g. ' \
        "linux/amd64 or linux/arm64/v8\n"  # fmt: skip


def test_errors_are_one_line_and_change_nothing(dy: Dockyard, registry: ReferenceRegistry) -> None:
    before = dy("images", "-q").stdout
    blobs = sorted((dy.root / "blobs" / "sha256").iterdir())
    cases = {
        f"{registry.host}/nothing:v1": f"Error: manifest for {registry.host}/nothing:v1 not "
        "found: manifest unknown: manifest unknown",
        "127.0.0.1:1/app:v1": "Error: registry 127.0.0.1:1 is unreachable: connection refused",
        "Bad/Name": 'Error: invalid reference "Bad/Name": repository name must be lowercase',
    }
    for name, message in cases.items():
        out = dy("pull", name, check=False)
        assert (out.returncode, out.stderr.strip().splitlines()[-1]) == (1, message), out.stderr
    missing = dy("push", f"{registry.host}/notlocal:v1", check=False)
    assert missing.stderr == (
        f"Error: An image does not exist locally with the tag: {registry.host}/notlocal\n"
    )
    assert dy("images", "-q").stdout == before
    assert sorted((dy.root / "blobs" / "sha256").iterdir()) == blobs


def test_corrupt_and_cut_blobs_from_the_cli(dy: Dockyard, tmp_path: Path) -> None:
    fake = FakeRegistry()
    try:
        image = make_image([tar_of({"a": os.urandom(200_000)}), tar_of({"b": b"b"})])
        fake.add("app", "v1", image)
        other = other_root(tmp_path)
        fake.behaviour.cut_once.add(image.layers[0])
        assert other("pull", "-q", f"{fake.host}/app:v1").stdout == f"{fake.host}/app:v1\n"
        assert fake.ranges(image.layers[0])[1].startswith("bytes=")
        fake.add("bad", "v1", image)
        fake.behaviour.corrupt.add(image.layers[1])
        fresh = other_root(tmp_path, "fresh")
        out = fresh("pull", f"{fake.host}/bad:v1", check=False)
        assert out.returncode == 1
        assert out.stderr.startswith(f"Error: blob {image.layers[1]} from {fake.host}/bad is ")
        assert "corrupt: digest mismatch" in out.stderr and out.stderr.count("\n") == 1
        assert fresh("images", "-q").stdout == ""
        assert not list((fresh.root / "blobs" / "sha256").glob("*"))
    finally:
        fake.stop()


def test_quiet_and_terminal_output(dy: Dockyard, registry: ReferenceRegistry) -> None:
    name = f"{registry.host}/tty:v1"
    dy("tag", "busybox", name)
    assert dy("push", "-q", name).stdout == f"{name}\n"
    dy("rmi", name)
    dy("rmi", "busybox")
    status, output = run_in_pty([DOCKYARD, "--root", str(dy.root), "pull", name], timeout=60)
    assert status == 0, output
    assert "\x1b[1A\x1b[2K\r" in output  # a layer's line redrawn in place
    assert "Pull complete" in output and output.rstrip().endswith(name)


# ------------------------------------------------------------------ real peers


@pytest.fixture
def podman() -> Iterator[Podman]:
    import tempfile

    needs_root()
    require("conmon")
    base = Path(tempfile.mkdtemp(prefix="dy-pm-", dir="/tmp"))
    auth = Path(os.environ["REGISTRY_AUTH_FILE"])  # podman wants the file it is given to exist
    if not auth.exists():
        auth.write_text('{"auths": {}}')
    pm = Podman(binary=require("podman"), base=base, runtime=require("runc"))
    try:
        yield pm
    finally:
        problems = pm.teardown()
    assert not problems, "podman teardown:\n" + "\n".join(problems)


@pytest.mark.peer
def test_podman_pushes_dockyard_pulls(
    dy: Dockyard,
    podman: Podman,
    registry: ReferenceRegistry,
    tmp_path: Path,
    busybox_image: BusyboxImage,
) -> None:
    name = f"{registry.host}/from-podman:v1"
    res = podman("import", str(busybox_image.tar), name, timeout=60)
    assert res.returncode == 0, res.describe()
    res = podman("push", "--tls-verify=false", name, timeout=60)
    assert res.returncode == 0, res.describe()
    other = other_root(tmp_path)
    assert other("pull", "-q", name).stdout == f"{name}\n"
    assert other("run", "--rm", name, "echo", "from podman").stdout == "from podman\n"


@pytest.mark.peer
def test_dockyard_pushes_podman_pulls(
    dy: Dockyard, podman: Podman, registry: ReferenceRegistry
) -> None:
    name = f"{registry.host}/from-dockyard:v1"
    dy("tag", "busybox", name)
    digest = digest_line(dy("push", name).stdout)
    res = podman("pull", "--tls-verify=false", name, timeout=60)
    assert res.returncode == 0, res.describe()
    res = podman("image", "inspect", "--format", "{{.Digest}}", name)
    assert res.stdout.strip() == digest, res.describe()
    res = podman("run", "--rm", *ULIMITS, name, "echo", "from dockyard", timeout=60)
    assert (res.returncode, res.stdout) == (0, "from dockyard\n"), res.describe()


def test_layer_kinds_pull_and_run(
    dy: Dockyard, tmp_path: Path, busybox_image: BusyboxImage
) -> None:
    """gzip, zstd and uncompressed layers (Docker and OCI media types) all run."""
    fake = FakeRegistry()
    try:
        rootfs = busybox_image.tar.read_bytes()
        extra = tar_of({"etc/motd": b"zstd layer\n"})
        plain = tar_of({"etc/issue": compress(b"plain layer\n", "plain")})
        for docker in (False, True):
            image = make_image([rootfs, extra, plain], ["gzip", "zstd", "plain"], docker=docker)
            fake.add("kinds", "docker" if docker else "oci", image)
        other = other_root(tmp_path)
        for tag in ("oci", "docker"):
            name = f"{fake.host}/kinds:{tag}"
            other("pull", "-q", name)
            out = other("run", "--rm", name, "cat", "/etc/motd", "/etc/issue").stdout
            assert out == "zstd layer\nplain layer\n"
    finally:
        fake.stop()


def test_token_auth_against_dockyards_own_registry(dy: Dockyard, tmp_path: Path) -> None:
    """The Bearer flow end to end: `dockyard registry serve --auth token` issues JWTs."""
    from tests.registry.helpers import start_server

    require("htpasswd")
    htpasswd = htpasswd_file(tmp_path / "htpasswd", "alice", "wonderland")
    server = start_server(tmp_path / "storage", "--auth", "token", "--htpasswd", str(htpasswd))
    try:
        name = f"{server.host}/secure/bb:v1"
        dy("tag", "busybox", name)
        denied = dy("push", name, check=False)
        assert denied.returncode == 1 and "unauthorized" in denied.stderr
        assert dy("login", "-u", "alice", "-p", "nope", server.host, check=False).returncode == 1
        dy("login", "-u", "alice", "-p", "wonderland", server.host)
        digest = digest_line(dy("push", name).stdout)
        other = other_root(tmp_path)
        assert other("pull", "-q", name).stdout == f"{name}\n"
        assert other("images", "--digests", "--format", "{{.Digest}}").stdout == f"{digest}\n"
        dy("logout", server.host)
        fresh = other_root(tmp_path, "fresh")
        failed = fresh("pull", name, check=False)
        assert failed.returncode == 1 and "pull access denied" in failed.stderr
    finally:
        assert server.stop() == 0, server.log.read_text()


def test_run_pulls_a_missing_image_first(
    dy: Dockyard, registry: ReferenceRegistry, tmp_path: Path, own_settings: Path
) -> None:
    dy("tag", "busybox", f"{registry.host}/library/busybox:latest")
    dy("push", "-q", f"{registry.host}/library/busybox:latest")
    own_settings.write_text(
        '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
        f'[[registry.mirror]]\nlocation = "{registry.host}"\ninsecure = true\n'
    )
    other = other_root(tmp_path, "autopull")
    out = other("run", "--rm", "busybox", "echo", "pulled")
    assert out.stdout == "pulled\n"
    assert out.stderr.startswith("Unable to find image 'busybox:latest' locally\n")
    assert "Status: Downloaded newer image for busybox:latest" in out.stderr
    again = other("run", "--rm", "busybox", "echo", "again")  # present now: no pull
    assert again.stdout == "again\n" and "Unable to find" not in again.stderr
    never = other("run", "--rm", "--pull", "never", "nosuch", "true", check=False)
    assert never.returncode == 125 and "No such image: nosuch" in never.stderr
    assert other("ps", "-aq").stdout == ""
