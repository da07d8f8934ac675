"""Health checks (starting → healthy → unhealthy), restart, update, ps/images filters and
formats, logs --since/--until."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cli.dockyard_helper import Dockyard


def _until(check: Callable[[], object], timeout: float = 15) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _health(dy: Dockyard, cid: str) -> dict[str, Any]:
    return json.loads(dy("inspect", "-f", "{{json .State.Health}}", cid).stdout)


def test_health_transitions(dy: Dockyard) -> None:
    cid = dy(
        "run",
        "-d",
        "--health-cmd",
        "cat /tmp/ok",
        "--health-interval",
        "0.2s",
        "--health-timeout",
        "2s",
        "--health-retries",
        "2",
        "busybox",
        "sh",
        "-c",
        "sleep 1; echo fine > /tmp/ok; sleep 100",
    ).stdout.strip()
    assert _health(dy, cid)["Status"] == "starting"
    assert "(health: starting)" in dy("ps", "--format", "{{.Status}}").stdout
    _until(lambda: _health(dy, cid)["Status"] == "healthy")
    health = _health(dy, cid)
    assert health["FailingStreak"] == 0
    last = health["Log"][-1]
    assert last["ExitCode"] == 0 and last["Output"] == "fine\n"
    assert set(last) == {"Start", "End", "ExitCode", "Output"}
    assert "(healthy)" in dy("ps").stdout
    dy("exec", cid, "rm", "/tmp/ok")
    _until(lambda: _health(dy, cid)["Status"] == "unhealthy")
    health = _health(dy, cid)
    assert health["FailingStreak"] >= 2
    assert len(health["Log"]) <= 5
    assert "(unhealthy)" in dy("ps").stdout
    config = json.loads(dy("inspect", "-f", "{{json .Config.Healthcheck}}", cid).stdout)
    assert config["Test"] == ["CMD-SHELL", "cat /tmp/ok"] and config["Interval"] == 200_000_000
    dy("rm", "-f", cid)


def test_health_timeout_and_no_healthcheck(dy: Dockyard) -> None:
    cid = dy(
        "run",
        "-d",
        "--health-cmd",
        "sleep 5",
        "--health-interval",
        "0.1s",
        "--health-timeout",
        "0.3s",
        "--health-retries",
        "1",
        "busybox",
        "sleep",
        "100",
    ).stdout.strip()
    _until(lambda: _health(dy, cid)["Status"] == "unhealthy")
    entry = _health(dy, cid)["Log"][0]
    assert entry["ExitCode"] == -1 and "exceeded timeout" in entry["Output"]
    dy("rm", "-f", cid)
    cid = dy("create", "--no-healthcheck", "busybox", "true").stdout.strip()
    assert dy("inspect", "-f", "{{json .State.Health}}", cid, check=False).returncode != 0


def test_restart_and_update(dy: Dockyard) -> None:
    cid = dy("run", "-d", "-m", "64m", "busybox", "sleep", "100").stdout.strip()
    limit = f"/sys/fs/cgroup/memory/dockyard/{cid}/memory.limit_in_bytes"
    pids = f"/sys/fs/cgroup/pids/dockyard/{cid}/pids.max"
    assert Path(limit).read_text().strip() == str(64 << 20)
    pid = dy("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip()
    dy("update", "--memory", "96m", "--pids-limit", "40", "--restart", "on-failure:2", cid)
    assert Path(limit).read_text().strip() == str(96 << 20)
    assert Path(pids).read_text().strip() == "40"
    assert dy("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip() == pid  # still running
    dy("restart", "-t", "0", cid)
    assert dy("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip() != pid
    assert dy("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "running"
    assert Path(limit).read_text().strip() == str(96 << 20)  # kept across the restart
    assert dy("inspect", "-f", "{{json .HostConfig.Memory}}", cid).stdout.strip() == str(96 << 20)
    policy = dy("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", cid).stdout.strip()
    assert policy == "on-failure"
    bad = dy("update", "--memory", "lots", cid, check=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert dy("update", cid, check=False).returncode == 1
    dy("rm", "-f", cid)


def test_ps_filters_and_formats(dy: Dockyard) -> None:
    first = dy(
        "run", "--name", "one", "-l", "tier=db", "busybox", "sh", "-c", "exit 3", check=False
    )
    assert first.returncode == 3
    one = dy("ps", "-aq", "--no-trunc").stdout.strip()
    two = dy(
        "run", "-d", "--name", "two", "-l", "tier=web", "busybox", "sleep", "100"
    ).stdout.strip()
    three = dy("create", "--name", "three", "busybox", "true").stdout.strip()

    def names(*args: str) -> list[str]:
        return dy("ps", *args, "--format", "{{.Names}}").stdout.split()

    assert names() == ["two"]
    assert names("-a") == ["three", "two", "one"]
    assert names("-n", "2") == ["three", "two"]
    assert names("-l") == ["three"]
    assert names("-a", "--filter", "status=exited") == ["one"]
    assert names("-a", "--filter", "status=created") == ["three"]
    assert names("-a", "--filter", "exited=3") == ["one"]
    assert names("-a", "--filter", "label=tier") == ["two", "one"]
    assert names("-a", "--filter", "label=tier=web") == ["two"]
    assert names("-a", "--filter", "name=^t") == ["three", "two"]
    assert names("-a", "--filter", f"id={two[:8]}") == ["two"]
    assert names("-a", "--filter", "ancestor=busybox") == ["three", "two", "one"]
    assert names("-a", "--filter", "before=two") == ["one"]
    assert names("-a", "--filter", "since=two") == ["three"]
    assert names("-a", "--filter", "ancestor=nothere") == []
    table = dy("ps", "--format", "table {{.ID}}\t{{.Names}}\t{{.State}}").stdout.splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "NAMES", "STATE"]
    assert table[1].split() == [two[:12], "two", "running"]
    doc = json.loads(dy("ps", "-a", "--filter", "name=one", "--format", "{{json .}}").stdout)
    assert doc["ID"] == one[:12] and doc["State"] == "exited" and doc["Labels"] == "tier=db"
    assert doc["Status"].startswith("Exited (3)") and doc["Networks"] == "bridge"
    assert set(doc) >= {"Command", "CreatedAt", "RunningFor", "Ports", "Size", "Mounts", "Image"}
    dy("exec", two, "sh", "-c", "head -c 300000 /dev/zero > /big")
    sized = dy("ps", "-s", "--format", "{{.Size}}").stdout.strip()
    assert sized.startswith("30") and "virtual" in sized, sized
    assert "SIZE" in dy("ps", "-s").stdout.splitlines()[0]
    bad = dy("ps", "--filter", "colour=red", check=False)
    assert bad.returncode == 1 and "invalid filter" in bad.stderr
    dy("rm", "-f", one, two, three)


def test_images_filters_and_formats(dy: Dockyard) -> None:
    dy("tag", "busybox", "example/tool:1.0")
    out = dy("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert sorted(out) == ["busybox:latest", "example/tool:1.0"]
    assert dy(
        "images", "--filter", "reference=example/*", "--format", "{{.Tag}}"
    ).stdout.split() == ["1.0"]
    assert dy("images", "--filter", "dangling=true", "-q").stdout == ""
    assert dy("images", "-a", "--filter", "dangling=false", "-q").stdout.split()
    assert dy("images", "--filter", "label=nope", "-q").stdout == ""
    doc = json.loads(dy("images", "--format", "{{json .}}", "busybox").stdout)
    assert set(doc) >= {"ID", "Repository", "Tag", "Digest", "CreatedSince", "CreatedAt", "Size"}
    assert doc["Digest"].startswith("sha256:") and doc["CreatedAt"].endswith("+0000 UTC")
    table = dy("images", "--format", "table {{.Repository}}\t{{.Size}}").stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "SIZE"]
    assert dy("images", "--filter", "before=busybox", "-q").stdout == ""


def test_logs_since_until(dy: Dockyard) -> None:
    cid = dy(
        "run", "-d", "busybox", "sh", "-c", "echo early; sleep 1.5; echo late; sleep 100"
    ).stdout.strip()
    _until(lambda: "late" in dy("logs", cid).stdout)
    assert dy("logs", "--since", "1s", cid).stdout.split() == ["late"]
    now = time.time()
    assert dy("logs", "--until", f"{now - 1.0:.3f}", cid).stdout.split() == ["early"]
    assert dy("logs", "--since", "2000-01-01T00:00:00Z", cid).stdout.split() == ["early", "late"]
    assert dy("logs", "--until", "2000-01-01", cid).stdout == ""
    bad = dy("logs", "--since", "yesterday", cid, check=False)
    assert bad.returncode == 1 and "--since" in bad.stderr
    dy("rm", "-f", cid)
