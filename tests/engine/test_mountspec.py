"""Parsing -v/--mount/--tmpfs (Docker's rules and messages) and planning a container's mounts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dockyard.engine.mountspec import (
    MountSpec,
    MountSpecError,
    check_duplicates,
    merge_tmpfs_options,
    parse_mount,
    parse_tmpfs,
    parse_volume,
)
from dockyard.engine.spec import RunOptions
from dockyard.engine.volumes import ANONYMOUS_LABEL, MountPlan, VolumeStore
from dockyard.storage import db


def test_volume_kinds() -> None:
    bind = parse_volume("/host/dir:/ctr:ro,Z")
    assert (bind.type, bind.source, bind.target, bind.readonly) == (
        "bind",
        "/host/dir",
        "/ctr",
        True,
    )
    assert bind.create_source
    named = parse_volume("data:/var/lib/data")
    assert (named.type, named.source, named.readonly, named.nocopy) == (
        "volume",
        "data",
        False,
        False,
    )
    assert parse_volume("data:/x:nocopy,rw").nocopy
    anon = parse_volume("/data")
    assert (anon.type, anon.source, anon.target) == ("volume", "", "/data")
    assert parse_volume("/h:/c:rshared").propagation == "rshared"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (":/a", "invalid volume specification: ':/a'"),
        ("/a:ro", "invalid volume specification: '/a:ro'"),
        ("a:b:c:d", "invalid volume specification: 'a:b:c:d'"),
        ("/a:/b:bogus", "invalid volume specification: '/a:/b:bogus': invalid mode: bogus"),
        ("/a:/b:ro,rw", "invalid mode: ro,rw"),
        ("/a:/b:nocopy", "invalid mode: nocopy"),
        (
            "data:rel",
            "invalid mount config for type \"volume\": invalid mount path: 'rel' mount path "
            "must be absolute",
        ),
        ("/h::ro", 'invalid mount config for type "bind": field Target must not be empty'),
        ("/h:/", "destination can't be '/'"),
        ("bad name:/x", "includes invalid characters for a local volume name"),
    ],
)
def test_volume_errors(raw: str, message: str) -> None:
    with pytest.raises(MountSpecError) as err:
        parse_volume(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_mount_flag() -> None:
    m = parse_mount("type=bind,source=/h,target=/c,readonly,bind-propagation=rslave")
    assert (m.type, m.source, m.target, m.readonly, m.propagation) == (
        "bind",
        "/h",
        "/c",
        True,
        "rslave",
    )
    assert not m.create_source
    v = parse_mount("src=vol,dst=/d,volume-nocopy,volume-label=a=b,ro=false")
    assert (v.type, v.source, v.nocopy, v.readonly, v.volume_labels) == (
        "volume",
        "vol",
        True,
        False,
        {"a": "b"},
    )
    t = parse_mount("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1770")
    assert t.tmpfs_options == ["noexec", "nosuid", "nodev", "size=1048576", "mode=1770"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("type=bind,target=/c", 'invalid mount config for type "bind": field Source must not'),
        ("type=bind,source=rel,target=/c", "mount path must be absolute"),
        ("type=volume,source=v", "target is required"),
        ("type=volume,target=/c,bogus=1", "unexpected key 'bogus'"),
        ("type=volume,target=/c,justakey", "must be a key=value pair"),
        ("type=nfs,target=/c", "invalid type: nfs"),
        ("type=tmpfs,target=/t,tmpfs-mode=9", "invalid value for tmpfs-mode"),
        ("type=tmpfs,source=x,target=/t", "field Source must be empty"),
        ("type=bind,source=/h,target=/c,tmpfs-size=1m", "TmpfsOptions must not be specified"),
        ("type=volume,target=/c,readonly=maybe", "invalid value for readonly"),
    ],
)
def test_mount_errors(raw: str, message: str) -> None:
    with pytest.raises(MountSpecError) as err:
        parse_mount(raw)
    assert message in str(err.value)


def test_tmpfs_flag_and_merge() -> None:
    t = parse_tmpfs("/run:rw,exec,size=64m")
    assert merge_tmpfs_options(t.tmpfs_options) == ["nosuid", "nodev", "rw", "exec", "size=64m"]
    with pytest.raises(MountSpecError, match="mount path must be absolute"):
        parse_tmpfs("run")


def test_duplicates() -> None:
    with pytest.raises(MountSpecError, match="Duplicate mount point: /a"):
        check_duplicates([parse_volume("/a"), parse_tmpfs("/a/")])
    check_duplicates([parse_volume("/a"), parse_volume("/b")])


def test_plan(tmp_path: Path) -> None:
    conn = db.open_db(str(tmp_path))
    store = VolumeStore(str(tmp_path), conn)
    image: dict[str, Any] = {"config": {"Volumes": {"/img": {}, "/data": {}}}}
    specs = [
        parse_volume(f"{tmp_path}/made/here:/h:ro"),
        parse_volume("named:/data"),
        parse_tmpfs("/t:size=1m"),
    ]
    plan = MountPlan(store, image, RunOptions(command=["true"], mount_specs=specs))
    assert (tmp_path / "made" / "here").is_dir()  # -v makes a missing host directory
    by_dest = {m["destination"]: m for m in plan.options.mounts}
    assert by_dest["/h"]["options"] == ["rbind", "rprivate", "ro"]
    assert by_dest["/data"]["source"] == f"{tmp_path}/volumes/named/_data"
    assert by_dest["/t"]["type"] == "tmpfs" and "size=1m" in by_dest["/t"]["options"]
    anon = by_dest["/img"]["source"].split("/")[-2]
    assert len(anon) == 64
    # nothing is in the database until the container is inserted
    assert store.list_volumes() == []
    conn.execute("INSERT INTO containers (id, name, created) VALUES ('c1', 'one', ?)", (db.now(),))
    with db.transaction(conn) as tx:
        plan.attach(tx, "c1")
    names = {v.name: v for v in store.list_volumes()}
    assert set(names) == {"named", anon}
    assert ANONYMOUS_LABEL in names[anon].labels and not names["named"].anonymous
    assert store.users("named") == ["c1"]
    assert [v.name for v in store.list_volumes(["dangling=true"])] == []


def test_plan_rejects_missing_bind_source_from_mount(tmp_path: Path) -> None:
    conn = db.open_db(str(tmp_path))
    opts = RunOptions(mount_specs=[parse_mount("type=bind,source=/no/such/dir,target=/x")])
    with pytest.raises(MountSpecError) as err:
        MountPlan(VolumeStore(str(tmp_path), conn), {}, opts)
    assert str(err.value) == (
        'invalid mount config for type "bind": bind source path does not exist: /no/such/dir'
    )


def test_mountspec_defaults() -> None:
    assert MountSpec(type="tmpfs", target="/x").tmpfs_options == []
