"""`dockyard build` against `docker build` (classic builder) and `buildah bud --layers`.

A generated context (deterministic, the same on every run): 10,000 small C-like
source files in nested directories (`src/pkgNN/modNN/fileNNN.c`, 10 x 10 x 100,
5.5 MB) and a two-stage Dockerfile of a realistic shape:

    FROM bench-debian:bookworm AS build
    WORKDIR /opt/toolchain
    RUN   a shell loop writing 2,000 small headers       (the "dependencies" step)
    COPY  src/ /src/                                      (the 10,000 files)
    RUN   cp -a /src /build; manifest, symbol list, gzip bundle, sha256sum
    FROM bench-debian:bookworm
    COPY --from=build /out/ /app/     and one header
    CMD

The base is the project's Debian bookworm image (scripts/debian_images.py, a
debootstrap minbase rootfs tar in the --cache directory), imported into each
tool under the same name before anything is timed: `dockyard import`, `docker
import`, and for buildah `from scratch` + `add` of the tar + `commit`.

After one untimed --no-cache build per tool (warm page cache, .pyc files,
daemon), three scenarios, each timed for every tool in turn (one round = cold,
then no-change, then one-file-change; `--runs` rounds, medians reported; the
tools' order reversed every other round; `sync` before every timed build,
untimed):

    cold        --no-cache (the base image present, the step cache ignored)
    no change   the same context again (every step should come from the cache)
    one file    one source file's content changed (COPY and what follows rerun)

The tools: dockyard (`--root` in the temp dir); Debian's docker.io with
DOCKER_BUILDKIT=0 against a private dockerd (bench/run_latency.py's: own data
root, exec root, pidfile and socket, no bridge, no iptables; overlay2, vfs as a
fallback); buildah with its own --root/--runroot, `--layers`, `--isolation oci`
with runc, overlay (vfs as a fallback). Every tool builds with the same
`--network` (default `none`: RUN steps get a network namespace with only lo,
as nothing here needs the network; `host` is the other choice), so none pays
for a bridge and the host's network is not touched. Everything is made under
one temp dir and removed at the end, also on failure or SIGINT/SIGTERM: the
dockerd stopped (its containerd and shims killed, mounts unmounted), buildah's
containers and images removed and its mounts unmounted, the dockyard root's
containers, bridge and nft table (if any were made) removed. At the end the
MANIFEST and symbols lines of each tool's /app/SHA256SUMS are compared (the
same work was done). Each build has a time limit (--timeout), so has the
whole run (--max-minutes).

    bench/build.py --cache /var/cache/dockyard-test [--runs 3] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.netbench import HostNet, clean_up_on_signals, cleanup_root
from bench.run_latency import (
    DOCKER,
    DOCKERD,
    DOCKERD_HOST_PATHS,
    cleanup_private_dockerd,
    mounts_under,
    remove_created,
    start_dockerd,
    stop_private_dockerd,
)
from scripts.debian_images import DEBIAN_CHANGES, DEFAULT_CACHE, debian_base

DOCKYARD = str(Path(sys.executable).parent / "dockyard")
BUILDAH = "/usr/bin/buildah"
RUNC = "/usr/sbin/runc"
BASE = "bench-debian:bookworm"
TAG = "bench-build:latest"
SEED = 20261125
FIXED_MTIME = 1_700_000_000
PKGS, MODS, FILES = 10, 10, 100  # 10,000 source files
SETUP_TIMEOUT = 600.0
SCENARIOS = ("cold", "no change", "one file")
PEERS = ("docker", "buildah")
GOALS = {"cold": 1.0, "no change": 0.5, "one file": 0.7}  # dockyard / docker
# "Step 3/9 : RUN …" (docker classic, dockyard's classic builder), "[1/2] STEP 3/5: RUN …"
# (buildah), "#7 [build 3/5] RUN …" (BuildKit's plain progress: the first line of each vertex).
STEP_RE = re.compile(r"^(?:\[\d+/\d+\] )?(?:Step|STEP) (\d+)/\d+ ?: ?(.*)$")
VERTEX_RE = re.compile(r"^#(\d+) (.*)$")
CACHED_RE = re.compile(r"Using cache|^#\d+ CACHED$")

DOCKERFILE = """\
FROM bench-debian:bookworm AS build
WORKDIR /opt/toolchain
RUN set -e; mkdir -p include lib; i=0; \\
    while [ $i -lt 2000 ]; do \\
        printf '#ifndef TOOL_%d_H\\n#define TOOL_%d_H %d\\nint tool_%d(int);\\n#endif\\n' \\
            $i $i $i $i > include/tool$i.h; \\
        i=$((i+1)); \\
    done; \\
    ls include | wc -l > lib/count
COPY src/ /src/
RUN set -e; mkdir -p /out; cp -a /src /build; cd /build; \\
    find . -type f -name '*.c' | sort > /out/MANIFEST; \\
    xargs sed -n 's/^int \\([a-z_0-9]*\\)(.*/\\1/p' < /out/MANIFEST | sort > /out/symbols; \\
    xargs cat < /out/MANIFEST | gzip -1 > /out/bundle.gz; \\
    cd /out; sha256sum MANIFEST symbols bundle.gz > SHA256SUMS

FROM bench-debian:bookworm
COPY --from=build /out/ /app/
COPY --from=build /opt/toolchain/include/tool42.h /app/include/
CMD ["cat", "/app/SHA256SUMS"]
"""


class BenchError(Exception):
    """The benchmark could not run; the message is what the user reads."""


def run(argv: list[str], timeout: float = SETUP_TIMEOUT, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"{' '.join(argv)}: no end after {timeout:.0f} s") from err
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise BenchError(f"{' '.join(argv)} failed ({proc.returncode}): {tail}")
    return proc.stdout.decode(errors="replace")


# ---------------------------------------------------------------- the context


def source_file(rng: random.Random, pkg: int, mod: int, num: int) -> str:
    """A small C-like source file (~0.4-1.5 kB), seeded."""
    name = f"p{pkg:02d}_m{mod:02d}_f{num:03d}"
    lines = [f"/* pkg{pkg:02d}/mod{mod:02d}/file{num:03d}.c */", '#include "common.h"', ""]
    for fn in range(rng.randint(2, 6)):
        lines.append(f"int {name}_{fn}(int x)")
        lines.append("{")
        for _ in range(rng.randint(1, 5)):
            op = rng.choice("+-*^|&")
            lines.append(f"    x = (x {op} {rng.randint(1, 1 << 16)}) % {rng.randint(3, 997)};")
        lines += ["    return x;", "}", ""]
    return "\n".join(lines)


def write_context(ctx: Path) -> int:
    """The Dockerfile and the 10,000 source files; returns their total size."""
    rng = random.Random(SEED)
    total = 0
    (ctx / "Dockerfile").parent.mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    for pkg in range(PKGS):
        for mod in range(MODS):
            d = ctx / "src" / f"pkg{pkg:02d}" / f"mod{mod:02d}"
            d.mkdir(parents=True)
            for num in range(FILES):
                path = d / f"file{num:03d}.c"
                text = source_file(rng, pkg, mod, num)
                path.write_text(text)
                os.utime(path, (FIXED_MTIME, FIXED_MTIME))
                total += len(text)
    return total


def changed_file(ctx: Path) -> Path:
    return ctx / "src" / "pkg04" / "mod07" / "file042.c"


def change_one_file(ctx: Path, generation: int) -> None:
    """New content (same size class, same mtime) in one source file."""
    path = changed_file(ctx)
    text = path.read_text().split("\n/* generation", 1)[0]
    path.write_text(f"{text}\n/* generation {generation} */\n")
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))


# ---------------------------------------------------------------- timing a build


@dataclass
class Build:
    seconds: float
    steps: list[tuple[str, float]]  # ("context" or the instruction, seconds)
    cached: int  # steps that said they used the cache


def step_times(lines: list[tuple[float, str]], start: float, end: float) -> list[tuple[str, float]]:
    """Wall time from each "Step N/M : INSTR" line to the next (before the first: context)."""
    marks: list[tuple[str, float]] = [("context", start)]
    vertices: set[str] = set()
    for stamp, line in lines:
        m = STEP_RE.match(line.strip())
        if m:
            marks.append((m.group(2)[:60], stamp))
            continue
        m = VERTEX_RE.match(line.strip())
        if m and m.group(1) not in vertices:
            vertices.add(m.group(1))
            marks.append((re.sub(r"^\[[^]]*\] ", "", m.group(2))[:60], stamp))
    marks.append(("end", end))
    return [(marks[i][0], marks[i + 1][1] - marks[i][1]) for i in range(len(marks) - 1)]


def timed_build(argv: list[str], env: dict[str, str], timeout: float) -> Build:
    """Run a build, time stamping its output lines; killed (with its group) after `timeout`."""
    subprocess.run(["sync"], timeout=120, check=False)
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    lines: list[tuple[float, str]] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append((time.perf_counter(), raw.decode(errors="replace").rstrip("\n")))
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            kill()
            proc.wait(10)
    end = time.perf_counter()
    if code != 0:
        tail = "\n".join(text for _, text in lines[-15:])
        why = f"killed after {timeout:.0f} s" if end - start >= timeout else f"exit {code}"
        raise BenchError(f"{' '.join(argv)} failed ({why}):\n{tail}")
    cached = sum(1 for _, text in lines if CACHED_RE.search(text.strip()))
    return Build(end - start, step_times(lines, start, end), cached)


# ---------------------------------------------------------------- the tools


@dataclass
class Tool:
    name: str
    argv: list[str]  # up to and including the build verb and its fixed flags
    env: dict[str, str]
    note: str
    builds: dict[str, list[Build]] = field(default_factory=dict)

    def build(self, ctx: Path, no_cache: bool, timeout: float, network: str) -> Build:
        flags = ["--network", network, *(["--no-cache"] if no_cache else [])]
        argv = [*self.argv, *flags, "-t", TAG, str(ctx)]
        return timed_build(argv, self.env, timeout)


def dockyard_tool(root: Path, tar: Path, env: dict[str, str]) -> Tool:
    dockyard = [DOCKYARD, "--root", str(root)]
    changes = [arg for change in DEBIAN_CHANGES for arg in ("--change", change)]
    run([*dockyard, "import", *changes, str(tar), BASE], env=env)
    return Tool("dockyard", [*dockyard, "build"], env, f"dockyard, root {root.name}/")


@contextlib.contextmanager
def docker_tool(base: Path, tar: Path, env: dict[str, str], notes: list[str]) -> Iterator[Tool]:
    """A private dockerd under `base` (stopped, its mounts and dirs removed after)."""
    if not (os.path.exists(DOCKER) and os.path.exists(DOCKERD)):
        raise BenchError("Debian's docker.io is not installed (make bench-deps)")
    private = base / "docker"
    absent = [p for p in DOCKERD_HOST_PATHS if not os.path.lexists(p)]
    proc = None
    try:
        driver = ""
        for driver in ("overlay2", "vfs"):
            proc = start_dockerd(private, driver)
            if proc:
                break
            cleanup_private_dockerd(private)
        if not proc:
            raise BenchError("the private dockerd did not start")
        host = f"unix://{private / 'docker.sock'}"
        docker = [DOCKER, "-H", host]
        changes = [arg for change in DEBIAN_CHANGES for arg in ("--change", change)]
        run([*docker, "import", *changes, str(tar), BASE], env=env)
        version = run([*docker, "version", "--format", "{{.Server.Version}}"], 30, env).strip()
        notes.append(f"docker: private dockerd {version}, {driver}, classic builder")
        yield Tool(
            "docker",
            [*docker, "build"],
            {**env, "DOCKER_BUILDKIT": "0"},
            f"docker {version} classic builder, {driver}",
        )
    finally:
        stop_private_dockerd(proc, private)
        remove_created(absent)


@contextlib.contextmanager
def buildah_tool(base: Path, tar: Path, env: dict[str, str], notes: list[str]) -> Iterator[Tool]:
    """buildah with its own storage under `base` (its containers and mounts removed after)."""
    if not os.path.exists(BUILDAH):
        raise BenchError(f"{BUILDAH} is missing (apt-get install buildah)")
    env = {**env, "TMPDIR": str(base / "buildah-tmp")}
    Path(env["TMPDIR"]).mkdir(parents=True, exist_ok=True)
    buildah: list[str] = []
    try:
        driver = ""
        for driver in ("overlay", "vfs"):
            buildah = [
                BUILDAH,
                "--root",
                str(base / f"buildah-{driver}"),
                "--runroot",
                str(base / f"buildah-run-{driver}"),
                "--storage-driver",
                driver,
            ]
            try:
                ctr = run([*buildah, "from", "scratch"], env=env).strip()
                run([*buildah, "add", ctr, str(tar), "/"], env=env)
                config = ["--env", DEBIAN_CHANGES[0].split(" ", 1)[1], "--cmd", "bash"]
                run([*buildah, "config", *config, ctr], env=env)
                run([*buildah, "commit", "--rm", "-q", ctr, BASE], env=env)
                break
            except BenchError as err:
                notes.append(f"buildah: {driver} did not work: {str(err)[:300]}")
                remove_buildah(buildah, env)
                buildah = []
        if not buildah:
            raise BenchError("buildah: no storage driver worked")
        version = run([BUILDAH, "--version"], 30, env).split()[2]
        notes.append(f"buildah: {version}, storage {driver}, --isolation oci with runc, --layers")
        flags = ["--layers", "--isolation", "oci", "--runtime", RUNC]
        yield Tool(
            "buildah",
            [*buildah, "bud", *flags, "--pull=never"],
            env,
            f"buildah {version} bud --layers, oci/runc, {driver}",
        )
    finally:
        if buildah:
            remove_buildah(buildah, env)


def remove_buildah(buildah: list[str], env: dict[str, str]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run([*buildah, "rm", "--all"], capture_output=True, timeout=120, env=env)
        subprocess.run([*buildah, "rmi", "-a", "-f"], capture_output=True, timeout=300, env=env)
    root = Path(buildah[buildah.index("--root") + 1])
    runroot = Path(buildah[buildah.index("--runroot") + 1])
    for directory in (runroot, root):
        for point in mounts_under(directory):
            if subprocess.run(["umount", point], capture_output=True).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------- the benchmark


def measure(
    tools: list[Tool], ctx: Path, runs: int, timeout: float, deadline: float, network: str
) -> None:
    """`runs` rounds of cold, no-change and one-file builds, the tools in turn."""
    for tool in tools:  # a first, untimed build: page cache, .pyc files, daemons warm
        b = tool.build(ctx, True, timeout, network)
        print(f"  warm-up   {tool.name:<8} {b.seconds:7.2f} s", file=sys.stderr, flush=True)
        tool.builds = {s: [] for s in SCENARIOS}
    for round_no in range(1, runs + 1):
        for scenario in SCENARIOS:
            if scenario == "one file":
                change_one_file(ctx, round_no)
            order = tools if round_no % 2 else list(reversed(tools))
            for tool in order:
                if time.monotonic() > deadline:
                    raise BenchError("the time limit (--max-minutes) ran out")
                b = tool.build(ctx, scenario == "cold", timeout, network)
                tool.builds[scenario].append(b)
                print(
                    f"  round {round_no} {scenario:<9} {tool.name:<8} {b.seconds:7.2f} s"
                    f" ({b.cached} steps from cache)",
                    file=sys.stderr,
                    flush=True,
                )


def check_outputs(tools: list[Tool], notes: list[str]) -> None:
    """The last build's /app/SHA256SUMS from each tool: its MANIFEST and symbols lines
    (deterministic; the gzip bundle's header need not be) must be the same."""
    found: dict[str, str] = {}
    for tool in tools:
        try:
            if tool.name == "buildah":
                cli = tool.argv[: tool.argv.index("bud")]
                ctr = run([*cli, "from", "--pull=never", TAG], env=tool.env).strip()
                try:
                    mounted = Path(run([*cli, "mount", ctr], env=tool.env).strip())
                    text = (mounted / "app" / "SHA256SUMS").read_text()
                finally:
                    subprocess.run([*cli, "umount", ctr], capture_output=True, env=tool.env)
                    subprocess.run([*cli, "rm", ctr], capture_output=True, env=tool.env)
            else:
                cli = tool.argv[: tool.argv.index("build")]
                cat = ["run", "--rm", "--network", "none", TAG, "cat", "/app/SHA256SUMS"]
                text = run([*cli, *cat], env=tool.env)
        except (BenchError, OSError) as err:
            notes.append(f"WARNING: {tool.name}: cannot read the built /app/SHA256SUMS: {err}")
            continue
        found[tool.name] = "".join(sorted(ln for ln in text.splitlines() if "bundle" not in ln))
    if len(set(found.values())) > 1:
        notes.append(f"WARNING: the images differ in /app/SHA256SUMS: {found}")
    elif found:
        notes.append(f"built /app/MANIFEST and /app/symbols identical in {', '.join(found)}")


# Parent cgroups dockerd (cgroupfs driver) and buildah's runc containers make and leave.
CGROUP_PARENTS = ("docker", "libpod_parent")


def cgroup_dirs() -> set[Path]:
    """Which of CGROUP_PARENTS exist now, in each v1 hierarchy (or v2)."""
    root = Path("/sys/fs/cgroup")
    found = {root / name for name in CGROUP_PARENTS}
    found |= {h / name for h in root.iterdir() if h.is_dir() for name in CGROUP_PARENTS}
    return {p for p in found if p.is_dir()}


def remove_new_cgroups(before: set[Path], notes: list[str]) -> None:
    """Those made during the run, with their (empty) children; busy ones stay."""
    removed = 0
    for path in cgroup_dirs() - before:
        children = [p for p in path.glob("**/") if p != path]
        for cgroup in [*sorted(children, key=lambda p: len(p.parts), reverse=True), path]:
            try:
                cgroup.rmdir()
                removed += 1
            except OSError:
                pass
    if removed:
        notes.append(f"removed {removed} empty cgroup(s) made during the run")


def median_build(builds: list[Build]) -> Build:
    return sorted(builds, key=lambda b: b.seconds)[len(builds) // 2]


def median(tool: Tool, scenario: str) -> float:
    return statistics.median(b.seconds for b in tool.builds[scenario])


def report(tools: list[Tool], notes: list[str], files: int, size: int, runs: int) -> None:
    by = {t.name: t for t in tools}
    print(f"context: {files} source files, {size / 1e6:.1f} MB; medians of {runs} runs")
    header = f"  {'scenario':<10}" + "".join(f"{t.name:>10}" for t in tools)
    peers = [p for p in ("docker", "buildah") if p in by]
    header += "".join(f"{'/' + p:>12}" for p in peers) + "   goal (/docker)"
    print(header)
    for scenario in SCENARIOS:
        line = f"  {scenario:<10}" + "".join(f"{median(t, scenario):>9.2f}s" for t in tools)
        for peer in peers:
            ratio = median(by["dockyard"], scenario) / median(by[peer], scenario)
            line += f"{ratio:>11.2f}x"
        if "docker" in by:
            ratio = median(by["dockyard"], scenario) / median(by["docker"], scenario)
            met = "met" if ratio <= GOALS[scenario] else "NOT met"
            line += f"   <= {GOALS[scenario]:.1f}x: {met}"
        print(line)
    print("where the median build's time went (s, from each step's line to the next):")
    for scenario in SCENARIOS:
        for tool in tools:
            b = median_build(tool.builds[scenario])
            parts = [f"{name.split(' ', 1)[0]} {sec:.2f}" for name, sec in b.steps]
            print(f"  {scenario:<9} {tool.name:<8} {b.seconds:6.2f}: " + " | ".join(parts))
    for note in notes:
        print(f"  {note}")


def markdown_row(tools: list[Tool], load_start: float, note: str) -> str:
    by = {t.name: t for t in tools}
    uname = os.uname()
    cells = [
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        f"{uname.machine}, {os.cpu_count()} CPU, Linux {uname.release}",
        str(len(by["dockyard"].builds["cold"])),
    ]
    for scenario in SCENARIOS:
        values = [f"{median(by[n], scenario):.2f}" if n in by else "-" for n in by]
        cells.append(" / ".join(values) + " s")
    for scenario in SCENARIOS:
        mine = median(by["dockyard"], scenario)
        ratios = [f"{mine / median(by[p], scenario):.2f}x" if p in by else "-" for p in PEERS]
        cells.append(" / ".join(ratios))
    cells += [f"{load_start:.2f} / {os.getloadavg()[0]:.2f}", note]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    # As bench/run_latency.py: dockyard runs from its .pyc files, not recompiling each time.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--runs", type=int, default=3, help="rounds (1-20, default 3)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per build (s)")
    parser.add_argument("--max-minutes", type=float, default=90.0, help="the whole run")
    parser.add_argument(
        "--network", choices=("none", "host"), default="none", help="of RUN steps, every tool"
    )
    parser.add_argument("--tools", default="dockyard,docker,buildah")
    parser.add_argument("--markdown", action="store_true", help="also print a RESULTS.md row")
    parser.add_argument("--note", default="", help="the row's note cell")
    opts = parser.parse_args(argv)
    runs = max(1, min(opts.runs, 20))
    wanted = [t.strip() for t in opts.tools.split(",") if t.strip()]
    if "dockyard" not in wanted:
        wanted.insert(0, "dockyard")
    deadline = time.monotonic() + opts.max_minutes * 60
    clean_up_on_signals()
    env = dict(os.environ)
    notes: list[str] = []
    tar = debian_base(opts.cache)
    load_start = os.getloadavg()[0]
    before = HostNet.capture()
    cgroups = cgroup_dirs()
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-build-") as tmp:
        base = Path(tmp)
        root = base / "dockyard"
        dockyard = [DOCKYARD, "--root", str(root)]
        try:
            with contextlib.ExitStack() as stack:
                ctx = base / "context"
                size = write_context(ctx)
                tools = [dockyard_tool(root, tar, env)]
                if "docker" in wanted:
                    tools.append(stack.enter_context(docker_tool(base, tar, env, notes)))
                if "buildah" in wanted:
                    tools.append(stack.enter_context(buildah_tool(base, tar, env, notes)))
                notes.append(f"base image: {tar} as {BASE}; load at start {load_start:.2f}")
                notes.append(f"RUN steps: --network {opts.network} in every tool")
                measure(tools, ctx, runs, opts.timeout, deadline, opts.network)
                notes.append(f"load (1 min) at the end {os.getloadavg()[0]:.2f}")
                check_outputs(tools, notes)
                report(tools, notes, PKGS * MODS * FILES, size, runs)
                if opts.markdown:
                    print(markdown_row(tools, load_start, opts.note))
        except BenchError as err:
            print(f"build bench: {err}", file=sys.stderr)
            for note in notes:
                print(f"  {note}", file=sys.stderr)
            return 1
        finally:
            cleaned: list[str] = []
            cleanup_root(dockyard, root, before, cleaned)
            remove_new_cgroups(cgroups, cleaned)
            for point in mounts_under(base):
                if subprocess.run(["umount", point], capture_output=True).returncode:
                    subprocess.run(["umount", "-l", point], capture_output=True)
            for note in cleaned:
                print(f"  {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
