"""`make demo`: run a busybox container with dockyard-runtime and show that it is isolated.

Builds (or reuses) the busybox test image, makes a private bundle in a temp dir
with a 64 MiB memory limit, runs one container that prints what it sees, and
sets that beside what the host sees: hostname, processes, network links,
mounts, user and memory limit. Any OCI runtime with runc's command line works
in place of dockyard-runtime: `--runtime $(command -v runc)`.

Exit status: 0 when the container ran and every check held; 1 when the runtime
failed (its stderr is shown); 2 when it ran but a check did not hold.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Run as a script, only scripts/ is on sys.path; the repo root makes `scripts` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.test_images import DEFAULT_CACHE, busybox_image, make_bundle

MEMORY_LIMIT = 64 << 20
RUN_TIMEOUT = 60.0

# What the container prints: one `@@name` line before each section, parsed below.
# It is a file in the private rootfs, so `ps` inside shows a short `sh /demo-probe.sh`.
PROBE_PATH = "/demo-probe.sh"
PROBE = r"""
echo @@hostname; hostname
echo @@ps; ps
echo @@netdev; cat /proc/net/dev
echo @@mountinfo; cat /proc/self/mountinfo
echo @@mntns; readlink /proc/self/ns/mnt
echo @@id; id
echo @@cgroup; cat /proc/self/cgroup
echo @@memlimit
cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null \
  || cat /sys/fs/cgroup/memory.max 2>/dev/null || echo unknown
"""


class DemoError(Exception):
    """The demo could not run; the message is what the user reads."""


@dataclass
class Check:
    what: str
    inside: str
    host: str
    ok: bool
    why: str


def default_runtime() -> Path:
    # Next to the interpreter, unresolved: the venv's bin/, not /usr/bin.
    return Path(sys.executable).parent / "dockyard-runtime"


# ---------------------------------------------------------------- running


def runtime_cmd(runtime: Path, *args: str) -> list[str]:
    return [str(runtime), *args]


def delete_container(runtime: Path, cid: str) -> None:
    """`delete --force`, ignoring "no such container": used before and after the run."""
    subprocess.run(
        runtime_cmd(runtime, "delete", "--force", cid),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def container_exists(runtime: Path, cid: str) -> bool:
    proc = subprocess.run(
        runtime_cmd(runtime, "state", cid),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return proc.returncode == 0


def run_container(runtime: Path, bundle: Path, cid: str) -> str:
    """Run the probe in a container and return its output; raise DemoError on failure."""
    try:
        proc = subprocess.run(
            runtime_cmd(runtime, "run", "--bundle", str(bundle), cid),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"`{runtime.name} run` did not finish in {RUN_TIMEOUT:.0f} s") from exc
    except OSError as exc:
        raise DemoError(f"cannot start {runtime}: {exc}") from exc
    if proc.returncode != 0:
        raise DemoError(
            f"`{runtime.name} run` failed with exit status {proc.returncode}\n"
            f"--- stderr\n{proc.stderr.strip()}\n--- stdout\n{proc.stdout.strip()}"
        )
    return proc.stdout


def parse_sections(output: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in output.splitlines():
        if line.startswith("@@"):
            current = sections.setdefault(line[2:].strip(), [])
        else:
            current.append(line)
    return sections


# ---------------------------------------------------------------- what the host sees


def net_links(netdev_lines: list[str]) -> list[str]:
    """Interface names from /proc/net/dev (two header lines, then `name: counters`)."""
    return [line.split(":", 1)[0].strip() for line in netdev_lines[2:] if ":" in line]


def host_process_count() -> int:
    return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())


def host_lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines()


# ---------------------------------------------------------------- checks


def check_hostname(sec: dict[str, list[str]], expected: str) -> Check:
    inside = " ".join(sec.get("hostname", [])).strip()
    host = socket.gethostname()
    return Check("hostname", inside, host, inside == expected and inside != host, "own UTS ns")


def check_processes(sec: dict[str, list[str]]) -> Check:
    rows = [line.split(None, 2) for line in sec.get("ps", [])[1:] if line.strip()]
    pid1 = next((row[2] for row in rows if row[0] == "1" and len(row) > 2), "?")
    inside = f"{len(rows)} (PID 1: {pid1[:40]})"
    # The shell is PID 1 and the only other process is the `ps` it ran.
    ok = pid1.startswith(("sh", "/bin/sh")) and len(rows) <= 2
    return Check("processes", inside, str(host_process_count()), ok, "own PID ns")


def check_network(sec: dict[str, list[str]]) -> Check:
    inside = net_links(sec.get("netdev", []))
    host = net_links(host_lines("/proc/net/dev"))
    return Check("net links", ", ".join(inside), ", ".join(host), inside == ["lo"], "own net ns")


def check_mounts(sec: dict[str, list[str]]) -> Check:
    inside = sec.get("mountinfo", [])
    host = host_lines("/proc/self/mountinfo")
    # Its own mount namespace, whose / is the bundle's rootfs, not the host's /.
    own_ns = sec.get("mntns", ["?"])[0].strip() != os.readlink("/proc/self/ns/mnt")
    root = next(
        (f[3] for f in (line.split() for line in inside) if len(f) > 4 and f[4] == "/"), "/"
    )
    ok = bool(inside) and own_ns and root != "/"
    return Check("mounts", f"{len(inside)} mounts", f"{len(host)} mounts", ok, "own mount ns")


def check_user(sec: dict[str, list[str]]) -> Check:
    inside = " ".join(sec.get("id", [])).strip()
    return Check("user", inside, "", inside.startswith("uid=0(root)"), "from config")


def check_memory(sec: dict[str, list[str]]) -> Check:
    inside = " ".join(sec.get("memlimit", [])).strip()
    ok = inside == str(MEMORY_LIMIT)
    shown = f"{int(inside) >> 20} MiB" if inside.isdigit() else inside
    return Check("memory limit", shown, "", ok, f"config: {MEMORY_LIMIT >> 20} MiB")


def run_checks(sections: dict[str, list[str]], hostname: str) -> list[Check]:
    return [
        check_hostname(sections, hostname),
        check_processes(sections),
        check_network(sections),
        check_mounts(sections),
        check_user(sections),
        check_memory(sections),
    ]


# ---------------------------------------------------------------- report


def print_report(checks: list[Check], sections: dict[str, list[str]]) -> None:
    print(f"  {'':2} {'':13} {'inside':34} {'host':22}")
    for c in checks:
        mark = "ok" if c.ok else "NO"
        print(f"  {mark:2} {c.what:13} {c.inside[:34]:34} {c.host[:22]:22} {c.why}")
    print("\n  ps inside the container:")
    for line in sections.get("ps", []):
        print(f"    {line}")
    cgroups = [line for line in sections.get("cgroup", []) if ":memory:" in line]
    if cgroups:
        print(f"\n  its memory cgroup (from inside, namespaced): {cgroups[0]}")


def demo(cache: Path, runtime: Path) -> int:
    if not runtime.exists():
        raise DemoError(f"runtime not found: {runtime} (install the venv, or pass --runtime)")
    image = busybox_image(cache)
    cid = f"demo-{secrets.token_hex(4)}"
    print(f"dockyard demo: busybox container {cid!r} run by {runtime}")
    print(f"  image: {image.dir}\n")
    with tempfile.TemporaryDirectory(prefix="dockyard-demo-") as tmp:
        bundle = make_bundle(
            image,
            Path(tmp) / "bundle",
            ["/bin/sh", PROBE_PATH],
            hostname=cid,
            linux={"resources": {"memory": {"limit": MEMORY_LIMIT}}},
        )
        (bundle / "rootfs" / PROBE_PATH.lstrip("/")).write_text(PROBE)
        delete_container(runtime, cid)  # a leftover of that id would make `run` fail
        try:
            output = run_container(runtime, bundle, cid)
        finally:
            delete_container(runtime, cid)
            if container_exists(runtime, cid):
                print(f"warning: `{runtime.name} delete --force {cid}` left it behind")
    sections = parse_sections(output)
    checks = run_checks(sections, cid)
    print_report(checks, sections)
    failed = [c.what for c in checks if not c.ok]
    if failed:
        print(f"\ndemo: isolation checks failed: {', '.join(failed)}", file=sys.stderr)
        return 2
    print("\n  all checks held: the container is isolated from the host.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="test image cache")
    parser.add_argument(
        "--runtime",
        type=Path,
        default=default_runtime(),
        help="OCI runtime with runc's command line (default: dockyard-runtime of this venv)",
    )
    opts = parser.parse_args(argv)
    try:
        return demo(opts.cache, opts.runtime)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
