"""`dockyard system df`, `system prune` and `info`, end to end as root on busybox."""

from __future__ import annotations

import json
import os
import platform

from tests.cli.dockyard_helper import Dockyard


def _df(dy: Dockyard) -> dict[str, dict[str, str]]:
    rows = dy("system", "df", "--format", "{{json .}}").stdout.splitlines()
    return {doc["Type"]: doc for doc in map(json.loads, rows)}


def test_system_df_counts_what_exists(dy: Dockyard) -> None:
    lines = dy("system", "df").stdout.splitlines()
    assert lines[0] == "TYPE            TOTAL     ACTIVE    SIZE      RECLAIMABLE"
    assert [line.split()[0] for line in lines[1:]] == ["Images", "Containers", "Local", "Build"]
    df = _df(dy)
    assert df["Images"]["TotalCount"] == "1" and df["Images"]["Active"] == "0"
    assert df["Images"]["Size"] == df["Images"]["Reclaimable"].split()[0]
    assert df["Images"]["Reclaimable"].endswith("(100%)")
    assert df["Containers"]["TotalCount"] == "0" and df["Containers"]["Size"] == "0B"
    assert df["Build Cache"] == {
        "Type": "Build Cache",
        "TotalCount": "0",
        "Active": "0",
        "Size": "0B",
        "Reclaimable": "0B",
    }
    dy("run", "-d", "--name", "up", "-v", "/data", "busybox", "sleep", "300")
    dy("run", "--name", "done", "busybox", "sh", "-c", "head -c 5000 /dev/zero > /big")
    dy("volume", "create", "spare")
    df = _df(dy)
    assert df["Images"]["Active"] == "1" and df["Images"]["Reclaimable"] == "0B (0%)"
    assert (df["Containers"]["TotalCount"], df["Containers"]["Active"]) == ("2", "1")
    assert df["Containers"]["Size"] == "5kB"
    assert df["Containers"]["Reclaimable"] == "5kB (100%)"
    assert (df["Local Volumes"]["TotalCount"], df["Local Volumes"]["Active"]) == ("2", "1")
    verbose = dy("system", "df", "-v").stdout
    assert "Images space usage:" in verbose and "Containers space usage:" in verbose
    assert "Local Volumes space usage:" in verbose and "Build cache usage: 0B" in verbose
    assert " done\n" in verbose and "spare " in verbose


def test_system_prune(dy: Dockyard) -> None:
    dy("run", "-d", "--name", "up", "busybox", "sleep", "300")
    dy("run", "--name", "stopped", "-v", "/anon", "busybox", "true")
    stopped_id = dy("inspect", "-f", "{{.Id}}", "stopped").stdout.strip()
    anon = dy("volume", "ls", "-q").stdout.split()
    assert len(anon) == 1
    dy("rm", "stopped")  # without -v: its anonymous volume stays, unused
    dy("run", "--name", "stopped2", "busybox", "true")
    stopped2 = dy("inspect", "-f", "{{.Id}}", "stopped2").stdout.strip()
    dy("volume", "create", "named")
    dy("commit", "up")  # an image with no tag: dangling
    assert len(dy("images", "-aq").stdout.split()) == 2
    asked = dy("system", "prune", check=False, timeout=30)  # no -f: asks, stdin empty → no
    assert "WARNING! This will remove:\n  - all stopped containers\n" in asked.stdout
    assert len(dy("ps", "-aq").stdout.split()) == 2
    out = dy("system", "prune", "-f", "--volumes").stdout
    assert out.startswith(f"Deleted Containers:\n{stopped2}\n\nDeleted Volumes:\n{anon[0]}\n\n")
    assert "Deleted Images:\ndeleted: sha256:" in out
    assert out.splitlines()[-1].startswith("Total reclaimed space: ")
    assert stopped_id not in out
    assert dy("ps", "-aq").stdout.split() == [dy("inspect", "-f", "{{.Id}}", "up").stdout[:12]]
    assert dy("volume", "ls", "-q").stdout.split() == ["named"]  # named volumes stay
    assert len(dy("images", "-aq").stdout.split()) == 1  # busybox: in use
    dy("rm", "-f", "up")
    out = dy("system", "prune", "-a", "-f").stdout
    assert "untagged: busybox:latest" in out
    assert dy("images", "-aq").stdout == ""
    df = _df(dy)
    assert df["Images"]["TotalCount"] == "0" and df["Containers"]["TotalCount"] == "0"
    assert not list((dy.root / "tmp").iterdir())


def test_info(dy: Dockyard) -> None:
    dy("run", "-d", "--name", "up", "busybox", "sleep", "300")
    dy("create", "--name", "idle", "busybox", "true")
    text = dy("info").stdout
    for line in (
        "Server:",
        " Containers: 2",
        "  Running: 1",
        "  Paused: 0",
        "  Stopped: 1",
        " Images: 1",
        " Storage Driver: overlay",
        " Cgroup Driver: cgroupfs",
        " Runtimes: dockyard-runtime",
        f" Kernel Version: {platform.release()}",
        f" Architecture: {platform.machine()}",
        f" CPUs: {os.cpu_count()}",
        f" Docker Root Dir: {dy.root}",
    ):
        assert line + "\n" in text, line
    version = "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1"
    assert f" Cgroup Version: {version}\n" in text
    assert " Operating System: " in text and " Total Memory: " in text
    doc = json.loads(dy("info", "--format", "{{json .}}").stdout)
    assert (doc["Containers"], doc["ContainersRunning"], doc["ContainersStopped"]) == (2, 1, 1)
    assert doc["Driver"] == "overlay" and doc["CgroupVersion"] == version
    assert doc["DockerRootDir"] == str(dy.root) and doc["MemTotal"] > 0
    assert "dockyard-runtime" in doc["Runtimes"]
    assert dy("info", "-f", "{{.Images}} {{.OSType}}").stdout == "1 linux\n"
