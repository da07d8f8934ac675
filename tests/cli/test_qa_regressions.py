"""Regressions found by exercising `dockyard` as a Docker user would."""

from __future__ import annotations

import concurrent.futures
import os
import pty
import select
import subprocess
import time

from tests.cli.dockyard_helper import DOCKYARD, Dockyard


def test_logs_tail_not_a_number_is_one_line(dy: Dockyard) -> None:
    dy("run", "-d", "--name", "t", "busybox", "echo", "hi")
    dy("wait", "t")
    out = dy("logs", "--tail", "abc", "t", check=False)
    assert out.returncode != 0
    assert out.stderr.startswith("Error:") and "--tail" in out.stderr and "abc" in out.stderr


def test_memory_below_docker_minimum_names_the_limit(dy: Dockyard) -> None:
    out = dy("run", "--rm", "-m", "1k", "busybox", "true", check=False)
    assert out.returncode != 0
    assert "Minimum memory limit allowed is 6MB" in out.stderr
    assert dy("ps", "-aq").stdout == ""


def test_version_format_renders_the_template(dy: Dockyard) -> None:
    out = dy("version", "-f", "{{.Client.Version}}")
    assert out.stdout.strip() and "\n" not in out.stdout.strip()
    assert "Client:" not in out.stdout


def test_tty_sets_term_as_docker_does(dy: Dockyard) -> None:
    assert "TERM=xterm" in dy("run", "--rm", "-t", "busybox", "env").stdout.split()
    assert "TERM=xterm" not in dy("run", "--rm", "busybox", "env").stdout.split()
    dy("run", "-d", "--name", "p", "busybox", "sleep", "100")
    assert "TERM=xterm" not in dy("exec", "p", "env").stdout.split()
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(DOCKYARD, [DOCKYARD, "--root", str(dy.root), "exec", "-t", "p", "env"])
    out = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
    os.waitpid(pid, 0)
    os.close(fd)
    assert b"TERM=xterm" in out


def test_concurrent_starts_leave_the_container_running(dy: Dockyard) -> None:
    dy("create", "--name", "c", "busybox", "sleep", "1000")
    cmd = [DOCKYARD, "--root", str(dy.root), "start", "c"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        runs = list(
            pool.map(
                lambda _: subprocess.run(cmd, capture_output=True, text=True, timeout=60),
                range(3),
            )
        )
    for run in runs:  # starting a running container is a no-op, as with Docker
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "c"
    time.sleep(0.5)
    assert dy("inspect", "-f", "{{.State.Status}}", "c").stdout.strip() == "running"


def test_logs_into_a_closed_pipe_is_quiet(dy: Dockyard) -> None:
    dy("run", "--name", "t", "busybox", "sh", "-c", "seq 1 20000")
    proc = subprocess.run(
        f"{DOCKYARD} --root {dy.root} logs t | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout == "1\n"
    assert "Broken pipe" not in proc.stderr and "Traceback" not in proc.stderr
