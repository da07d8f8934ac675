"""`exec`: one more process in a running container, in its namespaces and cgroup."""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import time
from pathlib import Path
from typing import Any

from tests.runtime.helpers import (
    Runtime,
    assert_one_line_error,
    needs_root,
    proc_state,
    rt_fixture,  # noqa: F401 - the `rt` fixture
    wait_for,
)

pytestmark = needs_root

SLEEP = ["sleep", "30"]
NS_KINDS = ("ipc", "uts", "net", "mnt", "pid", "cgroup")


def running(rt: Runtime, **overrides: Any) -> tuple[str, int]:
    cid = rt.run_detached(rt.bundle(SLEEP, **overrides))
    return cid, int(rt.state(cid)["pid"])


def test_exec_joins_namespaces_and_cgroup(rt: Runtime) -> None:
    cid, init = running(rt)
    pid_file = rt.tmp_path / "exec.pid"
    rt("exec", "-d", "--pid-file", str(pid_file), cid, "sleep", "20").check()
    pid = int(pid_file.read_text())
    rt.track_pid(pid)
    for kind in NS_KINDS:
        assert os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/{init}/ns/{kind}"), kind
        assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
    assert Path(f"/proc/{pid}/cgroup").read_text() == Path(f"/proc/{init}/cgroup").read_text()
    assert Path(f"/proc/{pid}/root").resolve() == Path(f"/proc/{init}/root").resolve()
    assert pid in json.loads(rt("ps", "--format", "json", cid).check().stdout)
    # Its parent is not a runtime process left behind.
    assert proc_state(pid) in ("S", "R")


def test_exec_joins_userns(rt: Runtime) -> None:
    cid, init = running(rt)
    res = rt.sh(cid, "readlink /proc/self/ns/user; readlink /proc/1/ns/pid; cat /proc/1/cmdline")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines[0] == os.readlink(f"/proc/{init}/ns/user")
    assert lines[1] == os.readlink(f"/proc/{init}/ns/pid")
    assert lines[2].startswith("sleep")


def test_exec_sees_container_pids(rt: Runtime) -> None:
    cid, _ = running(rt)
    res = rt.sh(cid, "echo $$; ps -o pid,comm; true")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert int(lines[0]) > 1
    comms = sorted(line.split()[1] for line in lines[2:])
    assert comms == ["ps", "sh", "sleep"], res.stdout


def test_exec_exit_code(rt: Runtime) -> None:
    cid, _ = running(rt)
    assert rt.sh(cid, "exit 3").returncode == 3
    assert rt("exec", cid, "true").returncode == 0
    assert rt("exec", cid, "false").returncode == 1


def test_exec_killed_by_signal(rt: Runtime) -> None:
    cid, _ = running(rt)
    assert rt.sh(cid, "kill -9 $$").returncode == 128 + 9


def test_exec_output(rt: Runtime) -> None:
    cid, _ = running(rt)
    res = rt("exec", cid, "echo", "hello", "world")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello world\n"


def test_exec_process_json(rt: Runtime) -> None:
    cid, _ = running(rt)
    process = {
        "args": ["sh", "-c", "echo $FOO; pwd; id -u; exit 4"],
        "env": ["PATH=/bin:/usr/bin", "FOO=from-json"],
        "cwd": "/etc",
        "user": {"uid": 65534, "gid": 65534},
    }
    path = rt.tmp_path / "process.json"
    path.write_text(json.dumps(process))
    res = rt("exec", "--process", str(path), cid)
    assert res.returncode == 4, res.stderr
    assert res.stdout.split() == ["from-json", "/etc", "65534"]


def test_exec_process_json_invalid(rt: Runtime) -> None:
    cid, _ = running(rt)
    path = rt.tmp_path / "process.json"
    path.write_text("{not json")
    assert_one_line_error(rt("exec", "--process", str(path), cid))
    path.write_text(json.dumps({"cwd": "/"}))
    assert_one_line_error(rt("exec", "--process", str(path), cid))
    assert_one_line_error(rt("exec", "--process", str(rt.tmp_path / "missing.json"), cid))


def test_exec_env(rt: Runtime) -> None:
    cid, _ = running(rt, process={"env": ["PATH=/bin:/usr/bin", "KEEP=1", "OVER=old"]})
    res = rt("exec", "-e", "NEW=2", "-e", "OVER=new", cid, "sh", "-c", "echo $KEEP $NEW $OVER")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1", "2", "new"]


def test_exec_cwd(rt: Runtime) -> None:
    cid, _ = running(rt)
    res = rt("exec", "--cwd", "/tmp", cid, "pwd")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "/tmp"


def test_exec_bad_cwd(rt: Runtime) -> None:
    cid, _ = running(rt)
    res = rt("exec", "--cwd", "/does/not/exist", cid, "pwd")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr


def test_exec_user(rt: Runtime) -> None:
    cid, _ = running(rt)
    res = rt(
        "exec", "-u", "65534:65534", cid, "sh", "-c", "id -u; id -g; grep CapEff /proc/self/status"
    )
    assert res.returncode == 0, res.stderr
    words = res.stdout.split()
    assert words[:2] == ["65534", "65534"]
    assert int(words[-1], 16) == 0


def test_exec_user_not_numeric(rt: Runtime) -> None:
    cid, _ = running(rt)
    assert_one_line_error(rt("exec", "-u", "nobody", cid, "id"))


def test_exec_missing_binary(rt: Runtime) -> None:
    cid, _ = running(rt)
    res = rt("exec", cid, "no-such-binary")
    assert res.returncode != 0
    assert "no-such-binary" in res.stderr
    assert "Traceback" not in res.stderr
    assert rt.status(cid) == "running"


def test_exec_needs_command(rt: Runtime) -> None:
    cid, _ = running(rt)
    assert_one_line_error(rt("exec", cid))


def test_exec_tty_needs_console_socket(rt: Runtime) -> None:
    cid, _ = running(rt)
    assert_one_line_error(rt("exec", "-t", cid, "sh"))


def test_exec_in_stopped_container_refused(rt: Runtime) -> None:
    cid = rt.create(rt.bundle(["true"]))
    rt("start", cid).check()
    rt.wait_status(cid, "stopped")
    assert_one_line_error(rt("exec", cid, "true"))


def test_exec_unknown_container(rt: Runtime) -> None:
    assert_one_line_error(rt("exec", "nope-" + rt.tmp_path.name[-8:], "true"))


def test_exec_detached_is_in_ps_and_dies_with_container(rt: Runtime) -> None:
    cid, _ = running(rt)
    pid_file = rt.tmp_path / "exec.pid"
    rt("exec", "-d", "--pid-file", str(pid_file), cid, "sleep", "25").check()
    pid = int(pid_file.read_text())
    rt.track_pid(pid)
    rt("kill", "--all", cid, "KILL").check()
    assert wait_for(lambda: proc_state(pid) in ("", "Z"), timeout=5)


def test_exec_preserves_seccomp_and_caps(rt: Runtime) -> None:
    cid, init = running(rt)
    res = rt("exec", cid, "grep", "-E", "^(CapEff|CapBnd|NoNewPrivs|Seccomp):", "/proc/self/status")
    assert res.returncode == 0, res.stderr
    mine = dict(line.split(":\t") for line in res.stdout.splitlines())
    theirs = {
        k: v
        for k, v in (
            line.split(":\t")
            for line in Path(f"/proc/{init}/status").read_text().splitlines()
            if ":\t" in line
        )
        if k in mine
    }
    assert mine == theirs


def test_exec_cap_flag_adds_capability(rt: Runtime) -> None:
    cid, _ = running(rt)
    res = rt(
        "exec", "--cap", "CAP_NET_ADMIN", cid, "sh", "-c", "ip link set lo mtu 1500; echo rc=$?"
    )
    assert res.returncode == 0, res.stderr
    assert "rc=0" in res.stdout


# ---------------------------------------------------------------- terminal


class ConsoleSocket:
    """A unix socket listening for the pty master that `--console-socket` sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.sock.settimeout(10)

    def receive_master(self) -> tuple[int, str]:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10)
            msg, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        assert len(fds) == 1, (msg, fds)
        return fds[0], msg.decode()

    def close(self) -> None:
        self.sock.close()


def read_until(fd: int, needle: bytes, timeout: float = 5.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError as err:
            if err.errno == errno.EIO:  # the slave side is closed: all read
                break
            raise
        if not chunk:
            break
        data += chunk
    return data


def test_terminal_via_console_socket(rt: Runtime) -> None:
    console = ConsoleSocket(rt.tmp_path / "console.sock")
    try:
        bundle = rt.bundle(["sh", "-c", "tty; echo ok"], process={"terminal": True})
        cid = rt.create(bundle, None, "--console-socket", str(console.path))
        master, _name = console.receive_master()
    finally:
        console.close()
    try:
        rt("start", cid).check()
        out = read_until(master, b"ok\r\n")
    finally:
        os.close(master)
    lines = out.decode().split("\r\n")
    assert lines[0] == "/dev/pts/0", out
    assert lines[1] == "ok", out


def test_terminal_interactive(rt: Runtime) -> None:
    console = ConsoleSocket(rt.tmp_path / "console.sock")
    try:
        bundle = rt.bundle(["sh"], process={"terminal": True})
        cid = rt.create(bundle, None, "--console-socket", str(console.path))
        master, _ = console.receive_master()
    finally:
        console.close()
    try:
        rt("start", cid).check()
        os.write(master, b"echo $((6*7)); exit 3\n")
        out = read_until(master, b"42\r\n")
        assert b"42\r\n" in out, out
        rt.wait_status(cid, "stopped", timeout=5)
    finally:
        os.close(master)


def test_exec_with_terminal(rt: Runtime) -> None:
    cid, _ = running(rt)
    console = ConsoleSocket(rt.tmp_path / "console.sock")
    try:
        res = rt(
            "exec",
            "-d",
            "-t",
            "--console-socket",
            str(console.path),
            cid,
            "sh",
            "-c",
            "tty; echo done; sleep 1",
        )
        res.check()
        master, _ = console.receive_master()
    finally:
        console.close()
    try:
        out = read_until(master, b"done\r\n")
    finally:
        os.close(master)
    assert out.decode().split("\r\n")[:2] == ["/dev/pts/0", "done"], out
