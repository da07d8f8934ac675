"""Builds on the Debian base image: users by name, COPY --chown by name, an ADD of a
compressed tarball, SHELL with bash, a cache mount, and ONBUILD triggers in a child build."""

from __future__ import annotations

import io
import lzma
import tarfile
from pathlib import Path

from tests.build.test_build_cli import _ctx, said
from tests.cli.dockyard_helper import Dockyard


def test_debian_users_chown_shell_and_add(dy: Dockyard, tmp_path: Path, debian_image: Path) -> None:
    dy("import", str(debian_image), "debian:bookworm")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("pkg/VERSION")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"1.2.3\n"))
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "pkg.tar.xz").write_bytes(lzma.compress(raw.getvalue()))
    ctx = _ctx(
        tmp_path,
        "FROM debian:bookworm\n"
        'SHELL ["/bin/bash", "-o", "pipefail", "-c"]\n'
        "RUN useradd --create-home --uid 1234 app"
        " && echo shell=$(basename $0) ${BASH_VERSION%%.*}\n"
        "COPY --chown=app:app --chmod=600 conf.ini /home/app/\n"
        "COPY --link --chown=app conf.ini /linked/\n"
        "ADD pkg.tar.xz /opt/\n"
        "RUN --mount=type=cache,target=/var/cache/build,uid=1234 "
        "echo cached > /var/cache/build/marker && ls -ln /var/cache/build\n"
        "USER app\n"
        "WORKDIR /home/app\n"
        "RUN id -un && stat -c '%U:%G %a' conf.ini && cat /opt/pkg/VERSION"
        " && stat -c 'linked %u' /linked/conf.ini\n",
        {"conf.ini": "[a]\n"},
    )
    out = dy("build", "-t", "deb-app", str(ctx)).stderr
    assert said(out, "shell=bash 5")
    assert said(out, "app") and said(out, "app:app 600") and said(out, "1.2.3")
    assert said(out, "linked 1234")  # --link --chown by name: the parent's /etc/passwd
    assert "1234" in out  # the cache mount's owner
    script = "id -u; pwd; test -e /var/cache/build || echo no-mount-point"
    got = dy("run", "--rm", "deb-app", "sh", "-c", script).stdout
    assert got == "1234\n/home/app\nno-mount-point\n"  # nor the cache mount's content


def test_onbuild_triggers_run_in_the_child(dy: Dockyard, tmp_path: Path) -> None:
    parent = _ctx(
        tmp_path,
        "FROM busybox\nONBUILD COPY app.txt /app.txt\nONBUILD RUN echo triggered $(cat /app.txt)\n",
    )
    dy("build", "-t", "onbuild-base", str(parent))
    child = tmp_path / "child"
    child.mkdir()
    (child / "Dockerfile").write_text("FROM onbuild-base\nRUN echo child\n")
    (child / "app.txt").write_text("child-app\n")
    out = dy("build", "-t", "onbuild-child", str(child)).stderr
    assert said(out, "triggered child-app") and said(out, "child")
    assert "[2/4] COPY app.txt /app.txt" in out
    inspect = dy("image", "inspect", "-f", "{{json .Config.OnBuild}}", "onbuild-child").stdout
    assert inspect.strip() in ("null", "[]")


def test_debian_multi_stage_heredocs_mounts_and_config(
    dy: Dockyard, tmp_path: Path, debian_image: Path
) -> None:
    dy("import", str(debian_image), "debian:bookworm")
    ctx = _ctx(
        tmp_path,
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=debian:bookworm\n"
        "FROM $BASE AS build\n"
        "ARG GREETING=hi\n"
        "ENV OUT=/out\n"
        "RUN <<EOF\n"
        "#!/bin/bash\n"
        "set -euo pipefail\n"
        'mkdir -p "$OUT"; echo "${GREETING} from ${BASH_VERSION%%.*}" > "$OUT/msg"\n'
        "EOF\n"
        "COPY --exclude=*.tmp src/ /src/\n"
        "RUN --mount=type=tmpfs,target=/work --network=none"
        " cp /src/* /work/ && ls /work > $OUT/listing && ls /sys/class/net > $OUT/net\n"
        "FROM build AS test\n"
        "RUN echo tested > /out/tested\n"
        "FROM $BASE\n"
        "COPY --from=build /out/ /app/\n"
        "RUN --mount=type=bind,from=test,source=/out/tested,target=/t cat /t\n"
        "LABEL org.opencontainers.image.title=app\n"
        "EXPOSE 8080\n"
        'HEALTHCHECK --interval=30s --timeout=3s CMD ["test", "-f", "/app/msg"]\n'
        "STOPSIGNAL SIGTERM\n"
        'CMD ["cat", "/app/msg", "/app/listing", "/app/net"]\n',
        {"src/a.c": "int a;\n", "src/b.c": "int b;\n", "src/junk.tmp": "x\n"},
    )
    out = dy("build", "--build-arg", "GREETING=hello", "-t", "deb-multi", str(ctx)).stderr
    assert said(out, "tested")  # the test stage ran, since the last one mounts from it
    shown = dy("run", "--rm", "deb-multi").stdout
    assert shown == "hello from 5\na.c\nb.c\nlo\n"
    config = dy("image", "inspect", "-f", "{{json .Config}}", "deb-multi").stdout
    assert '"org.opencontainers.image.title":"app"' in config and '"8080/tcp":{}' in config
    assert '"Test":["CMD","test","-f","/app/msg"]' in config and '"StopSignal":"SIGTERM"' in config
    # --target stops at the build stage: its files, none of the final stage's config
    dy("build", "--target", "build", "--build-arg", "GREETING=hello", "-t", "deb-build", str(ctx))
    got = dy("run", "--rm", "deb-build", "sh", "-c", "cat /out/msg; ls /out").stdout
    assert got == "hello from 5\nlisting\nmsg\nnet\n"
    inspect = dy("image", "inspect", "-f", "{{json .Config.ExposedPorts}}", "deb-build").stdout
    assert inspect.strip() == "null"
