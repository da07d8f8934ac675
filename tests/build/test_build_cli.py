"""`dockyard build`: the classic builder, end to end as root with busybox."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from tests.cli.dockyard_helper import DOCKYARD, Dockyard


def _ctx(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    return ctx


def _config(dy: Dockyard, name: str) -> dict[str, Any]:
    return dict(json.loads(dy("image", "inspect", name).stdout)[0]["Config"])


def test_config_instructions(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "ARG BASE=busybox\n"
        "FROM $BASE\n"
        "MAINTAINER someone\n"
        "ARG WHO=world\n"
        "ENV GREETING=hello PLACE=$WHO\n"
        'LABEL a=b "c d"=e\n'
        "WORKDIR /srv\n"
        "WORKDIR app\n"
        "USER 1000:1000\n"
        "EXPOSE 80 53/udp\n"
        "VOLUME /data\n"
        "STOPSIGNAL SIGINT\n"
        "HEALTHCHECK --interval=5s --retries=2 CMD true\n"
        'ENTRYPOINT ["/bin/echo"]\n'
        "CMD hi\n"
        "ONBUILD RUN true\n",
    )
    out = dy("build", "-t", "cfg", "--build-arg", "WHO=there", "--label", "x=y", str(ctx)).stdout
    assert "Step 1/15 : FROM $BASE" in out and "Successfully tagged cfg:latest" in out
    c = _config(dy, "cfg")
    assert c["Env"][-2:] == ["GREETING=hello", "PLACE=there"]
    assert c["Labels"] == {"a": "b", "c d": "e", "x": "y"}
    assert c["WorkingDir"] == "/srv/app" and c["User"] == "1000:1000"
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert c["Volumes"] == {"/data": {}} and c["StopSignal"] == "SIGINT"
    assert c["Healthcheck"] == {
        "Test": ["CMD-SHELL", "true"],
        "Interval": 5_000_000_000,
        "Retries": 2,
    }
    assert c["Entrypoint"] == ["/bin/echo"] and c["Cmd"] == ["/bin/sh", "-c", "hi"]
    assert c["OnBuild"] == ["RUN true"]
    history = dy("history", "--no-trunc", "cfg").stdout
    assert "#(nop)  ENV GREETING=hello PLACE=there" in history
    assert "/bin/sh -c #(nop) WORKDIR /srv" in history


def test_run_output_failure_and_run_the_image(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox\n"
        "ARG V=1\n"
        "ENV E=env\n"
        "WORKDIR /w\n"
        "RUN echo out $V $E $(pwd) $(id -u)\n"
        'RUN ["sh", "-c", "echo exec > /w/exec"]\n'
        'SHELL ["/bin/sh", "-ec"]\n'
        "RUN <<EOF\necho heredoc > /w/doc\nEOF\n"
        'CMD ["cat", "/w/exec", "/w/doc"]\n',
    )
    out = dy("build", "-t", "runner", str(ctx)).stdout
    assert "out 1 env /w 0\n" in out
    assert " ---> Running in " in out and "Removing intermediate container" in out
    assert dy("run", "--rm", "runner").stdout == "exec\nheredoc\n"
    assert dy("ps", "-aq").stdout == ""
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\nRUN echo before; exit 3\n")
    failed = dy("build", "-t", "broken", str(ctx), check=False)
    assert failed.returncode == 1
    assert "before" in failed.stdout
    assert (
        "Dockerfile:3: The command '/bin/sh -c echo before; exit 3' returned a non-zero code: 3"
        in failed.stderr
    )
    assert dy("ps", "-aq").stdout == ""
    assert "broken" not in dy("images").stdout


def test_copy_semantics(dy: Dockyard, tmp_path: Path) -> None:
    files = {
        "a.txt": "A\n",
        "b.txt": "B\n",
        "c.log": "C\n",
        "dir/one": "1\n",
        "dir/sub/two": "2\n",
        "secret.txt": "S\n",
        ".dockerignore": "secret.txt\n",
    }
    ctx = _ctx(
        tmp_path,
        "FROM busybox\n"
        "WORKDIR /w\n"
        "COPY a.txt /single\n"
        "COPY a.txt /todir/\n"
        "COPY dir /contents\n"
        "COPY *.txt /globbed/\n"
        "COPY --chown=1:2 --chmod=640 b.txt rel/\n"
        "COPY <<greeting /docs/\nhello $HOSTNAME-less\ngreeting\n",
        files,
    )
    dy("build", "-t", "copies", str(ctx))
    script = (
        "cat /single /todir/a.txt /contents/one /contents/sub/two; ls /globbed; "
        "stat -c '%u:%g %a' /w/rel/b.txt; cat /docs/greeting"
    )
    out = dy("run", "--rm", "copies", "sh", "-c", script).stdout
    assert out == "A\nA\n1\n2\na.txt\nb.txt\n1:2 640\nhello -less\n"
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY secret.txt /\n")
    failed = dy("build", str(ctx), check=False)
    assert failed.returncode == 1 and "secret.txt" in failed.stderr


def test_add_local_tar(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "FROM busybox\nADD arch.tar.gz /opt/\nADD plain.txt /p\n")
    (ctx / "plain.txt").write_text("plain\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("pkg/file")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"in\n"))
    (ctx / "arch.tar.gz").write_bytes(buf.getvalue())
    dy("build", "-t", "added", str(ctx))
    assert dy("run", "--rm", "added", "cat", "/opt/pkg/file", "/p").stdout == "in\nplain\n"


def test_multi_stage_target_and_copy_from(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox AS builder\n"
        "RUN echo built > /artifact\n"
        "FROM busybox AS unused\n"
        "RUN echo never-run\n"
        "FROM scratch\n"
        "COPY --from=builder /artifact /bin/busybox /\n"
        'CMD ["/busybox", "cat", "/artifact"]\n',
    )
    out = dy("build", "-t", "multi", str(ctx)).stdout
    assert "never-run" not in out
    assert dy("run", "--rm", "multi").stdout == "built\n"
    iid = tmp_path / "iid"
    out = dy(
        "build", "--target", "builder", "--iidfile", str(iid), "-t", "a", "-t", "b:2", str(ctx)
    ).stdout
    assert "Step 3/" not in out and "Successfully tagged b:2" in out
    image_id = iid.read_text()
    assert image_id.startswith("sha256:")
    listed = dy("images", "--no-trunc", "-q", "a").stdout.split()
    assert listed == [image_id]


def test_cache(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox\nRUN echo first\nARG V=1\nCOPY f /f\nRUN echo v=$V\nRUN echo last\n",
        {"f": "one\n"},
    )
    first = dy("build", "-q", str(ctx)).stdout.strip()
    again = dy("build", str(ctx)).stdout
    assert again.count(" ---> Using cache") == 5 and "Running in" not in again
    assert first[7:19] in again
    os.utime(ctx / "f", (1, 1))
    assert dy("build", str(ctx)).stdout.count("Using cache") == 5
    (ctx / "f").write_text("two\n")
    out = dy("build", str(ctx)).stdout
    assert out.count("Using cache") == 2 and "v=1" in out
    out = dy("build", "--build-arg", "V=2", str(ctx)).stdout
    assert out.count("Using cache") == 3 and "v=2" in out and "\nfirst\n" not in out
    out = dy("build", "--no-cache", str(ctx)).stdout
    assert "Using cache" not in out and "\nfirst\n" in out
    assert dy("images", "-q").stdout.split() != dy("images", "-aq").stdout.split()
    pruned = dy("builder", "prune", "-f").stdout
    assert "build cache entries removed" in pruned
    assert "Using cache" not in dy("build", str(ctx)).stdout


def test_dockerfile_from_stdin_and_tar_context(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "", {"x": "from-context\n"})
    df = b"FROM busybox\nCOPY x /x\n"
    out = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), "build", "-t", "stdin", "-f", "-", str(ctx)],
        input=df,
        capture_output=True,
        check=True,
    )
    assert b"Successfully tagged stdin:latest" in out.stdout
    assert dy("run", "--rm", "stdin", "cat", "/x").stdout == "from-context\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM busybox\nCOPY y /y\n"), ("y", b"tar\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "ctx.tar").write_bytes(buf.getvalue())
    dy("build", "-t", "tarctx", str(tmp_path / "ctx.tar"))
    assert dy("run", "--rm", "tarctx", "cat", "/y").stdout == "tar\n"
