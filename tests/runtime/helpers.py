"""Shared helpers for the functional tests of `dockyard-runtime` (real kernel, root).

`Runtime` runs the CLI through subprocess with a per-test `--root` state dir;
the `rt` fixture deletes (with --force) every container a test made and then
asserts that nothing is left behind: no cgroup, no mount, no process, no state.

Output goes to files, never pipes: a container started by `create` or `run -d`
inherits the CLI's stdout and stderr, and a pipe would keep `subprocess.run`
waiting until the container exits.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockyard.runtime.state import pid_start_time

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import test_images  # noqa: E402

CLI = str(Path(sys.executable).parent / "dockyard-runtime")
CGROUP_ROOT = "/sys/fs/cgroup"
TIMEOUT = 10.0

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@dataclass
class Result:
    """A finished CLI call; `out`/`err` are the files the call (and its container) write."""

    args: list[str]
    returncode: int
    out: Path
    err: Path

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def check(self) -> Result:
        assert self.returncode == 0, (
            f"{self.args} exited {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"
        )
        return self


def assert_one_line_error(res: Result) -> None:
    """A refused command: non-zero exit, one line on stderr, no traceback."""
    err = res.stderr
    assert res.returncode != 0, f"{res.args} succeeded: {res.stdout}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dockyard-runtime: "), err


def cgroup_dirs(cgroup_path: str) -> list[str]:
    """Directories of cgroup_path that exist in any hierarchy under /sys/fs/cgroup."""
    rel = cgroup_path.lstrip("/")
    return [d for d in glob.glob(f"{CGROUP_ROOT}/*/{rel}") if os.path.isdir(d)]


def mounts_containing(fragment: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.strip() for line in f if fragment in line.split(" - ")[0]]


def proc_state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat, or "" when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ""
    return raw[raw.rfind(b")") + 2 :].split()[0].decode()


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _alive(pid: int, start: int | None) -> bool:
    now = pid_start_time(pid)
    return now is not None and now == start


class Runtime:
    """The CLI with `--root` under the test's tmp_path, and what a test made with it."""

    def __init__(self, tmp_path: Path, image: test_images.BusyboxImage) -> None:
        self.tmp_path = tmp_path
        self.image = image
        self.root = tmp_path / "state"
        self.io = tmp_path / "io"
        self.io.mkdir(exist_ok=True)
        self.ids: list[str] = []
        self.pids: dict[int, int | None] = {}  # pid -> start time when first seen
        self._calls = 0

    # ------------------------------------------------------------ making things

    def new_id(self, prefix: str = "t") -> str:
        cid = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.ids.append(cid)
        return cid

    def bundle(
        self, args: Sequence[str] | None = None, name: str | None = None, **overrides: Any
    ) -> Path:
        dest = self.tmp_path / (name or f"bundle-{uuid.uuid4().hex[:6]}")
        return test_images.make_bundle(
            self.image, dest, args=list(args) if args is not None else None, **overrides
        )

    def track_pid(self, pid: int) -> None:
        if pid > 0 and pid not in self.pids:
            self.pids[pid] = pid_start_time(pid)

    # ------------------------------------------------------------ running the CLI

    def __call__(
        self,
        *args: str,
        timeout: float = TIMEOUT,
        cwd: Path | str | None = None,
        stdin: Any = subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
        root: bool = True,
        prefix: Sequence[str] = (),
    ) -> Result:
        """Run the CLI (after `prefix`, e.g. a shell that opens fds and execs it)."""
        self._calls += 1
        out = self.io / f"{self._calls:03d}.out"
        err = self.io / f"{self._calls:03d}.err"
        argv = [*prefix, CLI, *(["--root", str(self.root)] if root else []), *args]
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.run(
                argv,
                stdin=stdin,
                stdout=fo,
                stderr=fe,
                cwd=cwd,
                timeout=timeout,
                pass_fds=tuple(pass_fds),
                check=False,
            )
        return Result(argv, proc.returncode, out, err)

    def create(self, bundle: Path, cid: str | None = None, *extra: str) -> str:
        cid = cid or self.new_id()
        self("create", "--bundle", str(bundle), *extra, cid).check()
        self.track_pid(self.state(cid)["pid"])
        return cid

    def run_detached(self, bundle: Path, cid: str | None = None, *extra: str) -> str:
        cid = cid or self.new_id()
        self("run", "-d", "--bundle", str(bundle), *extra, cid).check()
        self.track_pid(self.state(cid)["pid"])
        return cid

    def run(self, bundle: Path, *extra: str, timeout: float = TIMEOUT) -> Result:
        """`run` in the foreground (the container is deleted when it exits)."""
        cid = self.new_id()
        return self("run", "--bundle", str(bundle), *extra, cid, timeout=timeout)

    def state(self, cid: str) -> dict[str, Any]:
        res = self("state", cid).check()
        doc: dict[str, Any] = json.loads(res.stdout)
        return doc

    def status(self, cid: str) -> str:
        return str(self.state(cid)["status"])

    def wait_status(self, cid: str, status: str, timeout: float = 5.0) -> None:
        assert wait_for(lambda: self.status(cid) == status, timeout), (
            f"{cid} is {self.status(cid)}, not {status}"
        )

    def sh(self, cid: str, script: str, *extra: str, timeout: float = TIMEOUT) -> Result:
        """`exec ID sh -c SCRIPT` in the foreground."""
        return self("exec", *extra, cid, "sh", "-c", script, timeout=timeout)

    # ------------------------------------------------------------ teardown

    def saved_state(self, cid: str) -> dict[str, Any] | None:
        try:
            raw: dict[str, Any] = json.loads((self.root / cid / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return raw

    def cleanup(self) -> list[str]:
        """Delete every container; return what was left behind (empty when clean)."""
        problems: list[str] = []
        cgroups: dict[str, str] = {}
        for cid in self.ids:
            saved = self.saved_state(cid)
            if saved:
                cgroups[cid] = saved.get("cgroup_path") or f"/dockyard/{cid}"
                self.track_pid(int(saved.get("pid") or 0))
            res = self("delete", "--force", cid, timeout=20)
            if res.returncode != 0:
                problems.append(f"delete --force {cid}: {res.stderr.strip()}")
        for cid in self.ids:
            for path in {cgroups.get(cid, f"/dockyard/{cid}"), f"/dockyard/{cid}"}:
                left = cgroup_dirs(path)
                if left:
                    problems.append(f"cgroup dirs left for {cid}: {left}")
            if (self.root / cid).exists():
                problems.append(f"state dir left for {cid}")
        mounts = mounts_containing(str(self.tmp_path))
        if mounts:
            problems.append(f"mounts left: {mounts}")

        for pid, start in self.pids.items():
            if not wait_for(lambda: not _alive(pid, start), timeout=3):  # noqa: B023
                problems.append(f"process {pid} still alive")
        return problems


@pytest.fixture(name="rt")
def rt_fixture(tmp_path: Path, busybox_image: test_images.BusyboxImage) -> Iterator[Runtime]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    runtime = Runtime(tmp_path, busybox_image)
    yield runtime
    problems = runtime.cleanup()
    assert not problems, "left behind:\n" + "\n".join(problems)
