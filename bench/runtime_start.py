"""Start-up cost of dockyard-runtime against runc: `run --bundle B ID` of `/bin/true`.

Both runtimes run the same busybox bundle, alternating (and swapping which
goes first each round, so neither always gets the warmer cache), each run with
a fresh id. The wall time of `run` is timed; `delete --force` afterwards is
not. Peak RSS is measured in separate, untimed runs under GNU time (`%M`):
ru_maxrss of a child forked straight from this Python process would start at
this process's own RSS (the kernel carries the high-water mark across fork and
exec), so a small C parent has to do the forking.

    bench/runtime_start.py --cache /var/cache/dockyard-test [--runs 30]
        [--runtime PATH] [--peer runc] [--markdown]

With --markdown the readable report goes to stderr and stdout gets one table
row for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO

# Run as a script, only bench/ is on sys.path; the repo root makes `scripts` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.test_images import DEFAULT_CACHE, busybox_image, make_bundle

DELETE_TIMEOUT = 30.0
TIME = "/usr/bin/time"  # GNU time (Debian package `time`)
RSS_RUNS = 5


class BenchError(Exception):
    """The benchmark could not run; the message is what the user reads."""


@dataclass
class Runtime:
    name: str
    path: Path
    seconds: list[float] = field(default_factory=list)
    max_rss_kib: int = 0

    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    def p90_ms(self) -> float:
        if len(self.seconds) < 2:
            return self.median_ms()
        return statistics.quantiles(self.seconds, n=10, method="inclusive")[8] * 1000

    def rss_mib(self) -> float:
        return self.max_rss_kib / 1024


def default_runtime() -> Path:
    # Next to the interpreter, unresolved: the venv's bin/, not /usr/bin.
    return Path(sys.executable).parent / "dockyard-runtime"


def resolve(program: str | Path) -> Path:
    found = shutil.which(str(program))
    if found is None:
        raise BenchError(f"runtime not found: {program}")
    return Path(found)


def delete(rt: Runtime, cid: str) -> None:
    subprocess.run(
        [str(rt.path), "delete", "--force", cid],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=DELETE_TIMEOUT,
        check=False,
    )


def peak_rss_kib(rt: Runtime, bundle: Path, cid: str) -> int:
    """Peak RSS (KiB) of `run` and the descendants it waited for, via GNU time."""
    delete(rt, cid)
    try:
        proc = subprocess.run(
            [TIME, "-f", "%M", str(rt.path), "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            capture_output=False,
            stderr=subprocess.PIPE,
            timeout=DELETE_TIMEOUT,
            check=False,
        )
    finally:
        delete(rt, cid)
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].isdigit():
        raise BenchError(f"`time {rt.name} run` failed: {' '.join(lines)}")
    return int(lines[-1])


def timed_run(rt: Runtime, bundle: Path, cid: str, errors: IO[bytes]) -> float:
    """One `run`: its wall time in seconds; BenchError if it fails."""
    errors.seek(0)
    errors.truncate()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(rt.path), "run", "--bundle", str(bundle), cid],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=errors,  # a file, not a pipe: a chatty runtime can never block on it
    )
    _, status = os.waitpid(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        errors.seek(0)
        message = errors.read().decode(errors="replace").strip()
        raise BenchError(f"`{rt.name} run` exited {proc.returncode}:\n{message}")
    return elapsed


def one_run(rt: Runtime, bundle: Path, cid: str, errors: IO[bytes], record: bool) -> None:
    delete(rt, cid)  # a leftover of that id (from a crashed bench) would make `run` fail
    try:
        elapsed = timed_run(rt, bundle, cid, errors)
    finally:
        delete(rt, cid)
    if record:
        rt.seconds.append(elapsed)


def bench(runtimes: list[Runtime], bundle: Path, runs: int, warmup: int) -> None:
    tag = f"bench-{os.getpid()}"
    with tempfile.TemporaryFile() as errors:
        for i in range(warmup + runs):
            # Swap the order each round so neither runtime always runs second.
            order = runtimes if i % 2 == 0 else runtimes[::-1]
            for j, rt in enumerate(order):
                one_run(rt, bundle, f"{tag}-{i}-{j}", errors, record=i >= warmup)
    for rt in runtimes:
        for i in range(RSS_RUNS):
            rss = peak_rss_kib(rt, bundle, f"{tag}-rss-{i}")
            rt.max_rss_kib = max(rt.max_rss_kib, rss)


# ---------------------------------------------------------------- report


def ratio(ours: Runtime, peer: Runtime) -> float:
    return ours.median_ms() / peer.median_ms()


def report(runtimes: list[Runtime], runs: int, out: IO[str]) -> None:
    print(f"runtime_start: `run` of /bin/true in a busybox bundle, {runs} runs each", file=out)
    print(f"  {'runtime':20} {'median':>10} {'p90':>10} {'peak RSS':>10}", file=out)
    for rt in runtimes:
        print(
            f"  {rt.name:20} {rt.median_ms():7.1f} ms {rt.p90_ms():7.1f} ms "
            f"{rt.rss_mib():6.1f} MiB",
            file=out,
        )
    ours, peer = runtimes
    print(f"  ratio {ours.name}/{peer.name} (median): {ratio(ours, peer):.2f}x", file=out)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU, Linux {platform.release()}"


def markdown_row(runtimes: list[Runtime], runs: int) -> str:
    """| date | machine | runs | ours median/p90 | peer median/p90 | ratio | peak RSS ours/peer |"""
    ours, peer = runtimes
    cells = [
        date.today().isoformat(),
        machine(),
        str(runs),
        f"{ours.name} {ours.median_ms():.1f} / {ours.p90_ms():.1f} ms",
        f"{peer.name} {peer.median_ms():.1f} / {peer.p90_ms():.1f} ms",
        f"{ratio(ours, peer):.2f}x",
        f"{ours.rss_mib():.1f} / {peer.rss_mib():.1f} MiB",
    ]
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start-up time of dockyard-runtime vs runc.")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="test image cache")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per runtime")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per runtime first")
    parser.add_argument("--runtime", type=Path, default=default_runtime(), help="runtime measured")
    parser.add_argument("--peer", default="runc", help="runtime compared against")
    parser.add_argument("--markdown", action="store_true", help="print a RESULTS.md table row")
    opts = parser.parse_args(argv)
    if opts.runs < 1:
        parser.error("--runs must be at least 1")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        ours_path, peer_path = resolve(opts.runtime), resolve(opts.peer)
        # Tell them apart in the report even when both are the same binary.
        peer_name = peer_path.name if peer_path != ours_path else f"{peer_path.name} (peer)"
        runtimes = [Runtime(ours_path.name, ours_path), Runtime(peer_name, peer_path)]
        image = busybox_image(opts.cache)
        with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
            bundle = make_bundle(image, Path(tmp) / "bundle", ["/bin/true"])
            bench(runtimes, bundle, opts.runs, opts.warmup)
    except BenchError as exc:
        print(f"runtime_start: {exc}", file=sys.stderr)
        return 1
    report(runtimes, opts.runs, sys.stderr if opts.markdown else sys.stdout)
    if opts.markdown:
        print(markdown_row(runtimes, opts.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
