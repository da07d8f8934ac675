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
