"""run/create flags of Docker's HostConfig reach the container: ulimit, shm, sysctl, device,
init, group-add, oom-score-adj, stop signal and timeout, cgroup limits; bad values are one line."""

from __future__ import annotations

import os
import time

import pytest

from tests.cli.dockyard_helper import Dockyard


def test_ulimit_shm_sysctl_groups_oom(dy: Dockyard) -> None:
    out = dy(
        "run",
        "--rm",
        "--ulimit",
        "nofile=1024:2048",
        "--shm-size",
        "96m",
        "--sysctl",
        "net.ipv4.ip_forward=1",
        "--sysctl",
        "kernel.shmmni=2048",
        "--group-add",
        "1234",
        "--oom-score-adj",
        "321",
        "busybox",
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; df -k /dev/shm | tail -1; cat /proc/sys/net/ipv4/ip_forward;"
        " cat /proc/sys/kernel/shmmni; id -G; cat /proc/self/oom_score_adj",
    ).stdout.split("\n")
    assert out[0] == "1024"
    assert out[1] == "2048"
    assert out[2].split()[1] == str(96 * 1024)
    assert out[3] == "1"
    assert out[4] == "2048"
    assert "1234" in out[5].split()
    assert out[6] == "321"


def test_device_node_present_and_usable(dy: Dockyard) -> None:
    out = dy(
        "run",
        "--rm",
        "--device",
        "/dev/null:/dev/mynull",
        "--device",
        "/dev/zero",
        "busybox",
        "sh",
        "-c",
        "echo hi > /dev/mynull && echo wrote; head -c 5 /dev/zero | wc -c; ls -l /dev/mynull",
    ).stdout.split("\n")
    assert out[0] == "wrote"
    assert out[1].strip() == "5"
    assert out[2].startswith("c") and "1,   3" in out[2]


@pytest.mark.skipif(not os.path.exists("/dev/loop-control"), reason="needs /dev/loop-control")
def test_device_cgroup_rule_follows_the_mode(dy: Dockyard) -> None:
    script = (
        "true < /dev/f && echo readable || echo no-read;"
        " true > /dev/f && echo writable || echo no-write"
    )
    out = dy("run", "--rm", "--device", "/dev/loop-control:/dev/f:r", "busybox", "sh", "-c", script)
    assert out.stdout.split() == ["readable", "no-write"]
    out = dy("run", "--rm", "--device", "/dev/loop-control:/dev/f", "busybox", "sh", "-c", script)
    assert out.stdout.split() == ["readable", "writable"]
    out = dy("run", "--rm", "busybox", "sh", "-c", "ls /dev/loop-control 2>&1 || true")
    assert "No such file" in out.stdout


def test_init_is_pid1_and_reaps_zombies(dy: Dockyard) -> None:
    out = dy(
        "run",
        "--rm",
        "--init",
        "busybox",
        "sh",
        "-c",
        "echo self=$$; (sleep 0.2 &); sleep 0.8; cat /proc/1/cmdline | tr '\\0' ' '; echo;"
        " for s in /proc/[0-9]*/stat; do cut -d' ' -f3 $s; done | grep -c Z || true",
    ).stdout.split("\n")
    assert int(out[0].removeprefix("self=")) > 1
    assert out[1].startswith("/sbin/docker-init -- sh -c")
    assert out[2].strip() == "0"  # the orphaned sleep was reaped by the init
    cid = dy("create", "--init", "busybox", "true").stdout.strip()
    assert dy("inspect", "-f", "{{.Path}}", cid).stdout.strip() == "true"


def test_stop_signal_reaches_trap(dy: Dockyard) -> None:
    cid = dy(
        "run",
        "-d",
        "--stop-signal",
        "USR1",
        "busybox",
        "sh",
        "-c",
        'trap "echo got usr1; exit 7" USR1; echo ready; while true; do sleep 0.05; done',
    ).stdout.strip()
    _wait_log(dy, cid, "ready")
    began = time.monotonic()
    dy("stop", cid)
    assert time.monotonic() - began < 5
    assert "got usr1" in dy("logs", cid).stdout
    assert dy("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip() == "7"
    assert dy("inspect", "-f", "{{.Config.StopSignal}}", cid).stdout.strip() == "USR1"


def test_stop_timeout_is_the_default_for_stop(dy: Dockyard) -> None:
    # sh as PID 1 ignores SIGTERM: stop has to wait for the timeout, then SIGKILL.
    cid = dy("run", "-d", "--stop-timeout", "1", "busybox", "sleep", "100").stdout.strip()
    began = time.monotonic()
    dy("stop", cid)
    took = time.monotonic() - began
    assert 0.8 < took < 5
    assert dy("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "exited"


def test_cgroup_limits_reach_the_cgroup(dy: Dockyard) -> None:
    cid = dy(
        "run",
        "-d",
        "-m",
        "64m",
        "--memory-reservation",
        "32m",
        "--cpu-shares",
        "512",
        "--cpuset-cpus",
        "0",
        "busybox",
        "sleep",
        "100",
    ).stdout.strip()
    base = "/sys/fs/cgroup"
    assert _read(f"{base}/memory/dockyard/{cid}/memory.limit_in_bytes") == str(64 << 20)
    assert _read(f"{base}/memory/dockyard/{cid}/memory.soft_limit_in_bytes") == str(32 << 20)
    assert _read(f"{base}/cpu/dockyard/{cid}/cpu.shares") == "512"
    assert _read(f"{base}/cpuset/dockyard/{cid}/cpuset.cpus") == "0"
    dy("rm", "-f", cid)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ulimit", "nofile=1024:99999999"], "above the host's hard limit 20000"),
        (["--ulimit", "bogus=1"], '"--ulimit" flag'),
        (["--ulimit", "nofile=20:10"], "soft limit must be less than or equal to hard limit"),
        (["--device", "/dev/does-not-exist"], "/dev/does-not-exist"),
        (["--device", "/dev/null:/dev/x:rwz"], "invalid device mode"),
        (["--sysctl", "vm.swappiness=10"], 'sysctl "vm.swappiness" is not allowed'),
        (["--network", "host", "--sysctl", "net.ipv4.ip_forward=1"], "host network namespace"),
        (["--health-interval", "abc", "--health-cmd", "true"], 'invalid duration "abc"'),
        (["--no-healthcheck", "--health-cmd", "true"], "conflicts"),
        (["--stop-signal", "SIGNOPE"], "Invalid signal: SIGNOPE"),
        (["--oom-score-adj", "5000"], "range for oom score adj"),
        (["--memory-swap", "10m"], "Memory limit"),
    ],
)
def test_bad_values_are_one_line(dy: Dockyard, flags: list[str], message: str) -> None:
    out = dy("run", "--rm", *flags, "busybox", "true", check=False)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert dy("ps", "-aq").stdout == ""


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _wait_log(dy: Dockyard, cid: str, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in dy("logs", cid).stdout:
        assert time.monotonic() < deadline, f"{text!r} not in the logs"
        time.sleep(0.05)
