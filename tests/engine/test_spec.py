"""A container's runtime config from an image config and run options."""

from __future__ import annotations

import pytest

from dockyard.engine.spec import (
    DEFAULT_PATH,
    DOCKER_CAPABILITIES,
    RunOptions,
    SpecError,
    build,
    merge_env,
    process_args,
)

IMAGE = {
    "config": {
        "Entrypoint": ["/entry.sh"],
        "Cmd": ["serve", "--port", "80"],
        "Env": ["PATH=/opt/bin:/bin", "MODE=prod"],
        "WorkingDir": "/srv",
    }
}


def test_docker_defaults() -> None:
    config = build("a" * 64, IMAGE, RunOptions())
    process = config["process"]
    assert process["args"] == ["/entry.sh", "serve", "--port", "80"]
    # dockerd's order: PATH (the image's here), HOSTNAME, then the rest of Config.Env
    assert process["env"] == ["PATH=/opt/bin:/bin", f"HOSTNAME={'a' * 12}", "MODE=prod"]
    assert process["cwd"] == "/srv"
    assert process["user"] == {"uid": 0, "gid": 0}
    from dockyard.runtime.capabilities import CAPABILITIES

    bounding = process["capabilities"]["bounding"]
    assert set(bounding) == set(DOCKER_CAPABILITIES)
    assert bounding == sorted(bounding, key=CAPABILITIES.__getitem__)  # by number, like runc
    assert set(process["capabilities"]["effective"]) == set(DOCKER_CAPABILITIES)
    assert config["hostname"] == "a" * 12
    assert config["linux"]["cgroupsPath"] == "/dockyard/" + "a" * 64
    assert {n["type"] for n in config["linux"]["namespaces"]} == {
        "pid",
        "ipc",
        "uts",
        "mount",
        "cgroup",
        "network",
    }
    assert "/proc/kcore" in config["linux"]["maskedPaths"]
    assert config["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert [m["destination"] for m in config["mounts"]][:2] == ["/proc", "/dev"]


def test_command_and_entrypoint_rules() -> None:
    assert process_args(IMAGE["config"], RunOptions(command=["sh"])) == ["/entry.sh", "sh"]
    # --entrypoint resets the image's CMD, as in Docker.
    assert process_args(IMAGE["config"], RunOptions(entrypoint=["/bin/ls"])) == ["/bin/ls"]
    assert process_args(IMAGE["config"], RunOptions(entrypoint=[], command=["id"])) == ["id"]
    with pytest.raises(SpecError, match="no command specified"):
        process_args({}, RunOptions())


def test_env_merge() -> None:
    assert merge_env(["A=1", "B=2"], ["A=3", "C=4"]) == ["A=3", "B=2", "C=4", DEFAULT_PATH]
    assert merge_env([], [])[0] == DEFAULT_PATH


def test_options() -> None:
    opts = RunOptions(
        user=(1000, 1000, [10]),
        read_only=True,
        cap_add=["SYS_ADMIN"],
        cap_drop=["CAP_NET_RAW", "mknod"],
        network="host",
        hostname="web",
        tty=True,
        mounts=[{"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": []}],
    )
    config = build("b" * 64, IMAGE, opts)
    caps = set(config["process"]["capabilities"]["effective"])
    assert "CAP_SYS_ADMIN" in caps and "CAP_NET_RAW" not in caps and "CAP_MKNOD" not in caps
    assert config["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10]}
    assert config["root"]["readonly"] is True
    assert "network" not in {n["type"] for n in config["linux"]["namespaces"]}
    assert config["hostname"] == "web" and config["process"]["terminal"] is True
    shm = [m for m in config["mounts"] if m["destination"] == "/dev/shm"]
    assert shm == [{"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": []}]


def test_privileged_lifts_defaults() -> None:
    config = build("c" * 64, IMAGE, RunOptions(privileged=True))
    assert len(config["process"]["capabilities"]["bounding"]) > len(DOCKER_CAPABILITIES)
    assert "maskedPaths" not in config["linux"]
    assert config["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    sysfs = next(m for m in config["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sysfs["options"]


def test_cap_drop_all_keeps_added() -> None:
    config = build("d" * 64, IMAGE, RunOptions(cap_drop=["ALL"], cap_add=["CHOWN"]))
    assert config["process"]["capabilities"]["effective"] == ["CAP_CHOWN"]
