"""The registry client's pure parts: registries.conf, auth.json, challenges, platforms."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from dockyard.image import platforms
from dockyard.registry import client_auth, config
from dockyard.registry.config import RegistriesConfError
from dockyard.registry.progress import Collect, Plain, bar, human_size


def conf_from(tmp_path: Path, text: str) -> config.RegistriesConf:
    path = tmp_path / "registries.conf"
    path.write_text(text)
    return config.load(str(path))


# ------------------------------------------------------------------ registries.conf


def test_no_file_is_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV, raising=False)
    monkeypatch.setattr(config, "SYSTEM_FILE", str(tmp_path / "absent"))
    conf = config.load(None, str(tmp_path))
    assert conf.path is None
    assert [str(r) for r in conf.resolve("nginx")] == ["docker.io/library/nginx:latest"]
    sources = conf.pull_sources(conf.resolve("nginx")[0])
    assert [(s.host, s.repository, s.insecure) for s in sources] == [
        ("docker.io", "library/nginx", False)
    ]
    # loopback registries may use plain HTTP (Docker's rule), others not
    assert conf.pull_sources(conf.resolve("127.0.0.1:5000/app")[0])[0].insecure
    assert conf.pull_sources(conf.resolve("localhost:5000/app")[0])[0].insecure
    assert not conf.pull_sources(conf.resolve("example.com/app")[0])[0].insecure


def test_file_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    system = tmp_path / "system.conf"
    system.write_text('unqualified-search-registries = ["system.example"]\n')
    monkeypatch.setattr(config, "SYSTEM_FILE", str(system))
    monkeypatch.delenv(config.ENV, raising=False)
    assert config.find_file(None, str(root)) == str(system)
    (root / "registries.conf").write_text("")
    assert config.find_file(None, str(root)) == str(root / "registries.conf")
    env_file = tmp_path / "env.conf"
    env_file.write_text("")
    monkeypatch.setenv(config.ENV, str(env_file))
    assert config.find_file(None, str(root)) == str(env_file)
    flag = tmp_path / "flag.conf"
    flag.write_text("")
    assert config.find_file(str(flag), str(root)) == str(flag)
    with pytest.raises(RegistriesConfError, match=r"--registries-conf names .*missing"):
        config.find_file(str(tmp_path / "missing"), str(root))
    monkeypatch.setenv(config.ENV, str(tmp_path / "gone"))
    with pytest.raises(RegistriesConfError, match="DOCKYARD_REGISTRIES_CONF"):
        config.find_file(None, str(root))


def test_mirrors_come_first(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path,
        """
unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "127.0.0.1:5000"
insecure = true
[[registry.mirror]]
location = "mirror.example/cache"
pull-from-mirror = "digest-only"
""",
    )
    ref = conf.resolve("nginx:1.25")[0]
    assert str(ref) == "docker.io/library/nginx:1.25"
    sources = conf.pull_sources(ref)
    assert [(str(s), s.insecure, s.mirror) for s in sources] == [
        ("127.0.0.1:5000/library/nginx", True, True),
        ("docker.io/library/nginx", False, False),
    ]
    by_digest = conf.pull_sources(conf.resolve("nginx@sha256:" + "a" * 64)[0])
    assert [str(s) for s in by_digest] == [
        "127.0.0.1:5000/library/nginx",
        "mirror.example/cache/library/nginx",
        "docker.io/library/nginx",
    ]
    # pushes never go to mirrors
    assert str(conf.push_source(ref)) == "docker.io/library/nginx"


def test_location_rewrite_prefix_and_blocked(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path,
        """
[[registry]]
prefix = "example.com/team"
location = "127.0.0.1:5000/mirrored/team"
[[registry]]
location = "example.com"
insecure = true
[[registry]]
prefix = "*.blocked.example"
blocked = true
""",
    )
    moved = conf.pull_sources(conf.resolve("example.com/team/app:v1")[0])
    assert [str(s) for s in moved] == ["127.0.0.1:5000/mirrored/team/app"]
    other = conf.pull_sources(conf.resolve("example.com/teamwork/app")[0])
    assert [(str(s), s.insecure) for s in other] == [("example.com/teamwork/app", True)]
    assert conf.host_insecure("example.com")
    assert not conf.host_insecure("elsewhere.example")
    with pytest.raises(RegistriesConfError, match="blocked"):
        conf.pull_sources(conf.resolve("a.blocked.example/x")[0])
    with pytest.raises(RegistriesConfError, match="blocked"):
        conf.push_source(conf.resolve("a.blocked.example/x")[0])


def test_short_names_search_and_aliases(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path,
        """
unqualified-search-registries = ["127.0.0.1:5000", "docker.io"]
[aliases]
"special" = "quay.io/someone/special"
""",
    )
    assert [str(r) for r in conf.resolve("nginx")] == [
        "127.0.0.1:5000/nginx:latest",
        "docker.io/library/nginx:latest",
    ]
    assert [str(r) for r in conf.resolve("team/app:v2")] == [
        "127.0.0.1:5000/team/app:v2",
        "docker.io/team/app:v2",
    ]
    assert [str(r) for r in conf.resolve("special:1")] == ["quay.io/someone/special:1"]
    assert [str(r) for r in conf.resolve("example.com/app")] == ["example.com/app:latest"]
    assert config.is_short_name("nginx") and config.is_short_name("library/nginx:1")
    assert not config.is_short_name("localhost/app")
    assert not config.is_short_name("127.0.0.1:5000/app")


def test_v1_format(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path,
        """
[registries.search]
registries = ["registry.example"]
[registries.insecure]
registries = ["registry.example"]
[registries.block]
registries = ["bad.example"]
""",
    )
    assert conf.search == ["registry.example"]
    assert conf.pull_sources(conf.resolve("app")[0])[0].insecure
    with pytest.raises(RegistriesConfError, match="blocked"):
        conf.pull_sources(conf.resolve("bad.example/app")[0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("this is = = not toml", "is not valid TOML"),
        ('unqualified-search-registries = "docker.io"', "must be a list of strings"),
        ("[[registry]]\ninsecure = true", "needs a prefix or a location"),
        ('[[registry]]\nlocation = "a.example"\ninsecure = "yes"', "insecure must be true or"),
        ('[[registry]]\nprefix = "*.a.example"\nlocation = "b.example"', "wildcard"),
        (
            '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\n'
            'location = "m.example"\npull-from-mirror = "sometimes"',
            "pull-from-mirror",
        ),
    ],
)
def test_bad_files_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RegistriesConfError, match=message) as info:
        conf_from(tmp_path, text)
    assert "\n" not in str(info.value)
    assert "registries.conf" in str(info.value)


# ------------------------------------------------------------------ auth.json


def test_auth_file_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(client_auth.ENV, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert client_auth.auth_file() == str(tmp_path / "run" / "containers" / "auth.json")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert client_auth.auth_file() == "/run/containers/0/auth.json" or not client_auth.auth_file()
    monkeypatch.setenv(client_auth.ENV, str(tmp_path / "mine.json"))
    assert client_auth.auth_file() == str(tmp_path / "mine.json")
    assert client_auth.auth_file(str(tmp_path / "flag.json")) == str(tmp_path / "flag.json")


def test_store_lookup_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "auth.json"
    monkeypatch.setenv(client_auth.ENV, str(path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert client_auth.lookup("127.0.0.1:5000") is None
    client_auth.store("127.0.0.1:5000", client_auth.Credentials("alice", "s3:cret"))
    doc = json.loads(path.read_text())
    assert doc == {
        "auths": {"127.0.0.1:5000": {"auth": base64.b64encode(b"alice:s3:cret").decode()}}
    }
    assert path.stat().st_mode & 0o777 == 0o600
    creds = client_auth.lookup("127.0.0.1:5000")
    assert creds is not None and (creds.username, creds.password) == ("alice", "s3:cret")
    assert client_auth.lookup("127.0.0.1:5001") is None
    # Docker's config.json is read too, with its URL keys for Docker Hub
    docker = tmp_path / "home" / ".docker"
    docker.mkdir(parents=True)
    hub = {"auth": base64.b64encode(b"bob:pw").decode()}
    (docker / "config.json").write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": hub, "quay.io/team": hub}})
    )
    found = client_auth.lookup("docker.io")
    assert found is not None and found.username == "bob"
    assert client_auth.lookup("quay.io", "team/app") is not None
    assert client_auth.lookup("quay.io", "other/app") is None
    assert client_auth.remove("127.0.0.1:5000")
    assert not client_auth.remove("127.0.0.1:5000")
    assert json.loads(path.read_text()) == {"auths": {}}


def test_bad_auth_file(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text("{not json")
    with pytest.raises(client_auth.AuthFileError, match=r"auth.json is not valid JSON"):
        client_auth.lookup("x.example", flag=str(path))
    path.write_text('{"auths": {"x.example": {"auth": "!!!"}}}')
    with pytest.raises(client_auth.AuthFileError, match="not base64"):
        client_auth.lookup("x.example", flag=str(path))


def test_challenges() -> None:
    c = client_auth.parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull",error="insufficient_scope"'
    )
    assert c is not None and c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/nginx:pull",
        "error": "insufficient_scope",
    }
    basic = client_auth.parse_challenge('Basic realm="a \\"quoted\\" realm"')
    assert basic is not None and basic.scheme == "basic"
    assert basic.params == {"realm": 'a "quoted" realm'}
    assert client_auth.parse_challenge("") is None
    assert client_auth.token_from(b'{"access_token": "t", "expires_in": 30}') == ("t", 30.0)
    with pytest.raises(ValueError, match="no token"):
        client_auth.token_from(b"{}")


# ------------------------------------------------------------------ platforms, progress


def test_platforms() -> None:
    assert str(platforms.parse("linux/amd64")) == "linux/amd64"
    assert str(platforms.parse("linux/aarch64")) == "linux/arm64"
    assert str(platforms.parse("arm64")) == "linux/arm64"
    assert str(platforms.parse("linux/arm")) == "linux/arm/v7"
    for bad in ("", "linux/", "a/b/c/d"):
        with pytest.raises(platforms.PlatformError, match="os/arch"):
            platforms.parse(bad)
    entries = [
        {"digest": "amd", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "v6", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
        {"digest": "v7", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "a64", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "att", "platform": {"os": "unknown", "architecture": "unknown"}},
    ]

    def pick(text: str) -> str | None:
        chosen = platforms.choose(entries, platforms.parse(text))
        return chosen["digest"] if chosen else None

    assert pick("linux/amd64") == "amd"
    assert pick("linux/arm64") == "a64"
    assert pick("linux/arm64/v8") == "a64"
    assert pick("linux/arm") == "v7"
    assert pick("linux/arm/v6") == "v6"
    assert pick("linux/s390x") is None
    assert pick("windows/amd64") is None


def test_progress_text() -> None:
    assert human_size(527) == "527B"
    assert human_size(12_345_678) == "12.35MB"
    assert bar(0, 0) == "      0B"
    assert bar(25, 100) == "[============>" + " " * 38 + "]      25B/100B"
    assert bar(25, 100, width=80) == "     25B/100B"
    collect = Collect()
    collect.status("abc", "Pushed")
    collect.transfer("abc", "Pushing", 5, 10)  # only the end of a transfer is kept
    collect.transfer("abc", "Pushing", 10, 10)
    assert [m["status"] for m in collect.messages] == ["Pushed", "Pushing"]


def test_plain_progress(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        p = Plain(f)
        p.message("latest: Pulling from library/x")
        p.status("0123456789ab", "Pulling fs layer")
        p.transfer("0123456789ab", "Downloading", 5, 10)  # not shown off a terminal
        p.status("0123456789ab", "Pull complete")
    assert out.read_text() == (
        "latest: Pulling from library/x\n"
        "0123456789ab: Pulling fs layer\n"
        "0123456789ab: Pull complete\n"
    )
