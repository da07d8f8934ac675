"""COPY against what the parent image already has: existing directories keep their
metadata, symlinks on the way are followed, a directory replaces a symlink (Docker's
untar), files and directories replace each other.
(COPY writes into the new snapshot's directory; these are the cases where that must
match a copy through the merged view.)"""

from __future__ import annotations

from pathlib import Path

from tests.build.test_build_cli import _ctx
from tests.cli.dockyard_helper import Dockyard


def test_copy_against_the_parent_tree(dy: Dockyard, tmp_path: Path) -> None:
    ctx = _ctx(
        tmp_path,
        "FROM busybox\n"
        "RUN mkdir -p /real/sub /opt/lib-real /data && ln -s /real /link"
        " && ln -s /opt/lib-real /opt/lib && chmod 1777 /data && echo old > /was-file"
        " && mkdir /was-dir && echo x > /was-dir/inside && chown 5:6 /real\n"
        "COPY f /tmp/\n"
        "COPY f /data/\n"
        "COPY f /link/\n"
        "COPY f /real\n"
        "COPY tree /opt/\n"
        "COPY tree/lib/g /was-file\n"
        "COPY f /was-dir\n"
        "COPY dir-for-file /\n",
        {"f": "F\n", "tree/lib/g": "G\n", "dir-for-file/was-file/x": "X\n"},
    )
    dy("build", "-t", "paths", str(ctx))
    script = (
        "stat -c '%a' /tmp /data; stat -c '%u:%g' /real; cat /tmp/f /data/f /real/f;"
        " test -L /link && echo link-kept; cat /opt/lib/g; test -d /opt/lib && echo lib-replaced;"
        " cat /was-file/x; cat /was-dir/f /was-dir/inside"
    )
    out = dy("run", "--rm", "paths", "sh", "-c", script).stdout
    assert out.split("\n") == [
        "1777",
        "1777",
        "5:6",
        "F",
        "F",
        "F",
        "link-kept",
        "G",
        "lib-replaced",
        "X",
        "F",
        "x",
        "",
    ]
    dy("system", "check")


def test_symlinked_sources_are_followed_inside_their_scope(dy: Dockyard, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    ctx = _ctx(
        tmp_path,
        "FROM busybox\n"
        "COPY link.txt /file-link\n"
        "COPY linkdir /dir-link/\n"
        "COPY linkdir/one /through-link\n"
        "COPY *.txt /globbed/\n"
        "COPY tree /tree/\n"
        "RUN --mount=type=bind,source=linkdir,target=/m cat /m/one > /from-mount\n"
        'CMD ["sh"]\n',
        {"a.txt": "A\n", "d1/one": "1\n", "tree/x": "X\n"},
    )
    (ctx / "link.txt").symlink_to("a.txt")
    (ctx / "linkdir").symlink_to("d1")
    (ctx / "tree" / "kept").symlink_to("x")
    dy("build", "-t", "symlinks", str(ctx))
    script = (
        "cat /file-link /dir-link/one /through-link /globbed/link.txt /from-mount;"
        " test -L /file-link || echo file-followed; test -L /tree/kept && echo nested-kept"
    )
    out = dy("run", "--rm", "symlinks", "sh", "-c", script).stdout
    assert out == "A\n1\n1\nA\n1\nfile-followed\nnested-kept\n"
    # A link out of the context resolves inside it (as Docker's FollowSymlinkInScope):
    # the host's file is never read.
    (ctx / "escape").symlink_to(outside)
    (ctx / "escape-file").symlink_to(outside / "secret")
    (ctx / "loop").symlink_to("loop")
    for source in ("escape/secret", "escape-file", "loop"):
        (ctx / "Dockerfile").write_text(f"FROM busybox\nCOPY {source} /stolen\n")
        failed = dy("build", str(ctx), check=False)
        assert failed.returncode == 1
        assert f"file not found in build context or excluded: {source}" in failed.stderr


def test_from_image_sources_resolve_links_in_the_image(dy: Dockyard, tmp_path: Path) -> None:
    host = tmp_path / "hostdir"
    host.mkdir()
    (host / "f").write_text("from the host\n")
    (host / "made").mkdir()  # the image lacks it: WORKDIR must make it there
    ctx = _ctx(
        tmp_path,
        "FROM busybox AS s\n"
        f"RUN mkdir -p {host} /d && echo in-image > {host}/f && ln -s {host} /abs"
        f" && ln -s {host}/f /abs-file && touch /d/.hidden /d/vis && ln -s /d /dl\n"
        "WORKDIR /abs/made\n"
        "RUN pwd > here\n"
        "FROM busybox\n"
        "COPY --from=s /abs/made/here /workdir-here\n"
        "COPY --from=s /abs/f /via-dir\n"
        "COPY --from=s /abs-file /via-file\n"
        "COPY --from=s /dl/* /globbed/\n"
        "COPY --from=s /abs/* /globbed-through/\n",
    )
    dy("build", "-t", "image-links", str(ctx))
    script = "cat /via-dir /via-file /globbed-through/f /workdir-here; ls -A /globbed"
    out = dy("run", "--rm", "image-links", "sh", "-c", script).stdout
    assert out == f"in-image\nin-image\nin-image\n{host}/made\n.hidden\nvis\n"
    assert not (host / "made" / "here").exists()
