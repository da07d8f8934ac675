"""`dockyard cp` and `dockyard diff`, end to end as root on busybox."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.cli.dockyard_helper import DOCKYARD, Dockyard

NOT_FOUND = "Error response from daemon: Could not find the file"


def _raw(dy: Dockyard, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    out = subprocess.run(
        [DOCKYARD, "--root", str(dy.root), *args],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert b"Traceback" not in out.stderr, out.stderr.decode()
    return out


def _tar(entries: dict[str, bytes | str | None], uid: int = 0) -> bytes:
    """name -> bytes (file), str (symlink target) or None (directory)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, value in entries.items():
            info = tarfile.TarInfo(name)
            info.uid = info.gid = uid
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(value, str):
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            else:
                info.size, info.mode = len(value), 0o644
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name for m in tar]


def _cat(dy: Dockyard, container: str, path: str) -> str:
    return dy("exec", container, "cat", path).stdout


@pytest.fixture(params=["running", "stopped"])
def box(request: pytest.FixtureRequest, dy: Dockyard) -> str:
    if request.param == "running":
        dy("run", "-d", "--name", "box", "busybox", "sleep", "300")
    else:
        dy("create", "--name", "box", "busybox", "sleep", "300")
    return str(request.param)


def _read(dy: Dockyard, path: str, tmp_path: Path) -> bytes:
    out = tmp_path / "read-back"
    if out.exists():
        out.unlink()
    dy("cp", f"box:{path}", str(out))
    return out.read_bytes()


def test_cp_files_and_dirs_both_ways(dy: Dockyard, box: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.txt").write_text("beta\n")
    # a file into an existing dir keeps its name; onto a new name takes that name
    dy("cp", str(src / "a.txt"), "box:/tmp")
    dy("cp", str(src / "a.txt"), "box:/tmp/renamed.txt")
    assert _read(dy, "/tmp/a.txt", tmp_path) == b"alpha\n"
    assert _read(dy, "/tmp/renamed.txt", tmp_path) == b"alpha\n"
    # onto an existing file: overwritten
    (tmp_path / "new.txt").write_text("new\n")
    dy("cp", str(tmp_path / "new.txt"), "box:/tmp/a.txt")
    assert _read(dy, "/tmp/a.txt", tmp_path) == b"new\n"
    # a dir into an existing dir: /tmp/src; to a new name: that name; /. : its contents
    dy("cp", str(src), "box:/tmp")
    dy("cp", str(src), "box:/tmp/copy")
    dy("cp", f"{src}/.", "box:/root")
    assert _read(dy, "/tmp/src/sub/b.txt", tmp_path) == b"beta\n"
    assert _read(dy, "/tmp/copy/sub/b.txt", tmp_path) == b"beta\n"
    assert _read(dy, "/root/sub/b.txt", tmp_path) == b"beta\n"
    assert _read(dy, "/root/a.txt", tmp_path) == b"alpha\n"
    # out: a dir into an existing host dir, to a new name, and its contents
    out = tmp_path / "out"
    out.mkdir()
    dy("cp", "box:/tmp/src", str(out))
    assert (out / "src" / "sub" / "b.txt").read_text() == "beta\n"
    dy("cp", "box:/tmp/src", str(out / "fresh"))
    assert (out / "fresh" / "a.txt").read_text() == "alpha\n"
    dy("cp", "box:/tmp/src/.", str(out))
    assert (out / "a.txt").read_text() == "alpha\n" and (out / "sub").is_dir()
    # a file into a host dir
    dy("cp", "box:/etc/passwd", str(out))
    assert (out / "passwd").read_text().startswith("root:x:0:0:")
    # a directory onto a file, a missing parent: one line each
    err = dy("cp", str(src), "box:/tmp/a.txt", check=False)
    assert err.returncode == 1 and err.stderr.count("\n") == 1
    assert "cannot copy a directory to a file" in err.stderr
    err = dy("cp", str(src / "a.txt"), "box:/nope/x", check=False)
    assert err.returncode == 1
    assert err.stderr == f"{NOT_FOUND} /nope in container box\n"
    err = dy("cp", "box:/nope", str(out), check=False)
    assert err.returncode == 1
    assert err.stderr == f"{NOT_FOUND} /nope in container box\n"
    err = dy("cp", "box:/etc/passwd", str(tmp_path / "missing" / "x"), check=False)
    assert err.returncode == 1 and "invalid output path" in err.stderr
    err = dy("cp", str(src), str(out), check=False)
    assert err.returncode == 1 and "at least one container" in err.stderr
    err = dy("cp", "ghost:/etc", str(out), check=False)
    assert err.returncode == 1 and "No such container: ghost" in err.stderr


def test_cp_tar_streams(dy: Dockyard, box: str, tmp_path: Path) -> None:
    data = _tar({"d": None, "d/f.txt": b"from stdin\n", "top.txt": b"top\n"}, uid=1234)
    assert _raw(dy, "cp", "-", "box:/tmp", data=data).returncode == 0
    assert _read(dy, "/tmp/d/f.txt", tmp_path) == b"from stdin\n"
    out = _raw(dy, "cp", "box:/tmp/d", "-")
    assert out.returncode == 0
    assert _names(out.stdout) == ["d", "d/f.txt"]
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        member = tar.getmember("d/f.txt")
        assert member.uid == 0  # without -a: root's
        reader = tar.extractfile(member)
        assert reader is not None and reader.read() == b"from stdin\n"
    out = _raw(dy, "cp", "box:/tmp/d/.", "-")
    assert sorted(_names(out.stdout)) == [".", "./f.txt"]
    err = _raw(dy, "cp", "-", "box:/tmp/top.txt", data=data)
    assert err.returncode == 1 and b"must be a directory" in err.stderr


def test_cp_archive_keeps_ownership(dy: Dockyard, box: str, tmp_path: Path) -> None:
    owned = tmp_path / "owned.txt"
    owned.write_text("x\n")
    os.chown(owned, 1234, 5678)
    dy("cp", str(owned), "box:/tmp/plain.txt")
    dy("cp", "-a", str(owned), "box:/tmp/kept.txt")
    listing = _raw(dy, "cp", "box:/tmp", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(listing)) as tar:
        plain, kept = tar.getmember("tmp/plain.txt"), tar.getmember("tmp/kept.txt")
    assert (plain.uid, plain.gid) == (0, 0)
    assert (kept.uid, kept.gid) == (1234, 5678)
    # out of the container: -a keeps the container's owner, without it root owns
    data = _tar({"mine.txt": b"m\n"}, uid=4321)
    assert _raw(dy, "cp", "-a", "-", "box:/tmp", data=data).returncode == 0
    dy("cp", "box:/tmp/mine.txt", str(tmp_path / "plain-out"))
    dy("cp", "-a", "box:/tmp/mine.txt", str(tmp_path / "kept-out"))
    assert (tmp_path / "plain-out").stat().st_uid == 0
    assert (tmp_path / "kept-out").stat().st_uid == 4321


def _host_snapshot(tmp_path: Path) -> set[str]:
    """Everything under tmp_path but the dockyard root (where containers live)."""
    found = set()
    for top, dirs, files in os.walk(tmp_path):
        if Path(top) == tmp_path and "root" in dirs:
            dirs.remove("root")
        for name in dirs + files:
            found.add(os.path.join(top, name))
    return found


def test_cp_symlinks_stay_inside_the_container(dy: Dockyard, box: str, tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("host secret\n")
    links = {
        "tmp/evil": "/",
        "tmp/up": "../../../../../../..",
        "tmp/etc": "/etc",
        "tmp/direct": str(sentinel),
        "tmp/hostdir": str(tmp_path),
    }
    assert _raw(dy, "cp", "-", "box:/", data=_tar(dict(links))).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    before = _host_snapshot(tmp_path)
    # reads: through every link, the container's files, never the host's
    passwd = _read(dy, "/tmp/up/etc/passwd", tmp_path)
    assert passwd == _read(dy, "/etc/passwd", tmp_path)
    assert passwd != Path("/etc/passwd").read_bytes()
    assert _read(dy, "/tmp/evil/etc/passwd", tmp_path) == passwd
    dy("cp", "-L", "box:/tmp/etc", str(out / "etc-copy"))
    assert (out / "etc-copy" / "passwd").read_bytes() == passwd
    for path in ("/tmp/direct", f"/tmp/evil{sentinel}", f"/tmp/up{sentinel}"):
        err = dy("cp", "-L", f"box:{path}", str(out / "stolen"), check=False)
        assert err.returncode == 1 and "Could not find the file" in err.stderr
    assert not (out / "stolen").exists()
    # without -L a link is copied as the link
    dy("cp", "box:/tmp/direct", str(out / "link-itself"))
    assert os.readlink(out / "link-itself") == str(sentinel)
    # writes: through every link, inside the container, never on the host
    payload = tmp_path / "payload.txt"
    payload.write_text("pwned\n")
    dy("cp", str(payload), "box:/tmp/evil/landed.txt")
    dy("cp", str(payload), "box:/tmp/up/landed2.txt")
    assert _read(dy, "/landed.txt", tmp_path) == b"pwned\n"
    assert _read(dy, "/landed2.txt", tmp_path) == b"pwned\n"
    assert not Path("/landed.txt").exists() and not Path("/landed2.txt").exists()
    for dest in ("/tmp/direct", f"/tmp/evil{sentinel}", "/tmp/hostdir/sentinel.txt"):
        err = dy("cp", str(payload), f"box:{dest}", check=False)
        assert err.returncode == 1 and "Could not find the file" in err.stderr, err.stderr
    evil_tar = _tar({"escape.txt": b"pwned\n"})
    failed = _raw(dy, "cp", "-", "box:/tmp/hostdir", data=evil_tar)
    assert failed.returncode == 1 and b"Could not find the file" in failed.stderr
    failed = _raw(dy, "cp", "-", "box:/tmp", data=_tar({"../../../../escape2.txt": b"x"}))
    assert failed.returncode == 1
    assert sentinel.read_text() == "host secret\n"
    allowed = {str(tmp_path / "read-back"), str(payload)}
    for path in _host_snapshot(tmp_path) - before:
        assert path.startswith(f"{out}/") or path in allowed, path
    assert not list(tmp_path.rglob("escape*.txt"))
    assert not list((dy.root / "tmp").iterdir())


def test_diff(dy: Dockyard) -> None:
    dy("run", "-d", "--name", "web", "busybox", "sleep", "300")
    assert dy("diff", "web").stdout == ""
    dy("exec", "web", "sh", "-c", "echo x > /tmp/new.txt; echo y >> /etc/passwd; rm /bin/vi")
    dy("exec", "web", "mkdir", "-p", "/srv/a/b")
    assert dy("diff", "web").stdout.splitlines() == [
        "C /bin",
        "D /bin/vi",
        "C /etc/passwd",  # /etc itself unchanged (size, mode, mtime): not listed, as Docker
        "A /srv",
        "A /srv/a",
        "A /srv/a/b",
        "C /tmp",
        "A /tmp/new.txt",
    ]
    dy("stop", "-t", "0", "web")
    assert len(dy("diff", "web").stdout.splitlines()) == 8  # stopped: the same
    err = dy("diff", "ghost", check=False)
    assert err.returncode == 1 and "No such container: ghost" in err.stderr


def test_cp_into_read_only_rootfs_is_refused(dy: Dockyard, tmp_path: Path) -> None:
    dy("run", "-d", "--read-only", "--name", "ro", "busybox", "sleep", "300")
    (tmp_path / "f.txt").write_text("x\n")
    err = dy("cp", str(tmp_path / "f.txt"), "ro:/tmp", check=False)
    assert err.returncode == 1
    assert err.stderr == "Error response from daemon: container rootfs is marked read-only\n"
    dy("cp", "ro:/etc/passwd", str(tmp_path / "passwd"))  # reading is fine
    assert (tmp_path / "passwd").read_text().startswith("root:")
