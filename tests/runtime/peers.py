"""Helpers for the interop tests: run real peer tools (runc, umoci, podman) beside ours.

Every command has a timeout, and its output goes to files rather than pipes: a
container or a conmon started by a command may inherit its stdout and stderr,
and a pipe would keep the caller waiting until that process exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
DOCKYARD = str(VENV_BIN / "dockyard-runtime")
TIMEOUT = 20.0


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def require(name: str) -> str:
    """The path of peer binary `name`; skips the test if it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"peer tool `{name}` is not installed (not on PATH)")
    return path


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("interop tests run containers for real and need root")


def run(
    command: Sequence[str | os.PathLike[str]],
    timeout: float = TIMEOUT,
    cwd: str | Path | None = None,
    check: bool = False,
) -> Result:
    """Run `argv` with stdin from /dev/null, output to temp files; never longer than timeout."""
    argv = [str(a) for a in command]
    timed_out = False
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            code = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cwd,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code, timed_out = -9, True
        out.seek(0)
        err.seek(0)
        result = Result(
            argv, code, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        )
    if timed_out:
        result.stderr += f"\n[killed: timed out after {timeout}s]\n"
    if check and result.returncode != 0:
        raise AssertionError(f"command failed:\n{result.describe()}")
    return result


def run_in_pty(
    command: Sequence[str | os.PathLike[str]], timeout: float = TIMEOUT
) -> tuple[int, str]:
    """Run `argv` with a new pty as its controlling terminal and stdio; (status, output).

    The status is the exit code, or -1 if it had to be killed at the deadline.
    """
    argv = [str(a) for a in command]
    pid, master = pty.fork()
    if pid == 0:  # child: exec at once, never return into pytest
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                killed = True
                break
            ready, _, _ = select.select([master], [], [], min(left, 0.5))
            if not ready:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every slave fd is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(master)
    output = b"".join(chunks).decode(errors="replace")
    return (-1 if killed else os.waitstatus_to_exitcode(status)), output


# ------------------------------------------------------------------ bundles


def edit_config(bundle: Path, **process: Any) -> dict[str, Any]:
    """Set keys of process in bundle/config.json (e.g. args=[...], terminal=False)."""
    path = bundle / "config.json"
    spec: dict[str, Any] = json.loads(path.read_text())
    spec["process"].update(process)
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return spec


@dataclass
class Runtimes:
    """Our runtime and runc, each with a private state dir; deletes what it ran."""

    state: Path
    runc: str
    made: list[tuple[list[str], str]] = field(default_factory=list)

    def _base(self, which: str) -> list[str]:
        if which == "runc":
            return [self.runc, "--root", str(self.state / "runc")]
        return [DOCKYARD, "--root", str(self.state / "dockyard")]

    def run(self, which: str, bundle: Path, timeout: float = TIMEOUT) -> Result:
        cid = f"interop-{which}-{uuid.uuid4().hex[:10]}"
        base = self._base(which)
        self.made.append((base, cid))
        return run([*base, "run", "--bundle", str(bundle), cid], timeout=timeout)

    def cleanup(self) -> None:
        for base, cid in self.made:
            run([*base, "delete", "--force", cid], timeout=10)


# ------------------------------------------------------------------ podman


def _mount_points_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix) or point == str(path):
                found.append(point)
    return found


def _pids_mentioning(text: str) -> list[int]:
    """Pids of conmon processes whose command line mentions `text`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if comm == "conmon" and text in cmdline:
            pids.append(int(entry))
    return pids


@dataclass
class Podman:
    """podman with a private storage under `base`, driving dockyard-runtime."""

    binary: str
    base: Path
    runtime: str = DOCKYARD

    def global_flags(self) -> list[str]:
        return [
            "--root",
            str(self.base / "storage"),
            "--runroot",
            str(self.base / "run"),
            "--tmpdir",
            str(self.base / "tmp"),
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
            "--runtime",
            self.runtime,
        ]

    def argv(self, *args: str) -> list[str]:
        return [self.binary, *self.global_flags(), *args]

    def __call__(self, *args: str, timeout: float = TIMEOUT) -> Result:
        return run(self.argv(*args), timeout=timeout)

    def teardown(self) -> list[str]:
        """Remove every container and image, kill leftovers, unmount; returns problems."""
        problems = []
        for args in (("rm", "-af", "-t", "0"), ("rmi", "-af")):
            res = self(*args, timeout=60)
            if res.returncode != 0:
                problems.append(res.describe())
        for pid in _pids_mentioning(str(self.base)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            problems.append(f"conmon {pid} was left running")
        for point in sorted(_mount_points_under(self.base), key=len, reverse=True):
            res = run(["umount", "-R", point], timeout=10)
            if res.returncode != 0 and point in _mount_points_under(self.base):
                run(["umount", "-l", point], timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)
        return problems
