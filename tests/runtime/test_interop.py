"""Interop with real peers: bundles made by runc and umoci, podman driving us, runc parity.

Root only (they run containers for real). A test is skipped only when its peer
binary is missing; the busybox image comes from tests/conftest.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scripts import test_images

from tests.runtime.peers import (
    Podman,
    Result,
    Runtimes,
    edit_config,
    needs_root,
    require,
    run,
    run_in_pty,
)

pytestmark = pytest.mark.peer

IMAGE = "localhost/busybox-dockyard:test"

# This machine's hard rlimits are low (nofile 20000): podman's defaults (nofile
# 1048576, nproc from the host) can't be set without CAP_SYS_RESOURCE over them.
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")


@pytest.fixture
def runtimes(tmp_path: Path) -> Iterator[Runtimes]:
    needs_root()
    rts = Runtimes(state=tmp_path / "state", runc=require("runc"))
    yield rts
    rts.cleanup()


def _both(rts: Runtimes, bundle: Path) -> tuple[Result, Result]:
    return rts.run("dockyard", bundle), rts.run("runc", bundle)


# ------------------------------------------------------------------ 1. runc spec


def test_runc_spec_bundle_runs_unchanged(
    tmp_path: Path, runtimes: Runtimes, busybox_image: test_images.BusyboxImage
) -> None:
    bundle = tmp_path / "runc-spec"
    bundle.mkdir()
    run([runtimes.runc, "spec"], cwd=bundle, check=True)
    shutil.copytree(busybox_image.rootfs, bundle / "rootfs", symlinks=True)
    edit_config(bundle, terminal=False, args=["sh", "-c", "echo ok; exit 5"])

    ours, theirs = _both(runtimes, bundle)
    assert (ours.returncode, ours.stdout) == (5, "ok\n"), ours.describe()
    assert (theirs.returncode, theirs.stdout) == (5, "ok\n"), theirs.describe()


# ------------------------------------------------------------------ 2. umoci unpack


def test_umoci_unpacked_bundle_runs(
    tmp_path: Path, runtimes: Runtimes, busybox_image: test_images.BusyboxImage
) -> None:
    umoci = require("umoci")
    layout, image = tmp_path / "layout", f"{tmp_path / 'layout'}:t"
    # An OCI image from the plain rootfs, offline: an empty image, unpacked, filled
    # with the busybox files, repacked as a layer, then given a command.
    run([umoci, "init", "--layout", layout], check=True)
    run([umoci, "new", "--image", image], check=True)
    scratch = tmp_path / "scratch"
    run([umoci, "unpack", "--image", image, scratch], check=True)
    shutil.copytree(busybox_image.rootfs, scratch / "rootfs", symlinks=True, dirs_exist_ok=True)
    run([umoci, "repack", "--image", image, scratch], check=True)
    cmd = ["--config.cmd=sh", "--config.cmd=-c", "--config.cmd=echo umoci-ok; id -u"]
    run([umoci, "config", "--image", image, *cmd], check=True)

    bundle = tmp_path / "bundle2"
    run([umoci, "unpack", "--image", image, bundle], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"] == ["sh", "-c", "echo umoci-ok; id -u"]
    # umoci's config asks for a terminal; without a console socket there is none.
    edit_config(bundle, terminal=False)

    res = runtimes.run("dockyard", bundle)
    assert (res.returncode, res.stdout) == (0, "umoci-ok\n0\n"), res.describe()


# ------------------------------------------------------------------ 3. podman


@pytest.fixture(scope="module")
def podman(
    tmp_path_factory: pytest.TempPathFactory, busybox_image: test_images.BusyboxImage
) -> Iterator[Podman]:
    needs_root()
    pm = Podman(binary=require("podman"), base=tmp_path_factory.mktemp("podman"))
    require("conmon")
    try:
        res = pm("import", str(busybox_image.tar), IMAGE, timeout=60)
        assert res.returncode == 0, f"podman import failed:\n{res.describe()}"
        yield pm
    finally:
        problems = pm.teardown()
    assert not problems, "podman teardown:\n" + "\n".join(problems)


def test_podman_run_rm(podman: Podman) -> None:
    res = podman("run", "--rm", *ULIMITS, IMAGE, "echo", "ok")
    assert (res.returncode, res.stdout) == (0, "ok\n"), f"podman failed:\n{res.describe()}"


def test_podman_maps_missing_executable_to_127(podman: Podman) -> None:
    # podman reads the runtime's error (stderr / --log) and, like docker, exits 127
    # when it says "no such file or directory" or "executable file not found".
    res = podman("run", "--rm", *ULIMITS, IMAGE, "/nonexistent")
    assert res.returncode == 127 and "/nonexistent" in res.stderr, res.describe()
    res = podman("run", "--rm", *ULIMITS, IMAGE, "nonexistent")
    assert res.returncode == 127 and "nonexistent" in res.stderr, res.describe()


def test_podman_detached_exec_stop_rm(podman: Podman) -> None:
    res = podman("run", "-d", *ULIMITS, IMAGE, "sleep", "60")
    assert res.returncode == 0, f"podman run -d failed:\n{res.describe()}"
    ctr = res.stdout.strip()
    try:
        res = podman("exec", ctr, "echo", "hi")
        assert (res.returncode, res.stdout) == (0, "hi\n"), f"podman exec:\n{res.describe()}"
        res = podman("inspect", "--format", "{{.State.Status}}", ctr)
        assert res.stdout.strip() == "running", res.describe()
        # sleep is pid 1 and ignores SIGTERM: stop falls back to SIGKILL after 2 s.
        res = podman("stop", "-t", "2", ctr)
        assert res.returncode == 0, f"podman stop failed:\n{res.describe()}"
        res = podman("inspect", "--format", "{{.State.Status}}", ctr)
        assert res.stdout.strip() == "exited", res.describe()
        res = podman("rm", ctr)
        assert res.returncode == 0, f"podman rm failed:\n{res.describe()}"
        assert podman("container", "exists", ctr).returncode == 1
    finally:
        podman("rm", "-f", "-t", "0", ctr)


def test_podman_tty_through_console_socket(podman: Podman) -> None:
    argv = podman.argv("run", "--rm", "-it", *ULIMITS, IMAGE, "sh", "-c", "tty")
    status, output = run_in_pty(argv)
    assert status == 0 and "/dev/pts/" in output, f"podman -it (exit {status}) printed:\n{output!r}"


# ------------------------------------------------------------------ 4. runc parity


def _mount_points(text: str) -> list[str]:
    return sorted(text.split())


@pytest.mark.parametrize(
    ("script", "normalise"),
    [
        pytest.param("cat /proc/self/status | grep Cap", None, id="capabilities"),
        pytest.param("ls /dev", None, id="dev"),
        pytest.param(
            "cat /proc/self/mountinfo | awk '{print $5}'", _mount_points, id="mount-points"
        ),
    ],
)
def test_same_view_as_runc(
    runtimes: Runtimes, bundle: Path, script: str, normalise: Callable[[str], list[str]] | None
) -> None:
    edit_config(bundle, args=["sh", "-c", script])
    ours, theirs = _both(runtimes, bundle)
    assert ours.returncode == 0, ours.describe()
    assert theirs.returncode == 0, theirs.describe()
    assert ours.stdout.strip(), ours.describe()
    if normalise is not None:  # the order of mounts may differ, the set may not
        assert normalise(ours.stdout) == normalise(theirs.stdout)
    else:
        assert ours.stdout == theirs.stdout
