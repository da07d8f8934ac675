"""OCI hooks for real: all six kinds, their order and state, failures and timeouts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from scripts.test_images import bundle_config

from tests.runtime.helpers import (
    Runtime,
    assert_one_line_error,
    needs_root,
    rt_fixture,  # noqa: F401 - the `rt` fixture
    wait_for,
)

pytestmark = needs_root

SLEEP = ["sleep", "30"]
ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")

# Appends "NAME STATUS PID>0?" to LOG; the state document comes on stdin (one line of JSON).
HOOK = """#!/bin/sh
s=$(cat)
status=$(echo "$s" | sed -n 's/.*"status": *"\\([a-z]*\\)".*/\\1/p')
pid=$(echo "$s" | sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p')
echo "$1 $status ${pid:-0}" >> "$2"
"""


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def hook(path: Path | str, *args: str, timeout: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": str(path), "args": [str(path), *args], "env": ENV}
    if timeout is not None:
        entry["timeout"] = timeout
    return entry


def hooks_bundle(rt: Runtime, args: list[str]) -> tuple[Path, Path]:
    """A bundle with all six hooks logging to one file (host: LOG, container: /hooklog/log)."""
    logdir = rt.tmp_path / "hooklog"
    logdir.mkdir()
    log = logdir / "log"
    host_hook = write_script(rt.tmp_path / "hook.sh", HOOK)
    mounts = [
        *bundle_config()["mounts"],
        {
            "destination": "/hooklog",
            "type": "bind",
            "source": str(logdir),
            "options": ["rbind", "rw"],
        },
    ]
    hooks = {kind: [hook(host_hook, kind, str(log))] for kind in KINDS if kind != "startContainer"}
    # startContainer runs inside the container: its path and log are container paths.
    hooks["startContainer"] = [hook("/hook.sh", "startContainer", "/hooklog/log")]
    bundle = rt.bundle(args, mounts=mounts, hooks=hooks)
    write_script(bundle / "rootfs" / "hook.sh", HOOK)
    return bundle, log


def log_lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def test_all_hooks_in_order(rt: Runtime) -> None:
    bundle, log = hooks_bundle(rt, ["sleep", "0.3"])
    cid = rt.create(bundle)
    pid = rt.state(cid)["pid"]
    assert [entry[0] for entry in log_lines(log)] == [
        "prestart",
        "createRuntime",
        "createContainer",
    ]
    rt("start", cid).check()
    rt.wait_status(cid, "stopped", timeout=5)
    rt("delete", cid).check()
    lines = log_lines(log)
    assert [entry[0] for entry in lines] == list(KINDS), lines
    status = {entry[0]: entry[1] for entry in lines}
    assert status["prestart"] == status["createRuntime"] == status["createContainer"] == "creating"
    assert status["startContainer"] in ("creating", "created")
    assert status["poststart"] == "running"
    assert status["poststop"] == "stopped"
    pids = {entry[0]: int(entry[2]) for entry in lines}
    assert pids["createRuntime"] == pid
    assert pids["poststart"] == pid


def test_poststart_after_startcontainer_repeatedly(rt: Runtime) -> None:
    # startContainer runs in the container before its process; poststart after `start`.
    for _ in range(3):
        bundle, log = hooks_bundle(rt, ["true"])
        cid = rt.create(bundle)
        rt("start", cid).check()
        rt.wait_status(cid, "stopped", timeout=5)
        rt("delete", cid).check()
        kinds = [entry[0] for entry in log_lines(log)]
        assert kinds == list(KINDS), kinds
        # Fresh hooklog dir for the next round.
        for path in (log, log.parent, rt.tmp_path / "hook.sh"):
            path.unlink() if path.is_file() else path.rmdir()


def test_poststart_waits_for_slow_startcontainer(rt: Runtime) -> None:
    # The spec: startContainer runs before the user's process, poststart after it.
    bundle, log = hooks_bundle(rt, ["true"])
    slow = HOOK.replace("s=$(cat)", "s=$(cat); sleep 0.5")
    write_script(bundle / "rootfs" / "hook.sh", slow)
    cid = rt.create(bundle)
    rt("start", cid).check()
    rt.wait_status(cid, "stopped", timeout=5)
    kinds = [entry[0] for entry in log_lines(log)]
    assert kinds.index("startContainer") < kinds.index("poststart"), kinds


def test_run_runs_hooks_and_poststop(rt: Runtime) -> None:
    bundle, log = hooks_bundle(rt, ["true"])
    res = rt.run(bundle)
    assert res.returncode == 0, res.stderr
    assert [entry[0] for entry in log_lines(log)] == list(KINDS)


def test_create_runtime_hook_failure(rt: Runtime) -> None:
    fail = write_script(rt.tmp_path / "fail.sh", "#!/bin/sh\necho broken >&2\nexit 3\n")
    bundle = rt.bundle(SLEEP, hooks={"createRuntime": [hook(fail)]})
    cid = rt.new_id()
    res = rt("create", "--bundle", str(bundle), cid)
    assert_one_line_error(res)
    assert "createRuntime" in res.stderr and "3" in res.stderr
    assert not (rt.root / cid).exists()
    # The fixture checks for cgroups, mounts and processes left behind.


def test_prestart_hook_failure_stops_later_hooks(rt: Runtime) -> None:
    log = rt.tmp_path / "log"
    ok = write_script(rt.tmp_path / "hook.sh", HOOK)
    fail = write_script(rt.tmp_path / "fail.sh", "#!/bin/sh\nexit 1\n")
    hooks = {
        "prestart": [hook(ok, "first", str(log)), hook(fail), hook(ok, "third", str(log))],
        "createRuntime": [hook(ok, "createRuntime", str(log))],
    }
    cid = rt.new_id()
    res = rt("create", "--bundle", str(rt.bundle(SLEEP, hooks=hooks)), cid)
    assert_one_line_error(res)
    assert [entry[0] for entry in log_lines(log)] == ["first"]


def test_create_container_hook_failure(rt: Runtime) -> None:
    fail = write_script(rt.tmp_path / "fail.sh", "#!/bin/sh\nexit 2\n")
    cid = rt.new_id()
    bundle = rt.bundle(SLEEP, hooks={"createContainer": [hook(fail)]})
    res = rt("create", "--bundle", str(bundle), cid)
    assert res.returncode != 0
    assert "createContainer" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (rt.root / cid).exists()


def test_start_container_hook_failure(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP, hooks={"startContainer": [hook("/fail.sh")]})
    write_script(bundle / "rootfs" / "fail.sh", "#!/bin/sh\nexit 5\n")
    cid = rt.create(bundle)
    res = rt("start", cid)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    # start says the init died; the init's own message is on the container's stderr.
    assert "init died" in res.stderr
    errs = "".join(p.read_text() for p in rt.io.glob("*.err"))
    assert "startContainer hook #0 (/fail.sh) exited 5" in errs
    rt.wait_status(cid, "stopped")


def test_hook_timeout(rt: Runtime) -> None:
    slow = write_script(rt.tmp_path / "slow.sh", "#!/bin/sh\nsleep 5\n")
    bundle = rt.bundle(SLEEP, hooks={"createRuntime": [hook(slow, timeout=1)]})
    cid = rt.new_id()
    started = time.monotonic()
    res = rt("create", "--bundle", str(bundle), cid)
    assert time.monotonic() - started < 4
    assert_one_line_error(res)
    assert "timed out" in res.stderr
    assert not (rt.root / cid).exists()


def test_missing_hook_binary(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP, hooks={"prestart": [hook(rt.tmp_path / "nope.sh")]})
    cid = rt.new_id()
    res = rt("create", "--bundle", str(bundle), cid)
    assert_one_line_error(res)
    assert "nope.sh" in res.stderr


def test_poststart_failure_keeps_container_running(rt: Runtime) -> None:
    fail = write_script(rt.tmp_path / "fail.sh", "#!/bin/sh\nexit 1\n")
    cid = rt.create(rt.bundle(SLEEP, hooks={"poststart": [hook(fail)]}))
    res = rt("start", cid)
    assert res.returncode == 0
    assert "warning" in res.stderr
    assert rt.status(cid) == "running"


def test_poststop_runs_on_forced_delete(rt: Runtime) -> None:
    log = rt.tmp_path / "log"
    ok = write_script(rt.tmp_path / "hook.sh", HOOK)
    cid = rt.run_detached(rt.bundle(SLEEP, hooks={"poststop": [hook(ok, "poststop", str(log))]}))
    assert not log.exists()
    rt("delete", "--force", cid).check()
    assert wait_for(log.exists, timeout=3)
    assert log_lines(log) == [["poststop", "stopped", "0"]]


def test_hook_env_and_args(rt: Runtime) -> None:
    out = rt.tmp_path / "env.txt"
    script = write_script(rt.tmp_path / "env.sh", '#!/bin/sh\necho "$0 $1 $FOO" > "$2"\n')
    entry = {"path": str(script), "args": ["name0", "arg1", str(out)], "env": ["FOO=bar"]}
    cid = rt.create(rt.bundle(SLEEP, hooks={"prestart": [entry]}))
    assert rt.status(cid) == "created"
    # ($0 is the script's path: the kernel runs `#!/bin/sh` scripts as `sh PATH ARGS`.)
    assert out.read_text().split()[1:] == ["arg1", "bar"]
