"""`dockyard` image and container verbs, end to end as root on the busybox image."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from scripts.test_images import BusyboxImage

from tests.cli.dockyard_helper import DOCKYARD, Dockyard

__all__ = ["DOCKYARD", "Dockyard"]  # other test modules import them from here


def test_images_tag_rmi(dy: Dockyard) -> None:
    listing = dy("images").stdout.splitlines()
    assert listing[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert listing[1].split()[:2] == ["busybox", "latest"]
    dy("tag", "busybox", "localhost:5000/tools/bb:v1")
    assert "localhost:5000/tools/bb" in dy("images").stdout
    assert (
        dy("rmi", "localhost:5000/tools/bb:v1").stdout.strip()
        == "Untagged: localhost:5000/tools/bb:v1"
    )
    image_id = dy("images", "-q").stdout.strip()
    assert len(image_id) == 12


def test_import_with_changes_and_stdin(dy: Dockyard, busybox_image: BusyboxImage) -> None:
    with open(busybox_image.tar, "rb") as f:
        out = subprocess.run(
            [
                DOCKYARD,
                "--root",
                str(dy.root),
                "import",
                "-c",
                'CMD ["echo", "from-cmd"]',
                "-",
                "withcmd:1",
            ],
            stdin=f,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    assert out.stdout.startswith("sha256:")
    assert dy("run", "--rm", "withcmd:1").stdout == "from-cmd\n"


def test_run_foreground_output_and_exit_code(dy: Dockyard) -> None:
    out = dy("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert out.returncode == 3
    assert out.stdout == "out\n" and out.stderr == "err\n"
    assert dy("ps", "-aq").stdout == ""  # --rm removed it


def test_run_options_reach_the_container(dy: Dockyard) -> None:
    out = dy(
        "run",
        "--rm",
        "-e",
        "GREETING=hi",
        "-w",
        "/tmp",
        "-u",
        "65534:65534",
        "-h",
        "box",
        "busybox",
        "sh",
        "-c",
        'echo "$GREETING $(pwd) $(id -u) $(hostname)"',
    )
    assert out.stdout == "hi /tmp 65534 box\n"
    out = dy("run", "--rm", "--read-only", "busybox", "touch", "/x", check=False)
    assert out.returncode != 0 and "Read-only file system" in out.stderr
    out = dy(
        "run", "--rm", "-m", "32m", "busybox", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    assert out.stdout.strip() == str(32 << 20)


def test_detached_lifecycle(dy: Dockyard) -> None:
    cid = dy(
        "run", "-d", "--name", "web", "busybox", "sh", "-c", "echo started; sleep 60"
    ).stdout.strip()
    assert len(cid) == 64
    ps = dy("ps").stdout.splitlines()
    assert len(ps) == 2 and ps[1].startswith(cid[:12]) and ps[1].endswith("web") and "Up " in ps[1]
    deadline = time.monotonic() + 5
    while "started" not in dy("logs", "web").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dy("logs", "web").stdout == "started\n"
    out = dy("rm", "web", check=False)
    assert out.returncode == 1 and "You cannot remove a running container" in out.stderr
    dy("stop", "-t", "1", "web")
    assert "Exited (137)" in dy("ps", "-a").stdout
    assert dy("ps", "-q").stdout == ""
    dy("start", "web")
    assert dy("ps", "-q").stdout.strip() == cid[:12]
    dy("kill", "web")
    assert dy("wait", "web").stdout.strip() == "137"
    dy("rm", "web")
    assert dy("ps", "-aq").stdout == ""


def test_survives_the_cli_being_gone(dy: Dockyard) -> None:
    cid = dy("run", "-d", "busybox", "sleep", "60").stdout.strip()
    # Nothing of the CLI is left running; the container still is, under its monitor.
    pid_file = dy.root / "containers" / cid / "monitor.pid"
    monitor = int(pid_file.read_text())
    os.kill(monitor, 0)
    assert "Up " in dy("ps").stdout
    dy("rm", "-f", cid)
    assert not (dy.root / "containers" / cid).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--pull", "never", "nosuchimage"], "No such image: nosuchimage"),
        (["run", "Bad:Ref"], "must be lowercase"),
        (["run", "-m", "lots", "busybox", "true"], 'invalid size: "lots"'),
        (["run", "--restart", "sometimes", "busybox", "true"], "invalid restart policy"),
        (["run", "--network", "nosuchnet", "busybox", "true"], "network nosuchnet not found"),
        (["run", "-p", "99999:80", "busybox", "true"], "invalid host port"),
        (["run", "-u", "alice", "busybox", "true"], "unable to find user alice"),
        (["run", "-u", "nobody:staff", "busybox", "true"], "unable to find group staff"),
        (["run", "busybox", "/no/such/binary"], "no such file or directory"),
        (["logs", "nosuch"], "No such container: nosuch"),
        (["stop", "nosuch"], "No such container: nosuch"),
        (["rmi", "nosuch"], "No such image: nosuch"),
        (["import", "/no/such.tar"], "No such file or directory"),
    ],
)
def test_user_errors_are_one_line(dy: Dockyard, args: list[str], message: str) -> None:
    out = dy(*args, check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert dy("ps", "-aq").stdout == ""  # nothing half-made left


def test_duplicate_name(dy: Dockyard) -> None:
    cid = dy("create", "--name", "one", "busybox", "true").stdout.strip()
    out = dy("create", "--name", "one", "busybox", "true", check=False)
    assert out.returncode == 1
    assert f'The container name "/one" is already in use by container "{cid}"' in out.stderr
    assert len(dy("ps", "-aq").stdout.split()) == 1
    out = dy("rmi", "busybox", check=False)
    assert out.returncode == 1 and "image is being used by container" in out.stderr
