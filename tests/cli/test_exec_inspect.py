"""exec, inspect, top, pause/unpause, stats, rename, container prune: end to end as root."""

from __future__ import annotations

import json
import re
import time

from tests.cli.dockyard_helper import Dockyard


def _running(d: Dockyard, *args: str, name: str = "box") -> str:
    return d("run", "-d", "--name", name, *args, "busybox", "sleep", "300").stdout.strip()


def test_exec_joins_the_container(dy: Dockyard) -> None:
    cid = _running(dy, "-h", "inner", "-e", "FROM_RUN=1")
    out = dy("exec", "box", "sh", "-c", 'echo "$$ $(hostname) $FROM_RUN"').stdout.split()
    assert out[0] != "1" and out[1:] == ["inner", "1"]
    # pid 1 of the exec's pid namespace is the container's command
    assert dy("exec", "box", "cat", "/proc/1/cmdline").stdout.split("\0")[:2] == ["sleep", "300"]
    assert dy("exec", cid[:12], "true").returncode == 0


def test_exec_options_and_exit_code(dy: Dockyard) -> None:
    _running(dy)
    out = dy(
        "exec", "-e", "A=b", "-u", "65534:65534", "-w", "/tmp", "box",
        "sh", "-c", 'echo "$A $(id -u):$(id -g) $(pwd)"; echo err >&2',
    )  # fmt: skip
    assert out.stdout == "b 65534:65534 /tmp\n" and out.stderr == "err\n"
    assert dy("exec", "box", "sh", "-c", "exit 7", check=False).returncode == 7
    caps = dy("exec", "box", "grep", "CapEff", "/proc/self/status").stdout.split()[1]
    privileged = dy("exec", "--privileged", "box", "grep", "CapEff", "/proc/self/status")
    assert int(privileged.stdout.split()[1], 16) > int(caps, 16)


def test_exec_errors(dy: Dockyard) -> None:
    cid = dy("create", "--name", "idle", "busybox", "sleep", "300").stdout.strip()
    out = dy("exec", "idle", "true", check=False)
    assert out.returncode == 1
    assert out.stderr == f"Error response from daemon: container {cid} is not running\n"
    _running(dy)
    out = dy("exec", "box", "nosuch", check=False)
    assert out.returncode == 127
    assert 'exec: "nosuch": executable file not found in $PATH' in out.stderr
    assert out.stderr.startswith("Error response from daemon: OCI runtime exec failed")
    out = dy("exec", "box", "/etc/passwd", check=False)
    assert out.returncode == 126, out.stderr
    assert 'exec: "/etc/passwd": permission denied' in out.stderr
    out = dy("exec", "-it", "box", "sh", check=False)
    assert out.returncode != 0 and "the input device is not a TTY" in out.stderr
    assert len(out.stderr.splitlines()) == 1
    out = dy("exec", "nosuch", "true", check=False)
    assert out.returncode == 1 and "No such container: nosuch" in out.stderr


def test_exec_detached_shows_in_top(dy: Dockyard) -> None:
    _running(dy)
    assert dy("exec", "-d", "box", "sleep", "123").stdout == ""
    deadline = time.monotonic() + 5
    while "sleep 123" not in dy("top", "box").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    top = dy("top", "box").stdout.splitlines()
    assert top[0].split()[:3] == ["UID", "PID", "PPID"]
    commands = [line.split(None, 7)[-1] for line in top[1:]]
    assert sorted(commands) == ["sleep 123", "sleep 300"]
    custom = dy("top", "box", "-o", "pid,comm").stdout.splitlines()
    assert custom[0].split() == ["PID", "COMMAND"] and len(custom) == 3
    out = dy("top", "nosuch", check=False)
    assert out.returncode == 1 and "No such container: nosuch" in out.stderr


def test_pause_unpause(dy: Dockyard) -> None:
    cid = _running(dy)
    assert dy("pause", "box").stdout == "box\n"
    ps = dy("ps").stdout.splitlines()[1]
    assert "Up " in ps and "(Paused)" in ps
    assert dy("inspect", "-f", "{{.State.Status}} {{.State.Paused}}", "box").stdout == (
        "paused true\n"
    )
    out = dy("exec", "box", "true", check=False)
    assert out.returncode == 1
    assert f"Container {cid} is paused, unpause the container before exec" in out.stderr
    out = dy("pause", "box", check=False)
    assert out.returncode == 1 and "is already paused" in out.stderr
    dy("unpause", "box")
    assert "(Paused)" not in dy("ps").stdout
    assert dy("exec", "box", "echo", "ok").stdout == "ok\n"
    out = dy("unpause", "box", check=False)
    assert out.returncode == 1 and "is not paused" in out.stderr
    # a paused container still stops (and rm -f works on it)
    dy("pause", "box")
    started = time.monotonic()
    dy("stop", "-t", "1", "box")  # sleep is pid 1: SIGTERM is ignored, SIGKILL after 1 s
    assert time.monotonic() - started < 4
    assert "Exited (137)" in dy("ps", "-a").stdout
    dy("start", "box")
    dy("pause", "box")
    dy("rm", "-f", "box")


def test_stats(dy: Dockyard) -> None:
    cid = _running(dy, "-m", "32m")
    dy("exec", "-d", "box", "sh", "-c", "while :; do :; done")
    lines = dy("stats", "--no-stream").stdout.splitlines()
    head = "CONTAINER ID|NAME|CPU %|MEM USAGE / LIMIT|MEM %|NET I/O|BLOCK I/O|PIDS"
    assert re.split(r"\s{2,}", lines[0]) == head.split("|")
    assert len(lines) == 2 and lines[1].startswith(cid[:12])
    assert "/ 32MiB" in lines[1] and "0B / 0B" in lines[1]
    cells = dy("stats", "--no-stream", "--format", "{{json .}}", "box").stdout
    doc = json.loads(cells)
    assert doc["Name"] == "box" and doc["MemUsage"].endswith(" / 32MiB")
    assert doc["PIDs"] == "2" and doc["NetIO"] == "0B / 0B"
    assert float(doc["CPUPerc"].rstrip("%")) > 20  # the busy loop
    assert dy("stats", "--no-stream", "--format", "{{.Name}}: {{.PIDs}}").stdout == "box: 2\n"


def test_inspect_container(dy: Dockyard) -> None:
    cid = _running(dy, "-l", "tier=web", "--restart", "on-failure:3", "-m", "64m", "--cpus", "0.5")
    [doc] = json.loads(dy("inspect", "box").stdout)
    assert doc["Id"] == cid and doc["Name"] == "/box"
    assert doc["Path"] == "sleep" and doc["Args"] == ["300"]
    state = doc["State"]
    assert state["Status"] == "running" and state["Running"] is True and state["Pid"] > 0
    assert state["StartedAt"].endswith("Z") and state["FinishedAt"] == "0001-01-01T00:00:00Z"
    assert doc["Config"]["Labels"] == {"tier": "web"} and doc["Config"]["Cmd"] == ["sleep", "300"]
    assert doc["Config"]["Image"] == "busybox" and doc["Image"].startswith("sha256:")
    host = doc["HostConfig"]
    assert host["Memory"] == 64 << 20 and host["NanoCpus"] == 500_000_000
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["Privileged"] is False and host["ReadonlyRootfs"] is False
    assert doc["Mounts"] == [] and isinstance(doc["NetworkSettings"], dict)
    assert dy("container", "inspect", "-f", "{{.Id}}", "box").stdout == cid + "\n"
    templates = {
        "{{.State.Status}}": "running",
        "{{.Name}}": "/box",
        '{{index .Config.Labels "tier"}}': "web",
        "{{json .Config.Labels}}": '{"tier":"web"}',
        "{{.HostConfig.Memory}}": "67108864",  # an int64 field, as docker prints it
        "{{range .Config.Cmd}}[{{.}}]{{end}}": "[sleep][300]",
        '{{printf "%s:%d" .Name .State.ExitCode}}': "/box:0",
    }
    for template, expected in templates.items():
        assert dy("inspect", "-f", template, "box").stdout == expected + "\n", template
    out = dy("inspect", "-f", "{{.Nope}}", "box", check=False)
    assert out.returncode == 1
    assert out.stderr == (
        'template: :1:2: executing "" at <.Nope>: map has no entry for key "Nope"\n'
    )
    dy("stop", "-t", "0", "box")
    [doc] = json.loads(dy("inspect", "box").stdout)
    assert doc["State"]["Status"] == "exited" and doc["State"]["ExitCode"] == 137
    assert doc["State"]["FinishedAt"] != "0001-01-01T00:00:00Z" and doc["State"]["Pid"] == 0


def test_inspect_images_and_errors(dy: Dockyard) -> None:
    [doc] = json.loads(dy("inspect", "busybox").stdout)
    assert doc["RepoTags"] == ["busybox:latest"] and doc["Id"].startswith("sha256:")
    assert doc["RootFS"]["Type"] == "layers" and len(doc["RootFS"]["Layers"]) == 1
    assert doc["Os"] == "linux" and doc["Size"] > 0
    assert doc["RepoDigests"][0].startswith("busybox@sha256:")
    assert dy("image", "inspect", "-f", "{{.RepoTags}}", "busybox").stdout == "[busybox:latest]\n"
    out = dy("inspect", "--type", "image", "nosuch", check=False)
    assert out.returncode == 1 and out.stderr == "Error: No such image: nosuch\n"
    assert out.stdout == "[]\n"
    out = dy("inspect", "nosuch", check=False)
    assert out.returncode == 1 and out.stderr == "Error: No such object: nosuch\n"
    out = dy("container", "inspect", "busybox", check=False)
    assert out.returncode == 1 and "No such container: busybox" in out.stderr
    both = dy("inspect", "-f", "{{.Id}}", "busybox", "nosuch", check=False)
    assert both.returncode == 1 and both.stdout.startswith("sha256:")


def test_rename(dy: Dockyard) -> None:
    cid = dy("create", "--name", "old", "busybox", "true").stdout.strip()
    other = dy("create", "--name", "other", "busybox", "true").stdout.strip()
    assert dy("rename", "old", "new").stdout == ""
    assert dy("inspect", "-f", "{{.Name}} {{.Id}}", "new").stdout == f"/new {cid}\n"
    out = dy("rename", "new", "other", check=False)
    assert out.returncode == 1
    assert out.stderr == (
        'Error response from daemon: Conflict. The container name "/other" is already in use '
        f'by container "{other}". You have to remove (or rename) that container to be able to '
        "reuse that name.\n"
    )
    out = dy("rename", "new", "new", check=False)
    assert out.returncode == 1 and "same name as its current name" in out.stderr
    out = dy("rename", "new", "bad/name", check=False)
    assert out.returncode == 1 and "Invalid container name" in out.stderr
    out = dy("rename", "nosuch", "x", check=False)
    assert out.returncode == 1 and "No such container: nosuch" in out.stderr
    # the old name is free again
    dy("create", "--name", "old", "busybox", "true")


def test_container_prune(dy: Dockyard) -> None:
    stopped = dy("run", "--name", "done", "busybox", "sh", "-c", "echo x > /big").stdout
    assert stopped == ""
    created = dy("create", "busybox", "true").stdout.strip()
    running = _running(dy)
    done = dy("inspect", "-f", "{{.Id}}", "done").stdout.strip()
    out = dy("container", "prune", "-f").stdout.splitlines()
    assert out[0] == "Deleted Containers:"
    assert sorted(out[1:3]) == sorted([done, created])
    assert out[-1].startswith("Total reclaimed space: ")
    assert out[-1] != "Total reclaimed space: 0B"  # /big was in done's layer
    assert dy("ps", "-aq", "--no-trunc").stdout.split() == [running]
    assert dy("container", "prune", "-f").stdout == "Total reclaimed space: 0B\n"
    assert dy("container", "ls", "-q", "--no-trunc").stdout.split() == [running]
