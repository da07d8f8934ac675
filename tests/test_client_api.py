"""The Python API beyond run/stop/rm: exec_run, volumes, and the running-container verbs."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

import dockyard
from dockyard.client import Container, ExecResult, ExecStream, VolumeError, VolumeNotFound
from dockyard.client_running import _children, _in_child_pid_namespace, _subreaper
from dockyard.engine.containers import EngineError
from tests.test_client import client

__all__ = ["client"]  # the fixture, shared with test_client.py


def _container_children() -> set[int]:
    """Processes of ours that live in a container (adopted exec processes, zombie or not)."""
    return {pid for pid in _children() if _in_child_pid_namespace(pid)}


@pytest.fixture
def web(client: dockyard.Client) -> Iterator[Container]:
    """A running busybox container; afterwards no exec process of it is left to us."""
    before = _container_children()
    container = client.containers.run("busybox", "sleep 600", detach=True, name="web")
    assert isinstance(container, Container)
    yield container
    container.remove(force=True)
    deadline = time.monotonic() + 5
    while _container_children() - before and time.monotonic() < deadline:
        time.sleep(0.02)  # abandoned streams are reaped by a thread once their process dies
    assert _container_children() - before == set()
    assert not _subreaper()


# -------------------------------------------------------------------- exec_run


def test_exec_run_output_and_exit_code(web: Container) -> None:
    result = web.exec_run("sh -c 'echo out; echo err >&2; echo out2; exit 3'")
    assert isinstance(result, ExecResult)
    assert (result.exit_code, result.output) == (3, b"out\nerr\nout2\n")  # in written order
    exit_code, output = result  # a tuple, as docker-py's namedtuple
    assert result == (exit_code, output) == (3, b"out\nerr\nout2\n")
    assert web.exec_run(["echo", "a b"]) == (0, b"a b\n")
    assert web.exec_run("sh -c 'echo hidden >&2'", stderr=False) == (0, b"")
    assert web.exec_run("sh -c 'echo shown >&2; echo no'", stdout=False) == (0, b"shown\n")
    assert web.exec_run("sh -c 'exit 7'", stdout=False, stderr=False) == (7, b"")
    assert repr(web.exec_run("true")) == "ExecResult(exit_code=0, output=b'')"


def test_exec_run_environment_workdir_user_privileged(web: Container) -> None:
    env = web.exec_run("sh -c 'echo $A-$B'", environment={"A": "1", "B": "two"})
    assert env.output == b"1-two\n"
    assert web.exec_run("env", environment=["C=3"]).output.splitlines().count(b"C=3") == 1
    assert web.exec_run("pwd", workdir="/tmp").output == b"/tmp\n"
    assert web.exec_run("id", user="1000:1001").output == b"uid=1000 gid=1001\n"
    assert web.exec_run("id -u", user=0).output == b"0\n"
    capeff = "sh -c 'grep CapEff /proc/self/status'"
    default, every = web.exec_run(capeff).output, web.exec_run(capeff, privileged=True).output
    assert int(every.split()[1], 16) > int(default.split()[1], 16)
    with pytest.raises(EngineError, match="not absolute"):
        web.exec_run("pwd", workdir="tmp")


def test_exec_run_demux(web: Container) -> None:
    script = "sh -c 'echo out; echo err >&2; echo out2'"
    assert web.exec_run(script, demux=True) == (0, (b"out\nout2\n", b"err\n"))
    assert web.exec_run("echo only", demux=True) == (0, (b"only\n", None))
    assert web.exec_run(script, demux=True, stdout=False) == (0, (None, b"err\n"))


def test_exec_run_stream(web: Container) -> None:
    result = web.exec_run(
        "sh -c 'for i in 1 2 3; do echo $i; sleep 0.05; done; exit 2'", stream=True
    )
    assert result.exit_code is None
    stream = result.output
    assert isinstance(stream, ExecStream) and stream.exit_code is None
    assert b"".join(stream) == b"1\n2\n3\n"
    assert stream.exit_code == 2
    pairs = list(web.exec_run("sh -c 'echo o; sleep 0.05; echo e >&2'", stream=True, demux=True)[1])
    assert pairs == [(b"o\n", None), (None, b"e\n")]


def test_exec_run_stream_closed_early(web: Container) -> None:
    stream = web.exec_run("sh -c 'while :; do echo tick; sleep 0.05; done'", stream=True).output
    assert next(stream).startswith(b"tick")
    stream.close()  # the process dies of SIGPIPE on its next write; a thread reaps it
    assert list(stream) == [] and stream.exit_code is None
    # the web fixture checks that nothing of it is left


def test_exec_run_detach(web: Container) -> None:
    assert web.exec_run("sh -c 'sleep 0.2; echo done > /tmp/flag'", detach=True) == (None, b"")
    deadline = time.monotonic() + 5
    while web.exec_run("cat /tmp/flag").exit_code != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert web.exec_run("cat /tmp/flag") == (0, b"done\n")


def test_exec_run_tty(web: Container) -> None:
    result = web.exec_run("sh -c 'tty; echo err >&2'", tty=True)
    assert result.exit_code == 0
    assert result.output == b"/dev/pts/0\r\nerr\r\n"  # a terminal: one stream, CRLF
    assert web.exec_run("sh -c 'test -t 0'", tty=True).exit_code == 0


def test_exec_run_failures(client: dockyard.Client, web: Container) -> None:
    missing = web.exec_run("no-such-command")
    assert missing.exit_code == 127
    assert (
        missing.output.startswith(b"OCI runtime exec failed")
        and b"no-such-command" in missing.output
    )
    failed = web.exec_run("/etc/passwd", demux=True)
    assert failed.exit_code == 126 and failed.output[1] is None
    stream = web.exec_run("no-such-command", stream=True).output
    assert b"no-such-command" in b"".join(stream) and stream.exit_code == 127
    with pytest.raises(EngineError, match=r"socket=True\) is not supported"):
        web.exec_run("true", socket=True)
    stopped = client.containers.create("busybox", "true")
    with pytest.raises(EngineError, match="is not running"):
        stopped.exec_run("true")
    stopped.remove()
    own_stdio = [os.fstat(fd).st_ino for fd in (0, 1, 2)]
    web.exec_run("true")
    assert [os.fstat(fd).st_ino for fd in (0, 1, 2)] == own_stdio


# -------------------------------------------------------------------- volumes


def test_volume_create_get_list_remove(client: dockyard.Client) -> None:
    vol = client.volumes.create("data", labels={"team": "a"}, driver_opts={"type": "tmpfs"})
    assert (vol.id, vol.name) == ("data", "data")
    assert vol.attrs["Driver"] == "local" and vol.attrs["Labels"] == {"team": "a"}
    assert vol.attrs["Options"] == {"type": "tmpfs"} and vol.attrs["Scope"] == "local"
    assert vol.attrs["Mountpoint"].endswith("/volumes/data/_data")
    assert client.volumes.create("data") == vol  # an existing name gives that volume
    anonymous = client.volumes.create()
    assert len(anonymous.name) == 64
    assert client.volumes.get("data") == vol
    assert sorted(v.name for v in client.volumes.list()) == sorted(["data", anonymous.name])
    assert [v.name for v in client.volumes.list(filters={"label": "team=a"})] == ["data"]
    assert [v.name for v in client.volumes.list(filters={"name": ["dat"]})] == ["data"]
    vol.reload()
    vol.remove()
    with pytest.raises(VolumeNotFound, match="no such volume"):
        client.volumes.get("data")
    with pytest.raises(VolumeNotFound):
        vol.reload()
    with pytest.raises(VolumeNotFound):
        vol.remove()
    vol.remove(force=True)  # force: a missing volume is no error
    with pytest.raises(VolumeError, match="plugin"):
        client.volumes.create("xx", driver="nfs")
    with pytest.raises(VolumeError, match="invalid option"):
        client.volumes.create("xx", driver_opts={"bogus": "1"})
    assert isinstance(VolumeNotFound("x"), EngineError)
    anonymous.remove()
    assert client.volumes.list() == []


def test_volume_prune(client: dockyard.Client) -> None:
    named = client.volumes.create("keep")
    with open(os.path.join(named.attrs["Mountpoint"], "f"), "wb") as f:
        f.write(b"x" * 1000)
    anonymous = client.volumes.create(labels={"com.docker.volume.anonymous": ""})
    with open(os.path.join(anonymous.attrs["Mountpoint"], "f"), "wb") as f:
        f.write(b"y" * 300)
    assert client.volumes.prune() == {"VolumesDeleted": [anonymous.name], "SpaceReclaimed": 300}
    assert client.volumes.prune() == {"VolumesDeleted": [], "SpaceReclaimed": 0}
    with pytest.raises(VolumeError, match="not supported"):
        client.volumes.prune(filters={"label": "a"})
    assert client.volumes.prune(filters={"all": True}) == {
        "VolumesDeleted": ["keep"],
        "SpaceReclaimed": 1000,
    }
    assert client.volumes.list() == []


def test_volumes_in_containers(client: dockyard.Client) -> None:
    client.volumes.create("shared")
    volumes = {"shared": {"bind": "/data", "mode": "rw"}}
    out = client.containers.run(
        "busybox", "sh -c 'echo hello > /data/f; cat /data/f'", volumes=volumes, remove=True
    )
    assert out == b"hello\n"
    reader = client.containers.run(
        "busybox",
        "sleep 600",
        detach=True,
        volumes=["shared:/in:ro", "/anon"],
        tmpfs={"/t": "size=1m"},
    )
    assert isinstance(reader, Container)
    assert reader.exec_run("cat /in/f") == (0, b"hello\n")
    assert reader.exec_run("touch /in/g").exit_code != 0  # read-only
    assert reader.exec_run("sh -c 'grep \" /t \" /proc/mounts'").output.startswith(b"tmpfs /t")
    with pytest.raises(VolumeError, match="in use"):
        client.volumes.get("shared").remove(force=True)
    assert [v.name for v in client.volumes.list(filters={"dangling": False})] != []
    reader.remove(force=True, v=True)  # -v: its anonymous volume goes too
    assert [v.name for v in client.volumes.list()] == ["shared"]
    ro = client.containers.create("busybox", "true", volumes={"shared": {"bind": "/d", "ro": True}})
    ro.remove()
    with pytest.raises(EngineError, match="both"):
        client.containers.create("busybox", volumes={"s": {"bind": "/d", "ro": True, "mode": "rw"}})
    client.volumes.get("shared").remove()


# -------------------------------------------------------------------- other container verbs


def test_container_attrs_top_pause_rename(client: dockyard.Client, web: Container) -> None:
    attrs = web.attrs
    assert attrs["Id"] == web.id and attrs["Name"] == "/web"
    assert attrs["State"]["Running"] is True and attrs["Config"]["Image"] == "busybox"
    top = web.top()
    assert "PID" in top["Titles"] and any("sleep 600" in row[-1] for row in top["Processes"])
    assert "PID" in web.top(ps_args="-o pid,comm")["Titles"]
    web.pause()
    assert web.status == "paused" and web.attrs["State"]["Paused"] is True
    with pytest.raises(EngineError, match="paused"):
        web.exec_run("true")
    web.unpause()
    assert web.status == "running"
    web.rename("web2")
    assert web.name == "web2" and client.containers.get("web2") == web
    with pytest.raises(EngineError, match="same name"):
        web.rename("web2")


def test_container_stats(web: Container) -> None:
    doc = web.stats(stream=False)
    assert doc["id"] == web.id and doc["name"] == "/web"
    assert doc["pids_stats"]["current"] >= 1 and doc["memory_stats"]["usage"] > 0
    assert doc["cpu_stats"]["online_cpus"] == os.cpu_count()
    assert (
        doc["precpu_stats"]["cpu_usage"]["total_usage"]
        <= doc["cpu_stats"]["cpu_usage"]["total_usage"]
    )
    assert "system_cpu_usage" not in web.stats(stream=False, one_shot=True)["precpu_stats"]
    stream = web.stats(decode=True)
    first = next(stream)
    assert first["id"] == web.id
    raw = next(web.stats())
    assert isinstance(raw, bytes) and raw.startswith(b"{")
    web.stop(timeout=0)
    assert web.stats(stream=False)["read"] == "0001-01-01T00:00:00Z"
