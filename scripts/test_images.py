"""Test images built offline from Debian packages, cached by their inputs.

The busybox image is the smallest useful container: the static busybox binary
from the Debian package `busybox-static`, its applet links, and the few files
and directories a container expects. One build gives three forms of it:

    <cache>/busybox-<key12>/rootfs/      the root file system
    <cache>/busybox-<key12>/rootfs.tar   a plain tar of it (`podman import`, `docker import`)
    <cache>/busybox-<key12>/bundle/      an OCI runtime bundle (config.json + rootfs)

The key is the sha256 of the busybox binary and BUILD_VERSION, so a new
package or a change to this script gives a new directory, and a rerun with
the cache present only hashes one file. A build happens in a temp directory in
the cache that is renamed into place at the end: a crash never leaves a half
image under the final name.

Used by tests (tests/conftest.py), `make images`, the demo and the benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bump when the layout or content of the image changes: it is part of the cache key.
BUILD_VERSION = "1"

DEFAULT_CACHE = Path("/var/cache/dockyard-test")
PACKAGE = "busybox-static"

# Applet links go only where a root file system has them; `--list-full` also
# names /linuxrc (an initrd entry point) which a container has no use for.
LINK_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin")

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"

# Directories a container expects to exist as mount points or scratch space.
EMPTY_DIRS: dict[str, int] = {
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "tmp": 0o1777,
    "root": 0o700,
    "etc": 0o755,
    "var": 0o755,
    "run": 0o755,
    "home": 0o755,
}

# A fixed mtime for tar members, so the same rootfs always gives the same tar bytes.
TAR_MTIME = 0

# Temp build dirs older than this are leftovers of a crashed build.
STALE_TMP_SECONDS = 3600


class ImageBuildError(RuntimeError):
    """The image could not be built; the message says what to fix."""


@dataclass(frozen=True)
class BusyboxImage:
    """A built busybox image: all paths exist and must be treated as read-only."""

    key: str  # full sha256 hex of the inputs; the directory name carries its first 12
    dir: Path
    rootfs: Path
    tar: Path
    bundle: Path


# ---------------------------------------------------------------- finding busybox


def _installed_busybox() -> Path | None:
    """The busybox binary of the installed package, or None if it is not installed."""
    try:
        out = subprocess.run(
            ["dpkg", "-L", PACKAGE], capture_output=True, text=True, check=False
        ).stdout
    except FileNotFoundError:  # not a dpkg system
        return None
    for line in out.splitlines():
        if line.endswith("/bin/busybox") and Path(line).is_file():
            return Path(line)
    return None


def _downloaded_busybox(cache: Path) -> Path:
    """Fetch the package from the Debian mirror into the cache and extract the binary."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{PACKAGE}_*.deb"))
    if not found:
        proc = subprocess.run(
            ["apt-get", "download", PACKAGE], cwd=debs, capture_output=True, text=True
        )
        found = sorted(debs.glob(f"{PACKAGE}_*.deb"))
        if proc.returncode != 0 or not found:
            raise ImageBuildError(
                f"{PACKAGE} is not installed and `apt-get download {PACKAGE}` failed:\n"
                f"{proc.stderr.strip()}\n(install it with `apt-get install {PACKAGE}`)"
            )
    deb = found[-1]
    extracted = debs / deb.name.removesuffix(".deb")
    binary = extracted / "bin" / "busybox"
    if not binary.is_file():
        tmp = Path(tempfile.mkdtemp(dir=debs, prefix=".extract-"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        shutil.rmtree(extracted, ignore_errors=True)
        tmp.rename(extracted)
    if not binary.is_file():
        raise ImageBuildError(f"{deb} has no bin/busybox")
    return binary


def find_busybox(cache: Path) -> Path:
    """The busybox-static binary: the installed one, else one downloaded into the cache."""
    return _installed_busybox() or _downloaded_busybox(cache)


def image_key(busybox: Path) -> str:
    digest = hashlib.sha256()
    digest.update(f"dockyard-busybox-image:{BUILD_VERSION}\n".encode())
    digest.update(busybox.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- building


def _applet_paths(busybox: Path) -> list[str]:
    """Where busybox wants its applets, relative to /, e.g. `usr/bin/awk`."""
    out = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout
    paths = []
    for line in out.split():
        path = line.strip("/")
        if path != "bin/busybox" and os.path.dirname(path) in LINK_DIRS:
            paths.append(path)
    return sorted(set(paths))


def build_rootfs(busybox: Path, rootfs: Path) -> None:
    """Lay out a busybox root file system in the (new, empty) directory `rootfs`."""
    rootfs.mkdir(mode=0o755)
    for name, mode in EMPTY_DIRS.items():
        (rootfs / name).mkdir()
        os.chmod(rootfs / name, mode)  # chmod, because mkdir's mode is masked by umask
    for name in LINK_DIRS:
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    target = rootfs / "bin" / "busybox"
    shutil.copyfile(busybox, target)
    os.chmod(target, 0o755)
    for applet in _applet_paths(busybox):
        link = rootfs / applet
        # Relative links stay valid wherever the rootfs is copied or mounted.
        os.symlink(os.path.relpath("bin/busybox", os.path.dirname(applet)), link)
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)
    for name in ("passwd", "group"):
        os.chmod(rootfs / "etc" / name, 0o644)


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owned by root and dated at a fixed time whoever builds it: reproducible bytes.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = TAR_MTIME
    return info


def write_tar(rootfs: Path, dest: Path) -> None:
    """A plain tar with members `.`, `./bin`, `./bin/busybox`, … (what `import` expects)."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(rootfs, arcname=".", recursive=True, filter=_tar_filter)


def bundle_config(args: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """config.json for a busybox bundle: runc's default, no terminal, deep-merged overrides."""
    from dockyard.oci.runtime_spec import default_spec

    spec = default_spec()
    spec["process"]["terminal"] = False
    spec["root"]["path"] = "rootfs"
    if args is not None:
        spec["process"]["args"] = list(args)
    _deep_merge(spec, overrides)
    return spec


def _deep_merge(into: dict[str, Any], updates: Mapping[str, Any]) -> None:
    """Merge `updates` into `into`: dicts merge key by key, anything else replaces."""
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _write_config(bundle: Path, spec: dict[str, Any]) -> None:
    (bundle / "config.json").write_text(json.dumps(spec, indent=2) + "\n")


def _hardlink_tree(src: Path, dest: Path) -> None:
    # The shared bundle only needs to be read: hard links cost no space and no time.
    shutil.copytree(src, dest, symlinks=True, copy_function=os.link)


def _build(busybox: Path, key: str, workdir: Path) -> None:
    rootfs = workdir / "rootfs"
    build_rootfs(busybox, rootfs)
    write_tar(rootfs, workdir / "rootfs.tar")
    bundle = workdir / "bundle"
    bundle.mkdir()
    _hardlink_tree(rootfs, bundle / "rootfs")
    _write_config(bundle, bundle_config())
    (workdir / "key").write_text(key + "\n")


@contextlib.contextmanager
def _build_lock(cache: Path) -> Iterator[None]:
    """Serialise builders (parallel test runs) so only one does the work."""
    with open(cache / ".busybox.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_stale_tmp(cache: Path) -> None:
    now = time.time()
    for tmp in cache.glob(".busybox-*.tmp*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(tmp)


def _image_at(final: Path, key: str) -> BusyboxImage:
    return BusyboxImage(
        key=key,
        dir=final,
        rootfs=final / "rootfs",
        tar=final / "rootfs.tar",
        bundle=final / "bundle",
    )


def busybox_image(cache: Path = DEFAULT_CACHE) -> BusyboxImage:
    """The busybox image for the installed busybox-static, built into `cache` if absent."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    busybox = find_busybox(cache)
    key = image_key(busybox)
    final = cache / f"busybox-{key[:12]}"
    if final.is_dir():  # the rename below is the last step, so a present dir is complete
        return _image_at(final, key)
    with _build_lock(cache):
        if not final.is_dir():  # another builder may have finished while we waited
            _remove_stale_tmp(cache)
            workdir = Path(tempfile.mkdtemp(dir=cache, prefix=f".busybox-{key[:12]}.tmp-"))
            try:
                os.chmod(workdir, 0o755)  # mkdtemp makes it 0700; others read the cache
                _build(busybox, key, workdir)
                workdir.rename(final)
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
    return _image_at(final, key)


# ---------------------------------------------------------------- private bundles


def make_bundle(
    image: BusyboxImage, dest: Path, args: list[str] | None = None, **overrides: Any
) -> Path:
    """Make a fresh bundle in directory `dest` (created if missing; must not hold a rootfs).

    The rootfs is a real copy (~2 MB), writable and private to the caller.
    `args` replaces process.args; `overrides` are deep-merged into config.json,
    e.g. `linux={"resources": {"memory": {"limit": 64 << 20}}}` or
    `root={"readonly": False}`. Returns `dest`.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(image.rootfs, dest / "rootfs", symlinks=True)
    _write_config(dest, bundle_config(args, **overrides))
    return dest


# ---------------------------------------------------------------- command line


def image_paths(image: BusyboxImage) -> dict[str, str]:
    return {
        "key": image.key,
        "dir": str(image.dir),
        "rootfs": str(image.rootfs),
        "tar": str(image.tar),
        "bundle": str(image.bundle),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (or reuse) the dockyard test images.")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache directory")
    opts = parser.parse_args(argv)
    try:
        image = busybox_image(opts.cache)
    except (ImageBuildError, OSError, subprocess.CalledProcessError) as exc:
        print(f"test images: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"busybox": image_paths(image)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
