"""The Debian and nginx images built from the host's mirror (scripts/debian_images.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts import debian_images
from scripts.debian_images import DebianImageError, Sources

from tests.cli.dockyard_helper import Dockyard

# ---------------------------------------------------------------- sources and keys


def test_host_sources_reads_deb822_and_one_line_files(tmp_path: Path) -> None:
    sources_dir = tmp_path / "sources.list.d"
    sources_dir.mkdir()
    (sources_dir / "debian.sources").write_text(
        "Types: deb deb-src\n"
        "# a comment\n"
        "URIs: http://mirror.example/debian/\n"
        "Suites: bookworm\n"
        " bookworm-updates\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "URIs: http://off.example/debian\n"
        "Suites: bookworm\n"
        "Enabled: no\n"
        "\n"
        "Types: deb-src\n"
        "URIs: http://src.example/debian\n"
        "Suites: bookworm\n"
    )
    sources_list = tmp_path / "sources.list"
    sources_list.write_text(
        "deb [signed-by=/k.gpg arch=amd64] http://sec.example/debian-security "
        "bookworm-security main\n"
        "deb http://other.example/debian trixie main  # another suite\n"
    )
    found = debian_images.host_sources("bookworm", sources_dir, sources_list)
    assert found == [
        ("http://mirror.example/debian", "bookworm"),
        ("http://mirror.example/debian", "bookworm-updates"),
        ("http://sec.example/debian-security", "bookworm-security"),
    ]


def test_host_suite_and_mirror_of_this_host() -> None:
    sources = debian_images.resolve_sources()
    assert sources.suite == debian_images.host_suite()
    assert sources.mirror.startswith(("http://", "https://"))
    assert (sources.mirror, sources.suite) in sources.apt
    assert f"deb {sources.mirror} {sources.suite} main\n" in sources.sources_list()


def test_missing_os_release_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DebianImageError, match="cannot read") as err:
        debian_images.host_suite(tmp_path / "nope")
    assert "\n" not in str(err.value)


def test_unreachable_mirror_is_one_line_error() -> None:
    with pytest.raises(DebianImageError, match="cannot reach the Debian mirror") as err:
        debian_images.check_mirror("http://127.0.0.1:9", "bookworm", timeout=5)
    assert "\n" not in str(err.value)


def test_keys_change_with_every_input() -> None:
    mirror = "http://a.example/debian"
    base = Sources(mirror, "bookworm", ((mirror, "bookworm"),))
    key = debian_images.debian_key(base, "x86_64")
    assert key == debian_images.debian_key(base, "x86_64")
    others = [
        Sources("http://b.example/debian", base.suite, base.apt),
        Sources(base.mirror, "trixie", base.apt),
        Sources(base.mirror, base.suite, (*base.apt, ("http://s.example", "bookworm-security"))),
    ]
    keys = {key, debian_images.debian_key(base, "aarch64")}
    keys |= {debian_images.debian_key(s, "x86_64") for s in others}
    assert len(keys) == 5
    assert debian_images.nginx_key(key) != debian_images.nginx_key(key[::-1])


# ---------------------------------------------------------------- the cache


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    builds: list[Path] = []

    def build(rootfs: Path, log: Path) -> None:
        builds.append(rootfs)
        time.sleep(0.3)  # long enough for the others to reach the lock
        (rootfs / "etc").mkdir(parents=True)
        (rootfs / "etc" / "hello").write_text("hi\n")

    results: list[Path] = []

    def builder() -> None:
        results.append(debian_images.cached_tar(tmp_path, "t", "ab" * 32, build, {}))

    threads = [threading.Thread(target=builder) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert results == [tmp_path / f"t-{'ab' * 6}" / "rootfs.tar"] * 4
    with tarfile.open(results[0]) as tar:
        assert tar.extractfile("./etc/hello").read() == b"hi\n"  # type: ignore[union-attr]
    assert not (results[0].parent / "rootfs").exists()  # only the tar is kept
    assert not list(tmp_path.glob(".t-*.tmp-*"))


def test_failed_build_leaves_no_entry_and_stale_temp_dirs_go(tmp_path: Path) -> None:
    def broken(rootfs: Path, log: Path) -> None:
        rootfs.mkdir()
        raise DebianImageError("mirror went away")

    with pytest.raises(DebianImageError, match="mirror went away"):
        debian_images.cached_tar(tmp_path, "t", "cd" * 32, broken, {})
    assert not list(tmp_path.glob("t-*")) and not list(tmp_path.glob(".t-*.tmp-*"))

    stale = tmp_path / ".t-cdcdcdcdcdcd.tmp-crashed"  # what a killed builder leaves
    (stale / "rootfs").mkdir(parents=True)
    tar = debian_images.cached_tar(tmp_path, "t", "cd" * 32, lambda r, log: r.mkdir(), {})
    assert tar.is_file() and not stale.exists()


def test_cache_hit_is_fast_and_the_same_tar(debian_image: Path, nginx_image: Path) -> None:
    cache = nginx_image.parent.parent
    before = [(p, p.stat().st_mtime_ns) for p in (debian_image, nginx_image)]
    start = time.perf_counter()
    again = debian_images.debian_base(cache), debian_images.nginx_rootfs(cache)
    elapsed = time.perf_counter() - start
    assert again == (debian_image, nginx_image)
    assert [(p, p.stat().st_mtime_ns) for p in again] == before
    assert elapsed < 0.5
    key = (nginx_image.parent / "key").read_text().strip()
    assert nginx_image.parent.name.endswith(key[:12])
    assert json.loads((nginx_image.parent / "build.json").read_text())["key"] == key


# ---------------------------------------------------------------- the tars


def _members(tar_path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tar_path) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(tar_path: Path, name: str) -> str:
    with tarfile.open(tar_path) as tar:
        f = tar.extractfile(name)
        assert f is not None, name
        return f.read().decode()


def test_debian_tar_is_a_clean_minbase(debian_image: Path) -> None:
    members = _members(debian_image)
    assert all(name == "." or name.startswith("./") for name in members)
    for path in ("./usr/bin/bash", "./usr/bin/apt-get", "./usr/bin/dpkg", "./usr/lib/os-release"):
        assert members[path].isfile(), path
    assert members["./bin"].issym()  # merged /usr
    sources = _read(debian_image, "./etc/apt/sources.list")
    assert f"deb {debian_images.resolve_sources().mirror} " in sources
    leftovers = [
        name
        for name in members
        if name.startswith(("./var/lib/apt/lists/", "./var/cache/apt/", "./dev/", "./tmp/"))
        and not members[name].isdir()
    ]
    assert leftovers == []
    # Nothing of the build host or of the build itself.
    for path in ("./etc/resolv.conf", "./etc/hostname", "./usr/sbin/policy-rc.d"):
        assert path not in members, path
    assert all(m.uname == "" and m.gname == "" for m in members.values())


def test_nginx_tar_has_nginx_page_and_log_links(nginx_image: Path) -> None:
    members = _members(nginx_image)
    assert members["./usr/sbin/nginx"].isfile()
    assert members["./var/lib/nginx"].isdir()
    assert "Welcome to nginx" in _read(nginx_image, "./var/www/html/index.nginx-debian.html")
    access, error = members["./var/log/nginx/access.log"], members["./var/log/nginx/error.log"]
    assert access.issym() and access.linkname == "/dev/stdout"
    assert error.issym() and error.linkname == "/dev/stderr"
    conf = _read(nginx_image, "./etc/nginx/nginx.conf")
    assert not [line for line in conf.splitlines() if line.strip().startswith("daemon ")]
    assert "./usr/sbin/policy-rc.d" not in members
    assert "./etc/resolv.conf" not in members


# ---------------------------------------------------------------- imported and run


@pytest.fixture(scope="module")
def dy_nginx(tmp_path_factory: pytest.TempPathFactory, nginx_image: Path) -> Iterator[Dockyard]:
    """A state root with debian:<suite> and nginx:latest imported; leak checks after."""
    cache = nginx_image.parent.parent
    root = tmp_path_factory.mktemp("debian") / "root"
    debian_images.import_debian(root, cache)
    debian_images.import_nginx(root, cache)
    d = Dockyard(root)
    yield d
    ids = d("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ids:
        d("rm", "-f", *ids, check=False)
    from tests.conftest import teardown_network

    teardown_network(root)  # its bridge, nft table and DNS server
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(root) not in mounts


def test_imported_images_have_the_official_config(dy_nginx: Dockyard) -> None:
    (nginx,) = json.loads(dy_nginx("image", "inspect", "nginx").stdout)
    assert "nginx:latest" in nginx["RepoTags"]
    config = nginx["Config"]
    assert config["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert config["ExposedPorts"] == {"80/tcp": {}}
    assert config["StopSignal"] == "SIGQUIT"
    assert config["Env"] == [debian_images.PATH_ENV]
    suite = debian_images.host_suite()
    (debian,) = json.loads(dy_nginx("image", "inspect", f"debian:{suite}").stdout)
    assert debian["Config"]["Cmd"] == ["bash"]
    assert debian["Config"]["Env"] == [debian_images.PATH_ENV]


def test_debian_container_runs_bash(dy_nginx: Dockyard) -> None:
    debian = f"debian:{debian_images.host_suite()}"
    out = dy_nginx("run", "--rm", debian, "bash", "-c", "echo $PATH")
    assert out.stdout.strip() == debian_images.PATH_ENV.removeprefix("PATH=")


def test_nginx_config_test_passes(dy_nginx: Dockyard) -> None:
    out = dy_nginx("run", "--rm", "nginx", "nginx", "-t")
    assert "test is successful" in out.stderr


def test_welcome_page_in_container(dy_nginx: Dockyard) -> None:
    out = dy_nginx("run", "--rm", "nginx", "cat", "/var/www/html/index.nginx-debian.html")
    assert "Welcome to nginx" in out.stdout


@pytest.mark.skipif(
    not (shutil.which("nsenter") and shutil.which("curl")), reason="needs nsenter and curl"
)
def test_nginx_serves_the_welcome_page_and_quits_on_stop(dy_nginx: Dockyard) -> None:
    # Through the container's own network namespace: no port publishing needed.
    cid = dy_nginx("run", "-d", "nginx").stdout.strip()
    try:
        pid = dy_nginx("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip()
        page = ""
        deadline = time.monotonic() + 10
        while "Welcome to nginx" not in page and time.monotonic() < deadline:
            page = subprocess.run(
                ["nsenter", "-t", pid, "-n", "curl", "-sS", "-m", "2", "http://127.0.0.1/"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if "Welcome to nginx" not in page:
                time.sleep(0.1)
        assert "Welcome to nginx" in page
        dy_nginx("stop", cid)  # SIGQUIT: a graceful shutdown, exit status 0
        assert dy_nginx("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip() == "0"
        assert '"GET / HTTP/1.1" 200' in dy_nginx("logs", cid).stdout  # access.log -> stdout
    finally:
        dy_nginx("rm", "-f", cid, check=False)
