"""`dockyard volume …` and `run -v/--mount/--tmpfs`, end to end as root on busybox."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from scripts.test_images import BusyboxImage

from tests.cli.dockyard_helper import Dockyard


def _volumes(dy: Dockyard, *flags: str) -> list[str]:
    return dy("volume", "ls", "-q", *flags).stdout.split()


def test_create_ls_inspect_rm(dy: Dockyard) -> None:
    assert dy("volume", "create", "data").stdout == "data\n"
    assert dy("volume", "create", "data").stdout == "data\n"  # exists: Docker returns it
    assert dy("volume", "create", "--name", "other", "-l", "tier=db").stdout == "other\n"
    random_name = dy("volume", "create").stdout.strip()
    assert len(random_name) == 64 and all(c in "0123456789abcdef" for c in random_name)
    listing = dy("volume", "ls").stdout.splitlines()
    assert listing[0] == "DRIVER    VOLUME NAME"
    assert sorted(listing[1:]) == sorted(f"local     {n}" for n in ("data", "other", random_name))
    assert _volumes(dy, "--filter", "label=tier=db") == ["other"]
    assert _volumes(dy, "--filter", "label=tier") == ["other"]
    assert _volumes(dy, "--filter", "name=dat") == ["data"]
    assert len(_volumes(dy, "--filter", "dangling=true")) == 3
    doc = json.loads(dy("volume", "inspect", "other").stdout)
    assert len(doc) == 1
    item = doc[0]
    assert list(item) == [
        "CreatedAt",
        "Driver",
        "Labels",
        "Mountpoint",
        "Name",
        "Options",
        "Scope",
    ]
    assert item["Driver"] == "local" and item["Scope"] == "local"
    assert item["Labels"] == {"tier": "db"} and item["Options"] == {}
    assert item["Mountpoint"] == f"{dy.root}/volumes/other/_data"
    assert Path(item["Mountpoint"]).is_dir()
    assert item["CreatedAt"].endswith("Z") and len(item["CreatedAt"]) == 20
    assert dy("volume", "inspect", "-f", "{{.Name}} {{.Driver}}", "data").stdout == "data local\n"
    out = dy("volume", "inspect", "nope", check=False)
    assert out.returncode == 1 and out.stderr == "Error: No such volume: nope\n"
    assert dy("volume", "rm", "data", random_name).stdout.split() == ["data", random_name]
    assert not (dy.root / "volumes" / "data").exists()
    out = dy("volume", "rm", "data", check=False)
    assert out.returncode == 1
    assert out.stderr == "Error response from daemon: get data: no such volume\n"
    assert dy("volume", "rm", "-f", "data").returncode == 0
    out = dy("volume", "create", "a b", check=False)
    assert out.returncode == 1 and "includes invalid characters" in out.stderr
    out = dy("volume", "create", "-o", "bogus=1", "x1", check=False)
    assert out.returncode == 1 and out.stderr == 'Error: invalid option: "bogus"\n'
    out = dy("volume", "ls", "--filter", "colour=red", check=False)
    assert out.returncode == 1 and "Invalid filter 'colour'" in out.stderr
    assert _volumes(dy) == ["other"]


def test_named_volume_outlives_containers(dy: Dockyard) -> None:
    dy("run", "--name", "writer", "-v", "store:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    dy("rm", "-v", "writer")  # -v removes anonymous volumes only
    assert _volumes(dy) == ["store"]
    out = dy("run", "--rm", "-v", "store:/mnt", "busybox", "cat", "/mnt/f")
    assert out.stdout == "kept\n"
    out = dy("run", "--rm", "-v", "store:/mnt:ro", "busybox", "touch", "/mnt/g", check=False)
    assert out.returncode != 0 and "Read-only file system" in out.stderr


def test_volume_rm_refuses_in_use_and_prune(dy: Dockyard) -> None:
    cid = dy("create", "-v", "busy:/data", "-v", "/anon", "busybox", "true").stdout.strip()
    names = _volumes(dy)
    assert "busy" in names and len(names) == 2
    anon = next(n for n in names if n != "busy")
    assert dy("system", "check").returncode == 0  # the new table passes integrity_check
    doc = json.loads(dy("volume", "inspect", anon).stdout)[0]
    assert doc["Labels"] == {"com.docker.volume.anonymous": ""}
    for flags in ((), ("-f",)):
        out = dy("volume", "rm", *flags, "busy", check=False)
        assert out.returncode == 1
        assert out.stderr == (
            f"Error response from daemon: remove busy: volume is in use - [{cid}]\n"
        )
    assert _volumes(dy, "--filter", "dangling=true") == []
    out = dy("volume", "prune", "-f")
    assert out.stdout == "Total reclaimed space: 0B\n"  # both in use
    dy("rm", cid)  # without -v: the anonymous volume stays
    assert sorted(_volumes(dy, "--filter", "dangling=true")) == sorted(["busy", anon])
    dy("volume", "create", "keepme")
    out = dy("volume", "prune", "-f")
    assert out.stdout == f"Deleted Volumes:\n{anon}\n\nTotal reclaimed space: 0B\n"
    assert sorted(_volumes(dy)) == ["busy", "keepme"]
    out = dy("volume", "prune", "-a", "-f")
    assert out.stdout.startswith("Deleted Volumes:\nbusy\nkeepme\n\nTotal reclaimed space:")
    assert _volumes(dy) == []
    assert not [p for p in (dy.root / "volumes").iterdir()]


def test_prune_asks_first(dy: Dockyard) -> None:
    import subprocess

    from tests.cli.dockyard_helper import DOCKYARD

    dy("volume", "create")
    argv = [DOCKYARD, "--root", str(dy.root), "volume", "prune", "-a"]
    out = subprocess.run(argv, input="n\n", capture_output=True, text=True, check=True)
    assert "Are you sure you want to continue? [y/N]" in out.stdout
    assert len(_volumes(dy)) == 1
    out = subprocess.run(argv, input="y\n", capture_output=True, text=True, check=True)
    assert "Deleted Volumes:" in out.stdout and _volumes(dy) == []


def test_anonymous_volume_rm_v(dy: Dockyard) -> None:
    c1 = dy("run", "-v", "/data", "busybox", "sh", "-c", "echo x > /data/x").stdout
    assert c1 == ""
    first = _volumes(dy)
    assert len(first) == 1
    ids = dy("ps", "-aq", "--no-trunc").stdout.split()
    dy("rm", "-v", ids[0])
    assert _volumes(dy) == []
    dy("run", "--name", "keep", "-v", "/data", "busybox", "true")
    dy("rm", "keep")
    assert len(_volumes(dy)) == 1
    dy("run", "--rm", "-v", "/data", "busybox", "true")  # --rm removes anonymous volumes too
    assert len(_volumes(dy)) == 1


def test_bind_mounts(dy: Dockyard, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "hello").write_text("from host\n")
    out = dy(
        "run",
        "--rm",
        "-v",
        f"{host}:/h:ro",
        "busybox",
        "sh",
        "-c",
        "cat /h/hello; touch /h/x",
        check=False,
    )
    assert out.stdout == "from host\n" and "Read-only file system" in out.stderr
    dy("run", "--rm", "-v", f"{host}:/h", "busybox", "sh", "-c", "echo back > /h/reply")
    assert (host / "reply").read_text() == "back\n"
    made = tmp_path / "made" / "by" / "v"
    dy("run", "--rm", "-v", f"{made}:/m", "busybox", "touch", "/m/file")
    assert (made / "file").exists()  # -v creates a missing host directory
    out = dy(
        "run",
        "--rm",
        "--mount",
        f"type=bind,source={host},target=/h,readonly",
        "busybox",
        "cat",
        "/h/hello",
    )
    assert out.stdout == "from host\n"
    out = dy(
        "run",
        "--rm",
        "--mount",
        f"type=bind,src={host}/nope,dst=/h",
        "busybox",
        "true",
        check=False,
    )
    assert out.returncode == 125  # `run` itself failed, as Docker exits
    assert out.stderr == (
        'Error: invalid mount config for type "bind": bind source path does not exist: '
        f"{host}/nope\n"
    )
    assert not (host / "nope").exists()
    assert dy("ps", "-aq").stdout == ""


def test_tmpfs(dy: Dockyard) -> None:
    out = dy(
        "run",
        "--rm",
        "--tmpfs",
        "/scratch:size=1m",
        "busybox",
        "grep",
        " /scratch ",
        "/proc/mounts",
    )
    fields = out.stdout.split()
    assert fields[:3] == ["tmpfs", "/scratch", "tmpfs"]
    assert "size=1024k" in fields[3] and "noexec" in fields[3]
    out = dy(
        "run",
        "--rm",
        "--mount",
        "type=tmpfs,target=/t,tmpfs-size=2m,tmpfs-mode=1770",
        "busybox",
        "sh",
        "-c",
        "grep ' /t ' /proc/mounts; stat -c %a /t",
    )
    lines = out.stdout.splitlines()
    assert lines[0].startswith("tmpfs /t tmpfs ") and "size=2048k" in lines[0]
    assert lines[1] == "1770"


def test_mount_errors_are_one_line(dy: Dockyard) -> None:
    cases = {
        ("-v", "data:rel"): "Error: invalid volume specification: 'data:rel': invalid mount config "
        "for type \"volume\": invalid mount path: 'rel' mount path must be absolute\n",
        ("-v", ":/a"): "Error: invalid volume specification: ':/a'\n",
        ("-v", "/a:/b:bogus"): "Error: invalid volume specification: '/a:/b:bogus': "
        "invalid mode: bogus\n",
        ("-v", "v1:/same", "--tmpfs", "/same"): "Error: Duplicate mount point: /same\n",
        ("--mount", "type=volume,src=v"): 'Error: invalid argument "type=volume,src=v" for '
        '"--mount" flag: target is required\n',
        ("--tmpfs", "rel"): "Error: invalid --tmpfs 'rel': invalid mount config for type "
        "\"tmpfs\": invalid mount path: 'rel' mount path must be absolute\n",
    }
    for flags, message in cases.items():
        out = dy("run", "--rm", *flags, "busybox", "true", check=False)
        assert out.returncode == 125 and out.stderr == message, (flags, out.stderr)
    assert dy("ps", "-aq").stdout == ""
    assert _volumes(dy) == []  # nothing half-made


def _seeded_tar(busybox: BusyboxImage, dest: Path) -> Path:
    """busybox plus /data/seed (uid 1000, mode 0640) and /data/sub/deep."""
    with tarfile.open(busybox.tar) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)

        def add(name: str, data: bytes | None, mode: int, uid: int = 0) -> None:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid = mode, uid, uid
            if data is None:
                info.type = tarfile.DIRTYPE
                out.addfile(info)
            else:
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))

        add("data", None, 0o750, 1000)
        add("data/seed", b"seeded\n", 0o640, 1000)
        add("data/sub", None, 0o755)
        add("data/sub/deep", b"deep\n", 0o600)
    return dest


def test_copy_up_from_image(dy: Dockyard, busybox_image: BusyboxImage, tmp_path: Path) -> None:
    tar = _seeded_tar(busybox_image, tmp_path / "seeded.tar")
    dy("import", "-c", "VOLUME /data", str(tar), "seeded")
    show = "stat -c '%u %a %n' /data /data/seed; cat /data/seed /data/sub/deep"
    want = "1000 750 /data\n1000 640 /data/seed\nseeded\ndeep\n"
    # a new named volume is filled from the image
    assert dy("run", "--rm", "-v", "filled:/data", "seeded", "sh", "-c", show).stdout == want
    data = dy.root / "volumes" / "filled" / "_data"
    assert (data / "seed").read_text() == "seeded\n"
    # the image's VOLUME alone makes an anonymous volume, filled too; --rm removes it
    assert dy("run", "--rm", "seeded", "sh", "-c", show).stdout == want
    assert _volumes(dy) == ["filled"]
    # a volume that already has content is not overwritten
    dy("run", "--rm", "-v", "filled:/data", "busybox", "sh", "-c", "echo mine > /data/seed")
    out = dy("run", "--rm", "-v", "filled:/data", "seeded", "cat", "/data/seed")
    assert out.stdout == "mine\n"
    # nocopy leaves a new volume empty
    out = dy("run", "--rm", "-v", "bare:/data:nocopy", "seeded", "ls", "-A", "/data")
    assert out.stdout == ""
    # copy-up happens at create, before the container first starts
    cid = dy("create", "-v", "later:/data", "seeded", "true").stdout.strip()
    assert (dy.root / "volumes" / "later" / "_data" / "seed").exists()
    dy("rm", cid)
