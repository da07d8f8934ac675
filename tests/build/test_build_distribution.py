"""Builds that reach outside: ADD <url> --checksum, --output, FROM pulled from a registry,
the Jenkinsfile pipeline (CLI and Python API), and built images read by skopeo and podman."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.build.test_build_cli import _ctx, said
from tests.cli.dockyard_helper import DOCKYARD, Dockyard
from tests.cli.test_pull_push import ULIMITS, own_settings, podman
from tests.registry.helpers import Server, start_server
from tests.runtime.peers import Podman, require

__all__ = ["own_settings", "podman"]
HERE = Path(__file__).resolve().parents[2]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    """A static HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "registry")
    try:
        yield server
    finally:
        server.stop()


def test_add_url_with_checksum(dy: Dockyard, tmp_path: Path, web: str) -> None:
    data = b"downloaded\n"
    (tmp_path / "www" / "file.txt").write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ctx = _ctx(
        tmp_path,
        f"FROM busybox\nADD --checksum={digest} {web}/file.txt /dl/\nADD {web}/file.txt /named\n",
    )
    dy("build", "-t", "fetched", str(ctx))
    out = dy("run", "--rm", "fetched", "sh", "-c", "stat -c %a /dl/file.txt; cat /named").stdout
    assert out == "600\ndownloaded\n"
    wrong = "sha256:" + "0" * 64
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD --checksum={wrong} {web}/file.txt /x\n")
    failed = dy("build", str(ctx), check=False)
    assert failed.returncode == 1
    assert f"digest mismatch {digest}: {wrong}" in failed.stderr.splitlines()[-1]
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD {web}/absent /x\n")
    failed = dy("build", str(ctx), check=False)
    assert "invalid response status 404" in failed.stderr.splitlines()[-1]


def test_outputs(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "FROM busybox\nRUN echo built > /result && rm /bin/vi\n")
    local = tmp_path / "out"
    dy(
        "build",
        "-o",
        f"type=local,dest={local}",
        "-o",
        f"type=tar,dest={tmp_path}/fs.tar",
        str(ctx),
    )
    assert (local / "result").read_text() == "built\n"
    assert (local / "bin" / "busybox").exists() and not (local / "bin" / "vi").exists()
    with tarfile.open(tmp_path / "fs.tar") as tar:
        assert "result" in tar.getnames()
    stdout = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), "build", "-q", "-o", "-", str(ctx)],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(stdout)) as tar:
        assert "result" in tar.getnames()
    oci = tmp_path / "image.tar"
    dy("build", "-o", f"type=oci,dest={oci},name=built:oci", str(ctx))
    skopeo = require("skopeo")
    meta = json.loads(
        subprocess.run(
            [skopeo, "inspect", f"oci-archive:{oci}"], capture_output=True, check=True, text=True
        ).stdout
    )
    assert meta["Architecture"] == "amd64" and len(meta["Layers"]) == 2
    layout = tmp_path / "layout"
    dy("build", "-o", f"type=oci,tar=false,dest={layout},name=built:dir", str(ctx))
    assert (layout / "oci-layout").exists() and (layout / "index.json").exists()
    meta = json.loads(
        subprocess.run(
            [skopeo, "inspect", f"oci:{layout}:dir"], capture_output=True, check=True, text=True
        ).stdout
    )
    assert len(meta["Layers"]) == 2
    failed = dy("build", "-o", "type=nope", str(ctx), check=False)
    assert failed.returncode == 1 and "nope" in failed.stderr


def test_from_is_pulled_when_missing_and_with_pull(
    dy: Dockyard, tmp_path: Path, registry: Server
) -> None:
    name = f"{registry.host}/base/busybox:1"
    dy("tag", "busybox", name)
    dy("push", name)
    fresh = Dockyard(tmp_path / "fresh")
    ctx = _ctx(tmp_path, f"FROM {name}\nRUN echo on-pulled-base\n")
    out = fresh("build", "-t", "onpulled", str(ctx)).stderr
    assert f"[internal] load metadata for {name}" in out and said(out, "on-pulled-base")
    assert name in fresh("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    # --pull asks the registry again even though the image is here now.
    registry.stop()
    failed = fresh("build", "--pull", str(ctx), check=False)
    assert failed.returncode == 1
    assert f"failed to resolve source metadata for {name}" in failed.stderr.splitlines()[-1]
    assert "CACHED" in fresh("build", str(ctx)).stderr  # without --pull: the local image
    ids = fresh("ps", "-aq").stdout
    assert ids == ""
    from tests.conftest import teardown_network

    teardown_network(tmp_path / "fresh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_jenkinsfile_pipeline(dy: Dockyard, registry: Server) -> None:
    """scripts/pipeline.py replays examples/pipeline/Jenkinsfile's plugin commands."""
    out = subprocess.run(
        [
            str(HERE / ".venv" / "bin" / "python"),
            str(HERE / "scripts" / "pipeline.py"),
            "--registry",
            registry.host,
            "--root",
            str(dy.root),
            "--port",
            str(_free_port()),
            "--build-number",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "+ docker build -t my-app:7 ." in out.stdout
    assert f"+ docker push {registry.host}/my-app:latest" in out.stdout
    assert "+ curl -fsS http://localhost:" in out.stdout
    assert out.stdout.split("+ curl -fsS http://localhost:", 1)[1].splitlines()[1] == (
        "hello from my-app"
    )
    tags = registry("GET", "/v2/my-app/tags/list").json()["tags"]
    assert sorted(tags) == ["7", "latest"]
    assert dy("ps", "-aq").stdout == ""


def test_python_api_build_then_run(dy: Dockyard, tmp_path: Path) -> None:
    """docker-py's shape: images.build(path=, tag=) then containers.run(image)."""
    from dockyard.client import Client

    client = Client(str(dy.root))
    try:
        image, log = client.images.build(
            path=str(HERE / "examples" / "pipeline"),
            tag="api-app:1",
            buildargs={"GREETING": "hi from the API"},
        )
        assert "api-app:1" in image.tags
        assert {"stream": "Successfully tagged api-app:1\n"} in log
        out = client.containers.run("api-app:1", ["cat", "/www/index.html"], remove=True)
        assert out == b"hi from the API\n"
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "Dockerfile").write_text("FROM busybox\nRUN echo partial; exit 4\n")
        from dockyard.client import BuildError

        with pytest.raises(BuildError) as failed:
            client.images.build(path=str(broken))
        assert "exit code: 4" in failed.value.msg
        assert any("partial" in entry["stream"] for entry in failed.value.build_log)
    finally:
        client.close()


@pytest.mark.peer
def test_built_image_pushed_read_by_skopeo_run_by_podman(
    dy: Dockyard, tmp_path: Path, registry: Server, podman: Podman
) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox\nLABEL org.example=built\nENV GREETING=hello\nWORKDIR /srv\n"
        "COPY msg .\nUSER 1000\nEXPOSE 8080\nSTOPSIGNAL SIGINT\n"
        'ENTRYPOINT ["sh", "-c"]\nCMD ["echo $GREETING from $(cat msg) as $(id -u)"]\n',
        {"msg": "dockyard\n"},
    )
    name = f"{registry.host}/built/app:1"
    dy("build", "-t", name, "--push", str(ctx))
    skopeo = require("skopeo")
    raw = subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", "--config", f"docker://{name}"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    config = json.loads(raw)
    assert config["config"]["Labels"] == {"org.example": "built"}
    assert config["config"]["WorkingDir"] == "/srv" and config["config"]["User"] == "1000"
    assert config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert config["config"]["StopSignal"] == "SIGINT"
    assert len(config["history"]) >= 10 and config["created"]
    assert len(config["rootfs"]["diff_ids"]) == 3
    res = podman("pull", "--tls-verify=false", name, timeout=60)
    assert res.returncode == 0, res.describe()
    res = podman("run", "--rm", *ULIMITS, name, timeout=60)
    assert (res.returncode, res.stdout) == (0, "hello from dockyard as 1000\n"), res.describe()
