"""Lifecycle through the CLI: create, start, state, kill, delete, run, list, ps, pause."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.runtime.helpers import (
    CLI,
    Runtime,
    assert_one_line_error,
    needs_root,
    proc_state,
    rt_fixture,  # noqa: F401 - the `rt` fixture
    wait_for,
)

pytestmark = needs_root

SLEEP = ["sleep", "30"]


def test_create_start_stop_transitions(rt: Runtime) -> None:
    bundle = rt.bundle(["sleep", "1"])
    cid = rt.create(bundle)
    doc = rt.state(cid)
    assert doc["status"] == "created"
    assert doc["pid"] > 0
    assert doc["id"] == cid
    assert doc["bundle"] == str(bundle)
    assert os.path.exists(f"/proc/{doc['pid']}")
    rt("start", cid).check()
    assert rt.status(cid) == "running"
    rt.wait_status(cid, "stopped", timeout=5)
    rt("delete", cid).check()
    assert not (rt.root / cid).exists()


def test_start_twice_refused(rt: Runtime) -> None:
    cid = rt.create(rt.bundle(SLEEP))
    rt("start", cid).check()
    res = rt("start", cid)
    assert_one_line_error(res)
    assert "running" in res.stderr
    assert rt.status(cid) == "running"


def test_start_stopped_refused(rt: Runtime) -> None:
    cid = rt.create(rt.bundle(["true"]))
    rt("start", cid).check()
    rt.wait_status(cid, "stopped")
    res = rt("start", cid)
    assert_one_line_error(res)
    assert "stopped" in res.stderr


def test_delete_running_needs_force(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(SLEEP))
    pid = rt.state(cid)["pid"]
    res = rt("delete", cid)
    assert_one_line_error(res)
    assert rt.status(cid) == "running"
    rt("delete", "--force", cid).check()
    assert not (rt.root / cid).exists()
    assert wait_for(lambda: proc_state(pid) in ("", "Z"))


def test_delete_created_container(rt: Runtime) -> None:
    cid = rt.create(rt.bundle(SLEEP))
    pid = rt.state(cid)["pid"]
    rt("delete", cid).check()
    assert rt("state", cid).returncode != 0
    assert wait_for(lambda: proc_state(pid) in ("", "Z"))


def test_run_passes_exit_code(rt: Runtime) -> None:
    res = rt.run(rt.bundle(["sh", "-c", "echo hello; exit 7"]))
    assert res.returncode == 7, res.stderr
    assert res.stdout == "hello\n"


def test_run_exit_zero(rt: Runtime) -> None:
    assert rt.run(rt.bundle(["true"])).returncode == 0


def test_run_killed_by_signal_gives_128_plus_n(rt: Runtime) -> None:
    # PID 1 of a pid namespace can't be killed from inside: kill it from the host.
    bundle = rt.bundle(SLEEP)
    cid = rt.new_id()
    out = rt.io / "sig.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [CLI, "--root", str(rt.root), "run", "--bundle", str(bundle), cid],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for(lambda: _running(rt, cid), timeout=5)
        pid = rt.state(cid)["pid"]
        rt.track_pid(pid)
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_run_forwards_sigterm(rt: Runtime) -> None:
    # sh as PID 1 with a trap: TERM sent to `run` reaches it and the trap's code comes back.
    bundle = rt.bundle(["sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done"])
    cid = rt.new_id()
    with open(rt.io / "term.out", "wb") as f:
        proc = subprocess.Popen(
            [CLI, "--root", str(rt.root), "run", "--bundle", str(bundle), cid],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for(lambda: _running(rt, cid), timeout=5)
        rt.track_pid(rt.state(cid)["pid"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _running(rt: Runtime, cid: str) -> bool:
    res = rt("state", cid)
    return res.returncode == 0 and json.loads(res.stdout)["status"] == "running"


def test_run_detach(rt: Runtime) -> None:
    bundle = rt.bundle(SLEEP)
    cid = rt.new_id()
    res = rt("run", "-d", "--bundle", str(bundle), cid, timeout=5)
    res.check()
    rt.track_pid(rt.state(cid)["pid"])
    assert rt.status(cid) == "running"


@pytest.mark.parametrize("sig", ["TERM", "SIGKILL", "9", "KILL"])
def test_kill_by_name_and_number(rt: Runtime, sig: str) -> None:
    # PID 1 only gets signals it handles (SIGKILL from the host always works).
    script = "trap 'exit 3' TERM; while :; do sleep 0.1; done"
    cid = rt.run_detached(rt.bundle(["sh", "-c", script]))
    rt("kill", cid, sig).check()
    rt.wait_status(cid, "stopped", timeout=5)


def test_kill_default_is_term(rt: Runtime) -> None:
    cid = rt.run_detached(
        rt.bundle(["sh", "-c", "trap 'exit 3' TERM; while :; do sleep 0.1; done"])
    )
    rt("kill", cid).check()
    rt.wait_status(cid, "stopped", timeout=5)


def test_kill_unknown_signal(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(SLEEP))
    res = rt("kill", cid, "NOTASIGNAL")
    assert_one_line_error(res)
    assert rt.status(cid) == "running"


def test_kill_all(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(["sh", "-c", "sleep 30 & sleep 30 & wait"]))
    assert wait_for(lambda: len(_ps(rt, cid)) >= 3, timeout=5)
    pids = _ps(rt, cid)
    for pid in pids:
        rt.track_pid(pid)
    rt("kill", "--all", cid, "KILL").check()
    rt.wait_status(cid, "stopped", timeout=5)
    assert wait_for(lambda: all(proc_state(p) in ("", "Z") for p in pids), timeout=5)


def test_kill_stopped_refused(rt: Runtime) -> None:
    cid = rt.create(rt.bundle(["true"]))
    rt("start", cid).check()
    rt.wait_status(cid, "stopped")
    assert_one_line_error(rt("kill", cid, "KILL"))


def _ps(rt: Runtime, cid: str) -> list[int]:
    res = rt("ps", "--format", "json", cid).check()
    pids: list[int] = json.loads(res.stdout)
    return pids


def test_list_quiet_and_json(rt: Runtime) -> None:
    a = rt.run_detached(rt.bundle(SLEEP))
    b = rt.create(rt.bundle(SLEEP))
    quiet = rt("list", "-q").check().stdout.split()
    assert sorted(quiet) == sorted([a, b])
    rows = json.loads(rt("list", "--format", "json").check().stdout)
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {a, b}
    assert by_id[a]["status"] == "running"
    assert by_id[b]["status"] == "created"
    assert by_id[a]["pid"] == rt.state(a)["pid"]
    table = rt("list").check().stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "PID", "STATUS"]
    assert len(table) == 3


def test_list_empty(rt: Runtime) -> None:
    assert rt("list", "-q").check().stdout == ""
    assert json.loads(rt("list", "--format", "json").check().stdout) == []


def test_ps_json(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(["sh", "-c", "sleep 30 & wait"]))
    init = rt.state(cid)["pid"]
    assert wait_for(lambda: len(_ps(rt, cid)) == 2, timeout=5)
    pids = _ps(rt, cid)
    assert init in pids
    for pid in pids:
        rt.track_pid(pid)
        assert os.path.exists(f"/proc/{pid}")
    table = rt("ps", cid).check().stdout.splitlines()
    assert "PID" in table[0]
    assert len(table) == 3


def test_pause_resume(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(["sh", "-c", "while :; do :; done"]))
    pid = rt.state(cid)["pid"]
    rt("pause", cid).check()
    assert rt.status(cid) == "paused"
    assert wait_for(lambda: proc_state(pid) == "D", timeout=3), proc_state(pid)
    assert_one_line_error(rt("pause", cid))
    rt("resume", cid).check()
    assert rt.status(cid) == "running"
    assert wait_for(lambda: proc_state(pid) in ("R", "S"), timeout=3), proc_state(pid)
    assert_one_line_error(rt("resume", cid))


def test_delete_force_paused(rt: Runtime) -> None:
    cid = rt.run_detached(rt.bundle(SLEEP))
    rt("pause", cid).check()
    assert_one_line_error(rt("delete", cid))
    rt("delete", "--force", cid).check()
    assert not (rt.root / cid).exists()


def test_features(rt: Runtime) -> None:
    doc = json.loads(rt("features", root=False).check().stdout)
    for key in ("ociVersionMin", "ociVersionMax", "hooks", "mountOptions", "linux"):
        assert key in doc
    assert set(doc["hooks"]) >= {
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    }
    linux = doc["linux"]
    for key in ("namespaces", "capabilities", "cgroup", "seccomp"):
        assert key in linux
    assert {"pid", "network", "mount", "user", "ipc", "uts", "cgroup"} <= set(linux["namespaces"])
    assert "CAP_SYS_ADMIN" in linux["capabilities"]
    assert {"bind", "ro", "rprivate"} <= set(doc["mountOptions"])


def test_spec_writes_and_refuses_overwrite(rt: Runtime) -> None:
    where = rt.tmp_path / "spec"
    where.mkdir()
    rt("spec", cwd=where, root=False).check()
    doc = json.loads((where / "config.json").read_text())
    assert doc["process"]["args"]
    assert doc["root"]["path"] == "rootfs"
    before = (where / "config.json").read_bytes()
    res = rt("spec", cwd=where, root=False)
    assert_one_line_error(res)
    assert (where / "config.json").read_bytes() == before
    other = rt.tmp_path / "spec2"
    other.mkdir()
    rt("spec", "--bundle", str(other), root=False).check()
    assert (other / "config.json").exists()


def test_pid_file_matches_state(rt: Runtime) -> None:
    pid_file = rt.tmp_path / "init.pid"
    cid = rt.create(rt.bundle(SLEEP), None, "--pid-file", str(pid_file))
    assert int(pid_file.read_text()) == rt.state(cid)["pid"]


def test_run_from_bundle_cwd(rt: Runtime) -> None:
    bundle = rt.bundle(["sh", "-c", "exit 5"])
    cid = rt.new_id()
    assert rt("run", cid, cwd=bundle).returncode == 5
    assert not (rt.root / cid).exists()


def test_run_keep(rt: Runtime) -> None:
    cid = rt.new_id()
    res = rt("run", "--keep", "--bundle", str(rt.bundle(["sh", "-c", "exit 4"])), cid)
    assert res.returncode == 4
    assert rt.status(cid) == "stopped"
    rt("delete", cid).check()


def test_version(rt: Runtime) -> None:
    out = rt("--version", root=False).check().stdout
    assert out.startswith("dockyard-runtime version")
