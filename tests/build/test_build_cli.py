"""`dockyard build`: the classic builder, end to end as root with busybox."""

from __future__ import annotations

import io
import json
import os
import re
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


def said(out: str, line: str) -> bool:
    """Whether a step printed `line` (BuildKit plain: `#N <seconds> <line>`)."""
    return re.search(rf"#\d+ \d+\.\d{{3}} {re.escape(line)}\n", out) is not None


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
    out = dy("build", "-t", "cfg", "--build-arg", "WHO=there", "--label", "x=y", str(ctx)).stderr
    assert "[1/3] FROM docker.io/library/busybox:latest" in out
    assert "[2/3] WORKDIR /srv" in out and "[3/3] WORKDIR app" in out
    assert "naming to docker.io/library/cfg:latest done" in out
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
    out = dy("build", "-t", "runner", str(ctx)).stderr
    assert said(out, "out 1 env /w 0")
    assert "[3/5] RUN echo out $V $E $(pwd) $(id -u)" in out and "[5/5] RUN <<EOF" in out
    assert dy("run", "--rm", "runner").stdout == "exec\nheredoc\n"
    assert dy("ps", "-aq").stdout == ""
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\nRUN echo before; exit 3\n")
    failed = dy("build", "-t", "broken", str(ctx), check=False)
    assert failed.returncode == 1
    err = failed.stderr
    # BuildKit's report: the step's output again, the Dockerfile around the line, one line.
    assert " > [3/3] RUN echo before; exit 3:\n" in err and re.search(r"\d\.\d{3} before\n", err)
    assert "   2 |     RUN true\n   3 | >>> RUN echo before; exit 3\n" in err
    assert err.splitlines()[-1] == (
        'Error: Dockerfile:3: process "/bin/sh -c echo before; exit 3" did not complete'
        " successfully: exit code: 3 (in 'RUN echo before; exit 3')"
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
    out = dy("build", "-t", "multi", str(ctx)).stderr
    assert "never-run" not in out
    assert dy("run", "--rm", "multi").stdout == "built\n"
    iid = tmp_path / "iid"
    out = dy(
        "build", "--target", "builder", "--iidfile", str(iid), "-t", "a", "-t", "b:2", str(ctx)
    ).stderr
    assert "stage-2" not in out and "naming to docker.io/library/b:2 done" in out
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
    again = dy("build", str(ctx)).stderr
    assert again.count(" CACHED\n") == 4 and not said(again, "first")
    assert f"writing image {first} done" in again
    os.utime(ctx / "f", (1, 1))
    assert dy("build", str(ctx)).stderr.count(" CACHED\n") == 4
    (ctx / "f").write_text("two\n")
    out = dy("build", str(ctx)).stderr
    assert out.count(" CACHED\n") == 1 and said(out, "v=1")
    out = dy("build", "--build-arg", "V=2", str(ctx)).stderr
    assert out.count(" CACHED\n") == 2 and said(out, "v=2") and not said(out, "first")
    out = dy("build", "--no-cache", str(ctx)).stderr
    assert "CACHED" not in out and said(out, "first")
    assert dy("images", "-q").stdout.split() != dy("images", "-aq").stdout.split()
    pruned = dy("builder", "prune", "-f").stdout
    assert "build cache entries and 0 cache mounts removed" in pruned
    assert "CACHED" not in dy("build", str(ctx)).stderr


def test_dockerfile_from_stdin_and_tar_context(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "", {"x": "from-context\n"})
    df = b"FROM busybox\nCOPY x /x\n"
    out = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), "build", "-t", "stdin", "-f", "-", str(ctx)],
        input=df,
        capture_output=True,
        check=True,
    )
    assert b"naming to docker.io/library/stdin:latest done" in out.stderr
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
