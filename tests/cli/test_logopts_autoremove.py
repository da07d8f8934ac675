"""`--log-driver`/`--log-opt`, AutoRemove (`run -d --rm`), the default environment,
integers in templates and `run -a`, end to end as root on busybox."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.cli.gotemplate import render
from tests.cli.dockyard_helper import Dockyard

LINES = "i=0; while [ $i -lt 200 ]; do echo line$i; i=$((i+1)); done"


def _until(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _log_files(dy: Dockyard, cid: str) -> dict[str, int]:
    directory = dy.root / "containers" / cid
    return {p.name: p.stat().st_size for p in directory.glob("container-json.log*")}


def _removed(dy: Dockyard) -> bool:
    return dy("ps", "-aq").stdout == "" and not list((dy.root / "containers").glob("*"))


def _remover_running(cid: str) -> bool:
    """Whether a container's remover (engine/autoremove.py) is still at work."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"autoremove" in cmdline and cid.encode() in cmdline:
            return True
    return False


# ------------------------------------------------------------------ log options


def test_log_opts_rotate_and_logs_reads_the_files_in_order(dy: Dockyard) -> None:
    out = dy(
        "run", "--name", "rot", "--log-opt", "max-size=1k", "--log-opt", "max-file=3",
        "busybox", "sh", "-c", LINES,
    )  # fmt: skip
    shown = [int(line.removeprefix("line")) for line in out.stdout.splitlines()]
    assert shown == sorted(set(shown)) and shown[-1] == 199  # in order, to the end
    cid = dy("inspect", "-f", "{{.Id}}", "rot").stdout.strip()
    files = _log_files(dy, cid)
    # Docker's names: the live file, .1 (newer), .2 (older); the oldest fell off.
    assert set(files) == {"container-json.log", "container-json.log.1", "container-json.log.2"}
    assert all(size <= 1000 for size in files.values()), files  # max-size is decimal: 1k = 1000
    logged = dy("logs", "rot").stdout.splitlines()
    assert 10 < len(logged) < 200
    first = int(logged[0].removeprefix("line"))
    assert logged == [f"line{i}" for i in range(first, 200)]  # oldest file first, no gap
    assert dy("logs", "--tail", "2", "rot").stdout == "line198\nline199\n"
    doc = json.loads(dy("inspect", "rot").stdout)[0]
    assert doc["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "1k", "max-file": "3"},
    }
    assert doc["LogPath"].endswith("/container-json.log")
    # The record keeps them: a later start rotates the same way.
    assert dy("start", "-a", "rot").stdout.endswith("line199\n")
    files = _log_files(dy, cid)
    assert len(files) == 3 and all(size <= 1000 for size in files.values()), files
    assert dy("logs", "rot").stdout.splitlines()[-1] == "line199"


def test_default_log_config_in_inspect(dy: Dockyard) -> None:
    dy("create", "--name", "plain", "busybox", "true")
    doc = json.loads(dy("inspect", "plain").stdout)[0]
    assert doc["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {}}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--log-opt", "max-size=abc"], "invalid size: 'abc'"),
        (["--log-opt", "max-size=0"], "max-size must be a positive number"),
        (["--log-opt", "max-file=x"], 'strconv.Atoi: parsing "x": invalid syntax'),
        (["--log-opt", "max-file=0"], "max-file cannot be less than 1"),
        (["--log-opt", "compress=true"], "unknown log opt 'compress' for json-file log driver"),
        (["--log-opt", "x=1"], "unknown log opt 'x' for json-file log driver"),
        (["--log-driver", "none", "--log-opt", "max-size=1m"], "invalid logging opts"),
        (["--log-driver", "gelf"], "no log driver named 'gelf' is registered"),
    ],
)
def test_bad_log_options_create_nothing(dy: Dockyard, flags: list[str], message: str) -> None:
    out = dy("run", *flags, "busybox", "true", check=False)
    assert out.returncode == 125
    assert out.stderr.startswith("Error: ") and message in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1
    out = dy("create", *flags, "busybox", "true", check=False)
    assert out.returncode != 0 and message in out.stderr and out.stderr.count("\n") == 1
    assert _removed(dy)


def test_log_driver_none_keeps_no_log(dy: Dockyard) -> None:
    out = dy(
        "run", "--name", "quiet", "--log-driver", "none",
        "busybox", "sh", "-c", "echo out; echo err >&2; exit 4",
        check=False,
    )  # fmt: skip
    assert out.returncode == 4
    assert out.stdout == "out\n" and out.stderr == "err\n"  # attached, not read from a log
    cid = dy("inspect", "-f", "{{.Id}}", "quiet").stdout.strip()
    assert _log_files(dy, cid) == {}
    out = dy("logs", "quiet", check=False)
    assert out.returncode == 1
    assert out.stderr == "Error: configured logging driver does not support reading\n"
    doc = json.loads(dy("inspect", "quiet").stdout)[0]
    assert doc["HostConfig"]["LogConfig"] == {"Type": "none", "Config": {}}
    assert doc["LogPath"] == ""


# ------------------------------------------------------------------ AutoRemove


def test_detached_rm_removes_container_and_anonymous_volume(dy: Dockyard) -> None:
    script = "sleep 0.5; exit 3"
    cid = dy("run", "-d", "--rm", "-v", "/data", "busybox", "sh", "-c", script).stdout.strip()
    assert dy("inspect", "-f", "{{.HostConfig.AutoRemove}}", cid).stdout == "true\n"
    assert len(dy("volume", "ls", "-q").stdout.split()) == 1
    assert dy("wait", cid).stdout == "3\n"  # its exit code, though it goes right after
    assert _until(lambda: _removed(dy))
    assert _until(lambda: dy("volume", "ls", "-q").stdout == "")
    out = dy("inspect", cid, check=False)
    assert out.returncode == 1 and "No such object" in out.stderr


def test_stop_of_detached_rm_container_ends_with_it_gone(dy: Dockyard) -> None:
    cid = dy("run", "-d", "--rm", "busybox", "sleep", "100").stdout.strip()
    assert dy("stop", "-t", "0", cid).stdout == cid + "\n"
    assert _removed(dy)  # no polling: stop waited for the removal


def test_foreground_rm_and_start_attached_rm(dy: Dockyard) -> None:
    out = dy("run", "--rm", "busybox", "sh", "-c", "echo hi; exit 5", check=False)
    assert out.returncode == 5 and out.stdout == "hi\n"
    assert _removed(dy)
    cid = dy("create", "--rm", "busybox", "sh", "-c", "echo again; exit 6").stdout.strip()
    out = dy("start", "-a", cid, check=False)
    assert out.returncode == 6 and out.stdout == "again\n"  # removed only after we read it
    assert _until(lambda: _removed(dy))


def test_restart_of_autoremove_container_keeps_it(dy: Dockyard) -> None:
    cid = dy("run", "-d", "--rm", "busybox", "sleep", "100").stdout.strip()
    dy("restart", "-t", "0", cid)
    assert _until(lambda: not _remover_running(cid))  # the first run's remover has decided
    assert dy("inspect", "-f", "{{.State.Status}}", cid).stdout == "running\n"
    dy("stop", "-t", "0", cid)
    assert _removed(dy)


# ------------------------------------------------------------------ environment


def test_default_environment_as_docker(dy: Dockyard) -> None:
    out = dy("run", "--name", "envy", "busybox", "env").stdout.splitlines()
    cid = dy("inspect", "-f", "{{.Id}}", "envy").stdout.strip()
    path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert out == [path, f"HOSTNAME={cid[:12]}", "HOME=/root"]
    env = json.loads(dy("inspect", "envy").stdout)[0]["Config"]["Env"]
    assert not any(e.startswith("HOSTNAME=") for e in env)  # dockerd's, not the config's
    out = dy("run", "--rm", "-h", "box1", "-e", "A=1", "busybox", "env").stdout.splitlines()
    assert out == [path, "HOSTNAME=box1", "A=1", "HOME=/root"]
    text = dy("run", "--rm", "-e", "HOSTNAME=mine", "-e", "HOME=/h", "busybox", "env").stdout
    assert text.splitlines() == [path, "HOSTNAME=mine", "HOME=/h"]
    assert "HOME=/\n" in dy("run", "--rm", "-u", "4321", "busybox", "env").stdout  # no passwd entry


# ------------------------------------------------------------------ templates


def test_templates_print_integers_as_integers(dy: Dockyard) -> None:
    dy("create", "--name", "sized", "-m", "64m", "--cpus", "0.5", "--pids-limit", "100",
       "busybox", "true")  # fmt: skip
    template = "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}"
    assert dy("inspect", "-f", template, "sized").stdout == "67108864 500000000 100\n"
    assert dy("inspect", "-f", "{{.HostConfig}}", "sized").stdout.count("e+") == 0
    assert render("{{.A}} {{.B}} {{.C}} {{.D}}", {"A": 0.5, "B": 1e6, "C": 7, "D": 2.0}) == (
        "0.5 1e+06 7 2"
    )
    assert render('{{printf "%v %d" .A .A}}', {"A": 33554432}) == "33554432 33554432"


# ------------------------------------------------------------------ run -a


def test_run_attach_only_the_named_streams(dy: Dockyard) -> None:
    script = "echo out; echo err >&2; exit 2"
    out = dy("run", "--name", "o", "-a", "stdout", "busybox", "sh", "-c", script, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (2, "out\n", "")
    out = dy("run", "--name", "e", "-a", "STDERR", "busybox", "sh", "-c", script, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (2, "", "err\n")
    out = dy("run", "--name", "i", "-a", "stdin", "busybox", "sh", "-c", script, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (2, "", "")
    assert dy("logs", "i").stdout == "out\n"  # the log has everything
    attach = "{{.Config.AttachStdin}} {{.Config.AttachStdout}} {{.Config.AttachStderr}}"
    assert dy("inspect", "-f", attach, "o").stdout == "false true false\n"
    assert dy("inspect", "-f", attach, "e").stdout == "false false true\n"
    assert dy("inspect", "-f", attach, "i").stdout == "true false false\n"
    dy("run", "-d", "--name", "d", "busybox", "true")
    assert dy("inspect", "-f", attach, "d").stdout == "false false false\n"
    out = dy("run", "-d", "-a", "stdout", "busybox", "true", check=False)
    assert out.returncode == 125
    assert out.stderr == "Error: conflicting options: cannot specify both --attach and --detach\n"
    out = dy("run", "-a", "all", "busybox", "true", check=False)
    assert out.returncode == 125 and "valid streams are STDIN, STDOUT and STDERR" in out.stderr
    out = dy(
        "run", "--rm", "-a", "stdout", "--log-driver", "none", "busybox", "sh", "-c", script,
        check=False,
    )  # fmt: skip
    assert (out.returncode, out.stdout, out.stderr) == (2, "out\n", "")  # filtered there too
