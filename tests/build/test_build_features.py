"""BuildKit's everyday features end to end: RUN --mount, --network, --secret, parallel
stages, SOURCE_DATE_EPOCH, COPY --link/--exclude, --platform and the stdin contexts."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.build.test_build_cli import _ctx, said
from tests.cli.dockyard_helper import DOCKYARD, Dockyard


def feed(dy: Dockyard, data: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    """`dockyard ARGS` with `data` on stdin (a Dockerfile or a tar context)."""
    out = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), *args], input=data, capture_output=True, timeout=60
    )
    done = subprocess.CompletedProcess(
        out.args, out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode()
    )
    assert out.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done


def layer_names(dy: Dockyard, image: str, tmp_path: Path) -> list[list[str]]:
    """The file names of each layer of `image` (docker-save order)."""
    out = tmp_path / "saved"
    out.mkdir(exist_ok=True)
    data = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), "save", image], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as saved:
        manifest = json.load(saved.extractfile("manifest.json"))  # type: ignore[arg-type]
        layers = []
        for name in manifest[0]["Layers"]:
            blob = saved.extractfile(name)
            assert blob is not None
            with tarfile.open(fileobj=io.BytesIO(blob.read())) as layer:
                layers.append(layer.getnames())
    return layers


def test_run_mounts(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox AS tools\n"
        "RUN echo from-stage > /tool\n"
        "FROM busybox\n"
        "WORKDIR /w\n"
        "RUN --mount=type=bind,source=src,target=/mnt/src cat /mnt/src/in.txt\n"
        "RUN --mount=type=bind,from=tools,source=/tool,target=/t cat /t\n"
        "RUN --mount=type=bind,source=src,target=rel,rw touch rel/scratch && ls rel\n"
        "RUN --mount=type=cache,target=/cache,id=counter echo x >> /cache/n && wc -l < /cache/n\n"
        "RUN --mount=type=tmpfs,target=/scratch,size=1m df -k /scratch | tail -1\n"
        "RUN --mount=type=secret,id=token cat /run/secrets/token; echo\n"
        "RUN --mount=type=secret,id=token,env=TOKEN,target=/s,uid=7,mode=0440"
        " echo env=$TOKEN && stat -c '%u %a' /s\n",
        {"src/in.txt": "bound\n", "src/skipped.log": "no\n", ".dockerignore": "src/*.log\n"},
    )
    (tmp_path / "token").write_text("s3cret")
    out = dy("build", "--secret", f"id=token,src={tmp_path / 'token'}", "-t", "m", str(ctx)).stderr
    assert said(out, "bound") and said(out, "from-stage") and said(out, "in.txt")
    assert said(out, "scratch") and "skipped.log" not in out  # .dockerignore applies
    assert said(out, "1") and said(out, "s3cret") and said(out, "env=s3cret")
    assert said(out, "7 440")
    assert "1024" in out  # the tmpfs size
    # Nothing a mount brought (or its mount point) is in the image or its history.
    names = [n for layer in layer_names(dy, "m", tmp_path)[1:] for n in layer]
    assert names == ["w"], names
    history = dy("history", "--no-trunc", "m").stdout
    assert "s3cret" not in history
    # The cache mount outlives the build: a rebuild of that step sees the first run's file.
    again = dy("build", "--no-cache", "--secret", f"id=token,src={tmp_path / 'token'}", str(ctx))
    assert said(again.stderr, "2")
    # A required secret that wasn't given: one line naming it, nothing built.
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nRUN --mount=type=secret,id=missing,required cat /run/secrets/missing\n"
    )
    failed = dy("build", str(ctx), check=False)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].startswith(
        "Error: Dockerfile:2: secret missing: not found"
    )
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=ssh true\n")
    failed = dy("build", str(ctx), check=False)
    assert "SSH agent forwarding is not supported" in failed.stderr
    pruned = dy("builder", "prune", "-f").stdout
    assert "and 1 cache mounts removed" in pruned


def test_run_network_modes(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox\n"
        "RUN cat /proc/net/dev | grep -c eth0 || true\n"
        "RUN --network=none ls /sys/class/net\n",
    )
    out = dy("build", str(ctx)).stderr
    assert said(out, "1")  # the default: the root's bridge, as Docker's classic builder
    assert said(out, "lo")
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --network=host true\n")
    failed = dy("build", str(ctx), check=False)
    assert "needs the network.host entitlement: build with --allow network.host" in failed.stderr
    dy("build", "--allow", "network.host", str(ctx))
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN ls /sys/class/net | grep -c eth0 || true\n")
    out = dy("build", "--network", "none", str(ctx)).stderr
    assert said(out, "0")


def test_independent_stages_run_in_parallel(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox AS a\n"
        "RUN cut -d' ' -f1 /proc/uptime > /start; sleep 1; cut -d' ' -f1 /proc/uptime > /end\n"
        "FROM busybox AS b\n"
        "RUN cut -d' ' -f1 /proc/uptime > /start; sleep 1; cut -d' ' -f1 /proc/uptime > /end\n"
        "FROM busybox\n"
        "COPY --from=a /start /a.start\n"
        "COPY --from=a /end /a.end\n"
        "COPY --from=b /start /b.start\n"
        "COPY --from=b /end /b.end\n",
    )
    dy("build", "-t", "par", str(ctx))
    out = dy("run", "--rm", "par", "cat", "/a.start", "/a.end", "/b.start", "/b.end").stdout
    a0, a1, b0, b1 = (float(x) for x in out.split())
    assert a0 < b1 and b0 < a1, "the two stages' RUN steps did not overlap"


def test_failing_stage_cancels_the_others(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox AS slow\nRUN sleep 30\nFROM busybox AS bad\nRUN exit 7\n"
        "FROM busybox\nCOPY --from=slow /bin/true /1\nCOPY --from=bad /bin/true /2\n",
    )
    failed = dy("build", str(ctx), check=False, timeout=25)
    assert failed.returncode == 1 and "exit code: 7" in failed.stderr.splitlines()[-1]
    assert dy("ps", "-aq").stdout == ""
    assert not list((dy.root / "tmp").iterdir())


def test_source_date_epoch_is_reproducible(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox\nRUN mkdir /out && echo made > /out/f\nCOPY f /f\nCOPY --link f /g\n",
        {"f": "file\n"},
    )
    args = ("build", "-q", "--no-cache", "--build-arg", "SOURCE_DATE_EPOCH=1700000000", str(ctx))
    first = dy(*args).stdout.strip()
    second = dy(*args).stdout.strip()
    assert first == second
    meta = json.loads(dy("image", "inspect", first).stdout)[0]
    assert meta["Created"].startswith("2023-11-14T22:13:20")
    layers = tmp_path / "layers"
    dy("tag", first, "repro")
    for layer in layer_names(dy, "repro", layers.parent)[1:]:
        assert layer  # every step left its files
    plain = dy("build", "-q", "--no-cache", str(ctx)).stdout.strip()
    assert plain != first


def test_copy_link_and_exclude(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "ARG BASE=busybox\nFROM $BASE\nCOPY --link --exclude=*.log --exclude=sub/skip app /app/\n",
        {"app/a.txt": "a\n", "app/b.log": "b\n", "app/sub/keep": "k\n", "app/sub/skip": "s\n"},
    )
    dy("build", "-t", "linked", str(ctx))
    found = dy("run", "--rm", "linked", "find", "/app", "-type", "f").stdout.split()
    assert sorted(found) == ["/app/a.txt", "/app/sub/keep"]
    before = layer_names(dy, "linked", tmp_path)[-1]
    # Another base: the --link layer is not rebuilt (same digest on top of the new base).
    feed(dy, b"FROM busybox\nRUN touch /marker\n", "build", "-t", "otherbase", "-")
    out = dy("build", "--build-arg", "BASE=otherbase", "-t", "relinked", str(ctx)).stderr
    assert "CACHED" in out.split("COPY --link", 1)[1].split("\n#", 2)[1]
    saved = json.loads(dy("image", "inspect", "relinked").stdout)[0]["RootFS"]["Layers"]
    first = json.loads(dy("image", "inspect", "linked").stdout)[0]["RootFS"]["Layers"]
    assert saved[-1] == first[-1] and len(saved) == len(first) + 1
    assert before == layer_names(dy, "relinked", tmp_path)[-1]


def test_platform_args_and_a_foreign_platform(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM --platform=$BUILDPLATFORM busybox AS build\n"
        "ARG TARGETPLATFORM\nARG BUILDARCH\n"
        "RUN echo building on $BUILDARCH for $TARGETPLATFORM > /note\n"
        "FROM scratch\nCOPY --from=build /note /\n",
    )
    dy("build", "--platform", "linux/arm64", "-t", "cross", str(ctx))
    meta = json.loads(dy("image", "inspect", "cross").stdout)[0]
    assert meta["Architecture"] == "arm64"
    out = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), "save", "cross"], capture_output=True, check=True
    ).stdout
    assert b"building on amd64 for linux/arm64" in out
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    failed = dy("build", "--platform", "linux/arm64", str(ctx), check=False)
    assert failed.returncode == 1
    assert "image busybox is linux/amd64, the stage wants linux/arm64" in failed.stderr


def test_stdin_dockerfile_alone_and_tar_with_dockerignore(dy: Dockyard, tmp_path: Path) -> None:
    out = feed(dy, b"FROM busybox\nRUN echo no-context\n", "build", "-t", "alone", "-").stderr
    assert said(out, "no-context")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        files = {
            "Dockerfile": b"FROM busybox\nCOPY . /c/\n",
            ".dockerignore": b"*.secret\n",
            "keep.txt": b"k\n",
            "drop.secret": b"x\n",
        }
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    feed(dy, buf.getvalue(), "build", "-t", "fromtar", "-")
    listed = dy("run", "--rm", "fromtar", "ls", "-a", "/c").stdout.split()
    assert "keep.txt" in listed and "drop.secret" not in listed


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        ("FROM busybox\nFOO bar\n", "Dockerfile:2: unknown instruction: FOO"),
        ('FROM busybox\nENV A="abc\n', "looking for matching double-quote"),
        ("FROM busybox AS a\nFROM busybox AS a\n", 'Dockerfile:2: duplicate stage name "a"'),
        ("FROM busybox\nRUN --network=bogus true\n", "unsupported network mode 'bogus'"),
        ("FROM busybox\nCOPY --nope a b\n", "Dockerfile:2: unknown flag: --nope"),
        ("FROM busybox\nRUN <<EOF\necho\n", "unterminated heredoc"),
        ("FROM busybox\nCOPY ../outside /x\n", "outside the build context"),
        ("FROM busybox\nCOPY missing /x\n", "missing"),
        ("FROM busybox\nCOPY --from=nostage /x /x\n", "nostage"),
        ("FROM busybox\nRUN --mount=type=bind,target=/x,from=nostage true\n", "nostage"),
        # errors found while a step runs name its line too
        (
            "FROM busybox\nCOPY --chown=nobodyx Dockerfile /x\n",
            "Dockerfile:2: unable to convert uid/gid chown string to host mapping:"
            " unable to find user nobodyx",
        ),
        ("FROM busybox\nUSER nobodyx\nRUN true\n", "Dockerfile:3: unable to find user nobodyx"),
        (
            "FROM busybox\nHEALTHCHECK --interval=soon CMD true\n",
            "Dockerfile:2: time: invalid duration 'soon'",
        ),
        ("FROM busybox\nSTOPSIGNAL SIGNOPE\n", "Dockerfile:2: Invalid signal: SIGNOPE"),
        ("FROM busybox\nEXPOSE http\n", "Dockerfile:2: EXPOSE: invalid container port 'http'"),
        ("FROM busybox\nRUN echo partial > /p; exit 4\n", "exit code: 4"),
        (
            "FROM busybox\nRUN --mount=type=bind,source=nowhere,target=/x true\n",
            "Dockerfile:2: nowhere: not found in the build context",
        ),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    dy: Dockyard, tmp_path: Path, dockerfile: str, message: str
) -> None:
    ctx = _ctx(tmp_path, dockerfile)
    dy("run", "--rm", "busybox", "true")  # busybox's layer unpacked: its snapshot is there
    images = dy("images", "-q").stdout  # (steps that succeeded stay cached, as in Docker)
    snapshots = sorted(p.name for p in (dy.root / "snapshots").iterdir())
    failed = dy("build", str(ctx), check=False)
    assert failed.returncode == 1
    last = failed.stderr.splitlines()[-1]
    assert last.startswith("Error: ") and message in last, failed.stderr
    assert "Traceback" not in failed.stderr
    assert dy("images", "-q").stdout == images
    assert dy("ps", "-aq").stdout == ""
    tmp = dy.root / "tmp"
    assert not tmp.exists() or not list(tmp.iterdir())
    assert sorted(p.name for p in (dy.root / "snapshots").iterdir()) == snapshots
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(dy.root) not in mounts
    assert dy("system", "check").stdout.startswith("ok: ")


def test_workdir_is_made_as_the_user_and_shebang_heredocs_run_as_files(
    dy: Dockyard, tmp_path: Path
) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox\n"
        "RUN echo 'app:x:1234:2345::/home/app:/bin/sh' >> /etc/passwd\n"
        "USER app\n"
        "WORKDIR /home/app/work\n"
        "USER root\n"
        "WORKDIR /srv\n"
        'RUN <<EOF\n#!/bin/busybox sh\necho "script $0" > /srv/out\nEOF\n'
        'RUN <<EOF\necho "plain $0" >> /srv/out\nEOF\n'
        "EXPOSE 7000-7002/udp 80\n",
    )
    dy("build", "-t", "owned", str(ctx))
    script = "stat -c '%u:%g %Y' /home/app /home/app/work /srv; cat /srv/out"
    out = dy("run", "--rm", "owned", "sh", "-c", script).stdout.split("\n")
    # BuildKit: WORKDIR's missing directories belong to the USER, made now (not in 1970)
    owners = [line.split() for line in out[:3]]
    assert [o[0] for o in owners] == ["1234:2345", "1234:2345", "0:0"]
    assert all(int(o[1]) > 1_700_000_000 for o in owners)
    # a heredoc with a shebang is an executable file under /dev/pipes; a plain one is sh -c
    assert out[3:5] == ["script /dev/pipes/EOF", "plain /bin/sh"]
    ports = json.loads(
        dy("image", "inspect", "-f", "{{json .Config.ExposedPorts}}", "owned").stdout
    )
    assert sorted(ports) == ["7000/udp", "7001/udp", "7002/udp", "80/tcp"]
    # the script's text is in the cache key, not only its path
    (ctx / "Dockerfile").write_text(
        (ctx / "Dockerfile").read_text().replace("script $0", "changed $0")
    )
    rebuilt = dy("build", "-t", "owned", str(ctx)).stderr
    assert rebuilt.count(" CACHED\n") == 3
    assert "changed /dev/pipes/EOF" in dy("run", "--rm", "owned", "cat", "/srv/out").stdout


def test_file_flag_proxy_args_copy_from_image_and_quiet(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "", {"keep": "k\n", "drop.tmp": "d\n"})
    elsewhere = tmp_path / "build.Dockerfile"
    elsewhere.write_text(
        "FROM busybox\n"
        "RUN echo proxy=$HTTP_PROXY\n"
        "COPY --from=busybox /bin/busybox /opt/\n"
        "COPY . /ctx/\n"
    )
    # <Dockerfile>.dockerignore beside the Dockerfile wins over the context's .dockerignore
    (tmp_path / "build.Dockerfile.dockerignore").write_text("*.tmp\n")
    out = dy(
        "build",
        "-f",
        str(elsewhere),
        "--build-arg",
        "HTTP_PROXY=http://proxy:3128",
        "-t",
        "flags",
        str(ctx),
    ).stderr
    assert said(out, "proxy=http://proxy:3128")
    assert "proxy:3128" not in dy("history", "--no-trunc", "flags").stdout
    listed = dy("run", "--rm", "flags", "sh", "-c", "ls /ctx; /opt/busybox true && echo bb").stdout
    assert listed.split() == ["Dockerfile", "keep", "bb"]
    quiet = dy("build", "--progress", "quiet", str(ctx), "-f", str(elsewhere))
    assert quiet.stderr == "" and quiet.stdout.startswith("sha256:")


def test_concurrent_builds_share_one_cache(dy: Dockyard, tmp_path: Path) -> None:
    files = {f"src/f{i}": f"{i}\n" for i in range(50)}
    ctx = _ctx(
        tmp_path,
        "FROM busybox AS a\nCOPY src /src\nRUN cat /src/* | wc -l > /count\n"
        "FROM busybox\nCOPY --from=a /count /count\n",
        files,
    )
    argv = [DOCKYARD, "--root", str(dy.root), "build", "-q", str(ctx)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
    assert "consistent" in dy("system", "check").stdout
    image = results[0][0].decode().strip()
    assert dy("run", "--rm", image, "cat", "/count").stdout.strip() == "50"
    # Afterwards every step is a cache hit, whichever build wrote it.
    again = dy("build", str(ctx)).stderr
    assert again.count(" CACHED\n") == 3


def test_private_cache_mounts_get_their_own_instance(dy: Dockyard, tmp_path: Path) -> None:
    step = (
        "RUN --mount=type=cache,id=shared-id,sharing=private,target=/c"
        " ls /c | wc -l > /seen; touch /c/$STAGE; sleep 1\n"
    )
    ctx = _ctx(
        tmp_path,
        f"FROM busybox AS one\nENV STAGE=one\n{step}"
        f"FROM busybox AS two\nENV STAGE=two\n{step}"
        "FROM busybox\nCOPY --from=one /seen /one\nCOPY --from=two /seen /two\n",
    )
    dy("build", "-t", "priv", str(ctx))
    out = dy("run", "--rm", "priv", "cat", "/one", "/two").stdout.split()
    assert out == ["0", "0"]  # in parallel: neither saw the other's file
    pruned = dy("builder", "prune", "-f").stdout
    assert "and 2 cache mounts removed" in pruned


def test_lowercase_dockerfile_and_missing_one(dy: Dockyard, tmp_path: Path) -> None:
    ctx = tmp_path / "lower"
    ctx.mkdir()
    (ctx / "dockerfile").write_text("FROM busybox\nLABEL found=lowercase\n")
    dy("build", "-t", "lower", str(ctx))
    assert "lowercase" in dy("image", "inspect", "-f", "{{json .Config.Labels}}", "lower").stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = dy("build", str(empty), check=False)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].startswith("Error: Cannot locate specified Dockerfile")


def test_classic_flags_add_host_cache_from_and_remote_context(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "FROM busybox\nRUN grep db /etc/hosts\n")
    out = dy(
        "build",
        "--rm",
        "--force-rm",
        "--add-host",
        "db:10.1.2.3",
        "--cache-from",
        "registry.example/app:cache",
        str(ctx),
    ).stderr
    assert said(out, "10.1.2.3\tdb")
    assert "[Warning] --cache-from registry.example/app:cache: not used" in out
    failed = dy("build", "https://example.com/app.git", check=False)
    assert failed.returncode == 1 and "remote build contexts are not supported" in failed.stderr
    failed = dy("build", "--ssh", "default", str(ctx), check=False)
    assert "SSH agent forwarding is not supported" in failed.stderr


def test_a_rebuild_links_the_files_a_changed_copy_did_not_change(
    dy: Dockyard, tmp_path: Path
) -> None:
    files = {f"src/d{i % 3}/f{i}.txt": f"file {i}\n" for i in range(30)}
    ctx = _ctx(tmp_path, "FROM busybox\nCOPY src/ /src/\nRUN cat /src/d1/f1.txt\n", files)
    dy("build", "-t", "linked:1", str(ctx))
    (ctx / "src/d1/f1.txt").write_text("changed\n")
    out = dy("build", "-t", "linked:2", str(ctx)).stderr
    assert said(out, "changed")

    def copy_layer(tag: str) -> Path:
        # the COPY's layer is the image's second-to-last: its snapshot is named by chain ID
        from dockyard.image.store import ImageStore

        store = ImageStore(str(dy.root))
        try:
            chain = store.get(tag).chain_ids[-2]
            return Path(store.snapshots.layer_dirs(chain)[0])
        finally:
            store.conn.close()

    old, new = copy_layer("linked:1"), copy_layer("linked:2")
    shared = [name for name in files if (old / name).stat().st_ino == (new / name).stat().st_ino]
    assert sorted(shared) == sorted(set(files) - {"src/d1/f1.txt"})
    assert (old / "src/d1/f1.txt").read_text() == "file 1\n"
    script = "cat /src/d1/f1.txt /src/d0/f0.txt"
    assert dy("run", "--rm", "linked:1", "sh", "-c", script).stdout == "file 1\nfile 0\n"
    assert dy("run", "--rm", "linked:2", "sh", "-c", script).stdout == "changed\nfile 0\n"
    # the new layer's blob carries every file, linked or written
    names = layer_names(dy, "linked:2", tmp_path)[-2]
    assert set(files) <= set(names)
    assert dy("system", "check").stdout.startswith("ok: ")
