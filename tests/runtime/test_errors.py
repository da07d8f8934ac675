"""Refusals and failures: one line on stderr, non-zero exit, no traceback, nothing left.

The `rt` fixture checks, for every id a test used, that no state dir, cgroup,
mount or process is left behind; tests here also check the state root directly.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from tests.runtime.helpers import (
    Runtime,
    assert_one_line_error,
    cgroup_dirs,
    mounts_containing,
    needs_root,
    rt_fixture,  # noqa: F401 - the `rt` fixture
)

pytestmark = needs_root

SLEEP = ["sleep", "30"]


def assert_nothing_left(rt: Runtime, cid: str, bundle: Path | None = None) -> None:
    assert not (rt.root / cid).exists()
    assert rt("list", "-q").check().stdout.split().count(cid) == 0
    assert not cgroup_dirs(f"/dockyard/{cid}")
    if bundle is not None:
        assert not mounts_containing(str(bundle))


def refused_create(rt: Runtime, bundle: Path | str, *extra: str) -> tuple[str, str]:
    cid = rt.new_id()
    res = rt("create", "--bundle", str(bundle), *extra, cid)
    assert_one_line_error(res)
    assert_nothing_left(rt, cid, Path(bundle))
    return cid, res.stderr


def test_missing_bundle(rt: Runtime) -> None:
    _, err = refused_create(rt, rt.tmp_path / "no-such-bundle")
    assert "no-such-bundle" in err


def test_missing_config(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP)
    (bundle / "config.json").unlink()
    _, err = refused_create(rt, bundle)
    assert "config.json" in err


def test_config_not_json(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP)
    (bundle / "config.json").write_text("{this is not json")
    _, err = refused_create(rt, bundle)
    assert "JSON" in err


def test_config_not_an_object(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP)
    (bundle / "config.json").write_text("[1, 2]")
    refused_create(rt, bundle)


def _edit_config(bundle: Path, edit: object) -> None:
    path = bundle / "config.json"
    config = json.loads(path.read_text())
    assert callable(edit)
    edit(config)
    path.write_text(json.dumps(config))


def test_missing_process_args(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP)
    _edit_config(bundle, lambda c: c["process"].pop("args"))
    _, err = refused_create(rt, bundle)
    assert "args" in err


def test_empty_process_args(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP)
    _edit_config(bundle, lambda c: c["process"].update(args=[]))
    refused_create(rt, bundle)


def test_missing_root(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP)
    _edit_config(bundle, lambda c: c.pop("root"))
    refused_create(rt, bundle)


def test_unknown_capability(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP, process={"capabilities": {"bounding": ["CAP_NOPE"]}})
    _, err = refused_create(rt, bundle)
    assert "CAP_NOPE" in err


def test_executable_not_found(rt: Runtime) -> None:
    bundle = rt.bundle(["/no/such/program"])
    _, err = refused_create(rt, bundle)
    assert "/no/such/program" in err


def test_executable_not_in_path(rt: Runtime) -> None:
    _, err = refused_create(rt, rt.bundle(["no-such-program"]))
    assert "no-such-program" in err


def test_missing_rootfs(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP, root={"path": "no-rootfs"})
    res = rt("create", "--bundle", str(bundle), cid := rt.new_id())
    assert_one_line_error(res)
    assert_nothing_left(rt, cid, bundle)


def test_bad_bind_mount_source(rt: Runtime) -> None:
    from scripts.test_images import bundle_config

    mounts = [
        *bundle_config()["mounts"],
        {"destination": "/data", "type": "bind", "source": "/no/such/dir", "options": ["rbind"]},
    ]
    _, err = refused_create(rt, rt.bundle(SLEEP, mounts=mounts))
    assert "/no/such/dir" in err


def test_bad_cwd_is_created_or_refused(rt: Runtime) -> None:
    # A cwd that is a file can't be entered.
    bundle = rt.bundle(SLEEP, process={"cwd": "/etc/passwd"})
    refused_create(rt, bundle)


@pytest.mark.parametrize("verb", ["state", "start", "kill", "delete", "pause", "resume", "ps"])
def test_unknown_id(rt: Runtime, verb: str) -> None:
    res = rt(verb, "no-such-container")
    assert_one_line_error(res)
    assert "no-such-container" in res.stderr
    assert "does not exist" in res.stderr


def test_delete_force_unknown_id_is_fine(rt: Runtime) -> None:
    assert rt("delete", "--force", "no-such-container").returncode == 0


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", "with space"])
def test_invalid_id(rt: Runtime, bad: str) -> None:
    res = rt("create", "--bundle", str(rt.bundle(SLEEP)), bad)
    assert_one_line_error(res)
    assert "invalid container id" in res.stderr
    assert not rt.root.exists() or not list(rt.root.iterdir())


def test_duplicate_id(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP)
    cid = rt.create(bundle)
    pid = rt.state(cid)["pid"]
    res = rt("create", "--bundle", str(rt.bundle(SLEEP)), cid)
    assert_one_line_error(res)
    assert "already exists" in res.stderr
    # The first one is untouched.
    doc = rt.state(cid)
    assert doc["status"] == "created"
    assert doc["pid"] == pid
    assert doc["bundle"] == str(bundle)


def test_console_socket_missing(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP, process={"terminal": True})
    _, err = refused_create(rt, bundle, "--console-socket", str(rt.tmp_path / "no.sock"))
    assert "console socket" in err


def test_terminal_without_console_socket(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP, process={"terminal": True})
    cid = rt.new_id()
    res = rt("create", "--bundle", str(bundle), cid)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "console" in res.stderr
    assert_nothing_left(rt, cid, bundle)


def test_unknown_command_and_no_command(rt: Runtime) -> None:
    res = rt("frobnicate", root=False)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert rt(root=False).returncode != 0


def test_run_failure_cleans_up(rt: Runtime) -> None:
    bundle = rt.bundle(["no-such-program"])
    cid = rt.new_id()
    res = rt("run", "--bundle", str(bundle), cid)
    assert_one_line_error(res)
    assert_nothing_left(rt, cid, bundle)


def test_log_file_gets_error(rt: Runtime) -> None:
    log = rt.tmp_path / "runtime.log"
    res = rt("--log", str(log), "--log-format", "json", "state", "nope")
    assert_one_line_error(res)
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error"
    assert "nope" in entry["msg"]


def test_start_after_init_killed(rt: Runtime) -> None:
    cid = rt.create(rt.bundle(SLEEP))
    os.kill(rt.state(cid)["pid"], 9)
    deadline = time.monotonic() + 5
    while rt.status(cid) != "stopped" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert_one_line_error(rt("start", cid))
    rt("delete", cid).check()
    assert_nothing_left(rt, cid)


def test_console_socket_is_not_a_socket_listener(rt: Runtime) -> None:
    # A unix socket nobody listens on: connect fails, create is refused cleanly.
    path = rt.tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    bundle = rt.bundle(SLEEP, process={"terminal": True})
    refused_create(rt, bundle, "--console-socket", str(path))
