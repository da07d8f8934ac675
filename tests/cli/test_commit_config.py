"""`commit` keeps what `run` told the container (command, env, workdir), as Docker does."""

from __future__ import annotations

import json

from tests.cli.dockyard_helper import Dockyard


def test_commit_carries_the_containers_configuration(dy: Dockyard) -> None:
    cid = dy(
        "run",
        "-d",
        "-e",
        "STAGE=prod",
        "-w",
        "/tmp",
        "busybox",
        "sh",
        "-c",
        "echo $STAGE $(pwd) > /marker; sleep 60",
    ).stdout.strip()
    dy("exec", cid, "sh", "-c", "while [ ! -s /marker ]; do sleep 0.05; done")
    dy("commit", cid, "snapshot:1")
    config = json.loads(dy("image", "inspect", "snapshot:1").stdout)[0]["Config"]
    assert config["Cmd"] == ["sh", "-c", "echo $STAGE $(pwd) > /marker; sleep 60"]
    assert "STAGE=prod" in config["Env"] and config["WorkingDir"] == "/tmp"
    dy("rm", "-f", cid)
    out = dy("run", "--rm", "snapshot:1", "cat", "/marker").stdout
    assert out == "prod /tmp\n"
    assert dy("run", "--rm", "snapshot:1", "sh", "-c", "echo $STAGE $(pwd)").stdout == "prod /tmp\n"
