"""Debian and nginx images built from the host's Debian mirror, cached by their inputs.

Two root file systems, each kept as one plain tar (what `dockyard import` takes):

    <cache>/debian-<suite>-<key12>/rootfs.tar   debootstrap --variant=minbase, apt caches cleaned
    <cache>/nginx-<suite>-<key12>/rootfs.tar    that base + nginx-light, logs to stdout/stderr

The mirror is the host's own (the first `deb` source for the host's suite in
/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list) and the suite is
VERSION_CODENAME of /etc/os-release, so no internet is needed beyond what apt
on the host already uses.

The key of the base is the sha256 of BUILD_VERSION, its shell recipe, the
mirror, the suite, the image's apt sources (the host's sources for the suite,
-updates and -security) and the architecture; the nginx key adds its own
recipe to the base key. A rerun with the cache present reads two small files
and hashes a few kB: no network. A build runs in a temp directory in the cache
under a lock (parallel test workers wait for one builder) and is renamed into
place as its last step, so a crash never leaves a half entry under the final
name. The recipes run in their own mount and PID namespaces: every mount they
make (debootstrap's, the /proc and /dev of the apt-get runs) is gone when they
end, even on a crash, and all their processes die with the builder.

`import_debian` / `import_nginx` import the tars into a dockyard state root as
docker.io/library/debian:<suite> and docker.io/library/nginx:latest with the
config of the official images (CMD, ENV PATH, EXPOSE 80/tcp, STOPSIGNAL SIGQUIT).

Used by `make images`, tests/conftest.py (`debian_image`, `nginx_image`) and
`python scripts/debian_images.py --cache DIR [--import-into ROOT]`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Bump when the Python side of a build (tar layout, what is cleaned) changes; the
# shell recipes below are part of the key on their own.
BUILD_VERSION = "1"

DEFAULT_CACHE = Path("/var/cache/dockyard-test")
SOURCES_DIR = Path("/etc/apt/sources.list.d")
SOURCES_LIST = Path("/etc/apt/sources.list")
OS_RELEASE = Path("/etc/os-release")

BUILD_TIMEOUT = 3600.0
MIRROR_TIMEOUT = 20.0

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_CHANGES = (f"ENV {PATH_ENV}", 'CMD ["bash"]')
NGINX_CHANGES = (
    f"ENV {PATH_ENV}",
    'CMD ["nginx","-g","daemon off;"]',
    "EXPOSE 80/tcp",
    "STOPSIGNAL SIGQUIT",
)
NGINX_REFERENCE = "docker.io/library/nginx:latest"

# Shell functions of both recipes. `apt_in` runs apt-get in the rootfs with what an
# install needs (DNS, a policy-rc.d that forbids starting services, /proc, a minimal
# /dev), all of it undone after; `clean` drops what an image does not need.
_FUNCTIONS = r"""
set -eu
umask 022
apt_in() {
    r=$1
    shift
    cp -L /etc/resolv.conf "$r/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
    chmod 755 "$r/usr/sbin/policy-rc.d"
    mount -t proc proc "$r/proc"
    mount -t tmpfs -o mode=755,nosuid dev "$r/dev"
    mknod -m 666 "$r/dev/null" c 1 3
    mknod -m 666 "$r/dev/zero" c 1 5
    mknod -m 666 "$r/dev/full" c 1 7
    mknod -m 666 "$r/dev/random" c 1 8
    mknod -m 666 "$r/dev/urandom" c 1 9
    ln -s /proc/self/fd "$r/dev/fd"
    for args in "$@"; do
        # Word splitting on purpose: each argument is one apt-get command line.
        # shellcheck disable=SC2086
        chroot "$r" /usr/bin/env -i HOME=/root LC_ALL=C DEBIAN_FRONTEND=noninteractive \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            apt-get -q -y -o Acquire::Check-Valid-Until=false -o Acquire::Languages=none $args
    done
    umount "$r/dev" "$r/proc"
    rm -f "$r/usr/sbin/policy-rc.d"
}
clean() {
    r=$1
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
        "$r"/var/lib/dpkg/*-old "$r"/var/log/apt/* "$r"/tmp/* "$r"/var/tmp/* "$r"/dev/*
    rm -f "$r"/var/log/dpkg.log "$r"/var/log/alternatives.log "$r"/var/log/bootstrap.log \
        "$r"/etc/resolv.conf "$r"/etc/hostname
}
"""

# $1 rootfs (to be created), $2 mirror, $3 suite, $4 the image's /etc/apt/sources.list.
# The upgrade brings in what -updates and -security have over the suite, as in Docker's.
DEBIAN_RECIPE = (
    _FUNCTIONS
    + r"""
rootfs=$1 mirror=$2 suite=$3 sources=$4
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror"
printf '%s' "$sources" >"$rootfs/etc/apt/sources.list"
apt_in "$rootfs" update upgrade
clean "$rootfs"
test -x "$rootfs/usr/bin/apt-get"
"""
)

# $1 rootfs (to be created), $2 the base tar.
NGINX_RECIPE = (
    _FUNCTIONS
    + r"""
rootfs=$1 base=$2
mkdir "$rootfs"
tar -x -p --numeric-owner -f "$base" -C "$rootfs"
apt_in "$rootfs" update "install --no-install-recommends nginx-light"
# As the official image: logs to the container's output, nginx in the foreground by -g.
ln -sf /dev/stdout "$rootfs/var/log/nginx/access.log"
ln -sf /dev/stderr "$rootfs/var/log/nginx/error.log"
sed -i '/^[[:space:]]*daemon[[:space:]]/d' "$rootfs/etc/nginx/nginx.conf"
clean "$rootfs"
test -x "$rootfs/usr/sbin/nginx"
grep -q 'Welcome to nginx' "$rootfs/var/www/html/index.nginx-debian.html"
"""
)


class DebianImageError(RuntimeError):
    """An image could not be built or imported; the message is one line saying why."""


# ---------------------------------------------------------------- the host's mirror


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """The stanzas of a Deb822 file as {lowercased field: value}; comments dropped."""
    stanza: dict[str, str] = {}
    field = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, field = {}, ""
        elif line[0] in " \t":
            if field:
                stanza[field] += " " + line.strip()
        else:
            name, _, value = line.partition(":")
            field = name.strip().lower()
            stanza[field] = value.strip()


def _one_line_sources(text: str) -> Iterator[tuple[str, str]]:
    """(URI, suite) of each `deb [options] URI suite components…` line."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield words[0], words[1]


def host_suite(os_release: Path = OS_RELEASE) -> str:
    """VERSION_CODENAME of the host, e.g. `bookworm`."""
    try:
        text = os_release.read_text()
    except OSError as exc:
        raise DebianImageError(f"cannot read {os_release}: {exc.strerror}") from exc
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME" and value.strip().strip("\"'"):
            return value.strip().strip("\"'")
    raise DebianImageError(f"{os_release} has no VERSION_CODENAME")


def host_sources(
    suite: str, sources_dir: Path = SOURCES_DIR, sources_list: Path = SOURCES_LIST
) -> list[tuple[str, str]]:
    """(URI, suite) of the host's enabled `deb` sources for `suite` and `suite-*`, in order.

    `suite-*` are bookworm-updates, bookworm-security and the like: the image's apt
    gets them too, as the official image does.
    """
    found: list[tuple[str, str]] = []

    def add(uri: str, source_suite: str) -> None:
        entry = (uri.rstrip("/"), source_suite)
        wanted = source_suite == suite or source_suite.startswith(f"{suite}-")
        if wanted and entry not in found:
            found.append(entry)

    for path in sorted(sources_dir.glob("*.sources")):
        for stanza in _deb822_stanzas(path.read_text()):
            if stanza.get("enabled", "yes").lower() == "no":
                continue
            if "deb" in stanza.get("types", "").split():
                for uri in stanza.get("uris", "").split():
                    for source_suite in stanza.get("suites", "").split():
                        add(uri, source_suite)
    for path in [sources_list, *sorted(sources_dir.glob("*.list"))]:
        if path.is_file():
            for uri, source_suite in _one_line_sources(path.read_text()):
                add(uri, source_suite)
    return found


@dataclass(frozen=True)
class Sources:
    """Where an image comes from: debootstrap's mirror and suite, the image's apt sources."""

    mirror: str
    suite: str
    apt: tuple[tuple[str, str], ...]

    def sources_list(self) -> str:
        """/etc/apt/sources.list of the images (components: main, as debootstrap's)."""
        return "".join(f"deb {uri} {suite} main\n" for uri, suite in self.apt)


def resolve_sources(mirror: str | None = None, suite: str | None = None) -> Sources:
    """The host's mirror and sources for its suite; `mirror`/`suite` override them."""
    suite = suite or host_suite()
    if mirror:
        return Sources(mirror.rstrip("/"), suite, ((mirror.rstrip("/"), suite),))
    apt = host_sources(suite)
    for uri, source_suite in apt:
        if source_suite == suite:
            return Sources(uri, suite, tuple(apt))
    raise DebianImageError(
        f"no `deb` source for {suite} in {SOURCES_DIR}/*.sources or {SOURCES_LIST}"
    )


def check_mirror(mirror: str, suite: str, timeout: float = MIRROR_TIMEOUT) -> None:
    """Fail early, in one line, when the mirror can't serve the suite's Release file."""
    url = f"{mirror}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(1)
    except urllib.error.HTTPError as exc:
        raise DebianImageError(f"cannot reach the Debian mirror {url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DebianImageError(f"cannot reach the Debian mirror {url}: {reason}") from exc


# ---------------------------------------------------------------- keys


def _sha256(fields: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def debian_key(sources: Sources, arch: str | None = None) -> str:
    return _sha256(
        {
            "image": "debian",
            "build": BUILD_VERSION,
            "recipe": DEBIAN_RECIPE,
            "mirror": sources.mirror,
            "suite": sources.suite,
            "sources.list": sources.sources_list(),
            "arch": arch or platform.machine(),
        }
    )


def nginx_key(base_key: str) -> str:
    return _sha256(
        {"image": "nginx", "build": BUILD_VERSION, "recipe": NGINX_RECIPE, "base": base_key}
    )


# ---------------------------------------------------------------- building


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the builder dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _run_recipe(name: str, recipe: str, args: list[str], log: Path) -> None:
    """Run a recipe in fresh mount and PID namespaces, its output in `log`.

    When the builder dies, unshare gets SIGKILL, and with it the namespace's first
    process and so every process of the recipe; the mounts go with the namespace.
    """
    cmd = [
        "unshare",
        "--mount",
        "--propagation=private",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--",
        "/bin/sh",
        "-c",
        recipe,
        name,
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
    env.update(PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL="C")
    with open(log, "wb") as out:
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=BUILD_TIMEOUT,
                preexec_fn=_die_with_parent,
                check=False,
            )
        except FileNotFoundError as exc:
            raise DebianImageError(f"building {name}: {exc.filename} is not installed") from exc
        except subprocess.TimeoutExpired as exc:
            raise DebianImageError(
                f"building {name} took over {BUILD_TIMEOUT:.0f}s (log: {log})"
            ) from exc
    if proc.returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise DebianImageError(
            f"building {name} failed (exit {proc.returncode}): {last} (log: {log})"
        )


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Numeric owners only: the host's user names mean nothing inside the image.
    info.uname = info.gname = ""
    return info


def write_tar(rootfs: Path, dest: Path) -> None:
    """A plain tar with members `.`, `./usr`, … owners and modes as in `rootfs`."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(rootfs, arcname=".", recursive=True, filter=_tar_filter)


@contextlib.contextmanager
def _lock(cache: Path, name: str) -> Iterator[None]:
    """Serialise the builders of one image (parallel test workers, `make -j`)."""
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_tar(
    cache: Path, name: str, key: str, build: Callable[[Path, Path], None], info: dict[str, str]
) -> Path:
    """`<cache>/<name>-<key12>/rootfs.tar`, built by `build(rootfs_dir, log)` if absent.

    `build` makes the root file system in the (not yet existing) directory it gets;
    it is written as the tar and removed. `info` goes into the entry's build.json.
    """
    cache = Path(cache)
    final = cache / f"{name}-{key[:12]}"
    tar = final / "rootfs.tar"
    if final.is_dir():  # the rename below is the last step, so a present dir is complete
        return tar
    cache.mkdir(parents=True, exist_ok=True)
    with _lock(cache, name):
        if final.is_dir():  # another builder finished while we waited
            return tar
        # Under the lock no other builder of `name` runs: any temp dir is a crash's leftover.
        for stale in cache.glob(f".{name}-*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        workdir = Path(tempfile.mkdtemp(dir=cache, prefix=f".{name}-{key[:12]}.tmp-"))
        try:
            os.chmod(workdir, 0o755)  # mkdtemp makes it 0700; others read the cache
            start = time.monotonic()
            build(workdir / "rootfs", cache / f".{name}-build.log")
            write_tar(workdir / "rootfs", workdir / "rootfs.tar")
            shutil.rmtree(workdir / "rootfs")
            seconds = round(time.monotonic() - start, 1)
            (workdir / "key").write_text(key + "\n")
            record = {**info, "key": key, "build_seconds": seconds}
            (workdir / "build.json").write_text(json.dumps(record, indent=2) + "\n")
            workdir.rename(final)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    return tar


def debian_base(
    cache: Path = DEFAULT_CACHE, mirror: str | None = None, suite: str | None = None
) -> Path:
    """The tar of a minbase Debian root file system, built into `cache` if absent."""
    sources = resolve_sources(mirror, suite)
    key = debian_key(sources)

    def build(rootfs: Path, log: Path) -> None:
        check_mirror(sources.mirror, sources.suite)
        args = [str(rootfs), sources.mirror, sources.suite, sources.sources_list()]
        _run_recipe("debian", DEBIAN_RECIPE, args, log)

    info = {"image": "debian", "mirror": sources.mirror, "suite": sources.suite}
    return cached_tar(Path(cache), f"debian-{sources.suite}", key, build, info)


def nginx_rootfs(
    cache: Path = DEFAULT_CACHE, mirror: str | None = None, suite: str | None = None
) -> Path:
    """The tar of the Debian base plus nginx-light, built into `cache` if absent."""
    sources = resolve_sources(mirror, suite)
    key = nginx_key(debian_key(sources))
    final = Path(cache) / f"nginx-{sources.suite}-{key[:12]}"
    if final.is_dir():
        return final / "rootfs.tar"
    base = debian_base(cache, mirror, suite)

    def build(rootfs: Path, log: Path) -> None:
        check_mirror(sources.mirror, sources.suite)
        _run_recipe("nginx", NGINX_RECIPE, [str(rootfs), str(base)], log)

    info = {"image": "nginx", "mirror": sources.mirror, "suite": sources.suite, "base": str(base)}
    return cached_tar(Path(cache), f"nginx-{sources.suite}", key, build, info)


# ---------------------------------------------------------------- importing


def import_tar(root: Path, tar: Path, reference: str, changes: tuple[str, ...]) -> str:
    """`dockyard --root ROOT import --change … TAR REFERENCE`; returns the image ID."""
    from dockyard.image.store import ImageStore

    store = ImageStore(str(root))
    try:
        with open(tar, "rb") as f:
            return store.import_tar(f, reference, list(changes), f"from {tar.name}").id
    finally:
        store.conn.close()


def import_debian(root: Path, cache: Path = DEFAULT_CACHE) -> str:
    """Import the base as docker.io/library/debian:<suite>; returns the image ID."""
    reference = f"docker.io/library/debian:{host_suite()}"
    return import_tar(root, debian_base(cache), reference, DEBIAN_CHANGES)


def import_nginx(root: Path, cache: Path = DEFAULT_CACHE) -> str:
    """Import the nginx image as docker.io/library/nginx:latest; returns the image ID."""
    return import_tar(root, nginx_rootfs(cache), NGINX_REFERENCE, NGINX_CHANGES)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build (or reuse) the Debian and nginx images from the host's Debian mirror."
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache directory")
    parser.add_argument(
        "--import-into", type=Path, metavar="ROOT", help="also import both into this state root"
    )
    opts = parser.parse_args(argv)
    try:
        result: dict[str, dict[str, str]] = {
            "debian": {"tar": str(debian_base(opts.cache))},
            "nginx": {"tar": str(nginx_rootfs(opts.cache))},
        }
        for entry in result.values():
            size = Path(entry["tar"]).stat().st_size
            entry["size"] = f"{size / 1e6:.1f}MB"
        if opts.import_into:
            result["debian"]["image"] = import_debian(opts.import_into, opts.cache)
            result["nginx"]["image"] = import_nginx(opts.import_into, opts.cache)
    except (DebianImageError, OSError) as exc:
        print(f"debian images: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. the image store refusing the tar
        print(f"debian images: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
