"""Pure parts of the HostConfig options, health rules and Docker's time arguments."""

from __future__ import annotations

import time

import pytest

from dockyard.cli.errors import UsageError
from dockyard.cli.filters import parse_timestamp
from dockyard.engine import hostconfig
from dockyard.engine.health import Checker, status_suffix


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("0.2s", 200_000_000),
        ("1m30s", 90_000_000_000),
        ("500ms", 500_000_000),
        ("1h", 3_600_000_000_000),
        ("10us", 10_000),
    ],
)
def test_parse_duration(text: str, ns: int) -> None:
    assert hostconfig.parse_duration(text, "--health-interval") == ns


@pytest.mark.parametrize("text", ["abc", "10", "1x", "", "s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(hostconfig.OptionError, match="invalid duration"):
        hostconfig.parse_duration(text, "--health-interval")


def test_parse_ulimit() -> None:
    assert hostconfig.parse_ulimit("nofile=10:20") == {
        "type": "RLIMIT_NOFILE",
        "soft": 10,
        "hard": 20,
    }
    assert hostconfig.parse_ulimit("nproc=5")["hard"] == 5
    for bad in ("nofile", "nofile=a", "x=1", "nofile=3:2"):
        with pytest.raises(hostconfig.OptionError):
            hostconfig.parse_ulimit(bad)


def test_sysctl_allow_list() -> None:
    for key in (
        "kernel.shmmax",
        "kernel.msgmax",
        "kernel.sem",
        "fs.mqueue.msg_max",
        "net.core.somaxconn",
    ):
        hostconfig.check_sysctl(key, "none")
    for key in ("vm.swappiness", "kernel.hostname", "fs.file-max"):
        with pytest.raises(hostconfig.OptionError):
            hostconfig.check_sysctl(key, "none")
    with pytest.raises(hostconfig.OptionError, match="host network"):
        hostconfig.check_sysctl("net.ipv4.ip_forward", "host")


def test_healthcheck_merge_with_the_image() -> None:
    image = {"Test": ["CMD", "true"], "Interval": 5_000_000_000, "Retries": 4}
    assert hostconfig.merge_healthcheck(image, None) == image
    given = hostconfig.healthcheck_options(None, "1s", None, None, None, False)
    merged = hostconfig.merge_healthcheck(image, given)
    assert merged == {"Test": ["CMD", "true"], "Interval": 1_000_000_000, "Retries": 4}
    off = hostconfig.healthcheck_options(None, None, None, None, None, True)
    assert hostconfig.merge_healthcheck(image, off) is None
    assert hostconfig.merge_healthcheck({"Test": ["NONE"]}, None) is None
    assert hostconfig.healthcheck_options(None, None, None, None, None, False) is None


def test_image_stop_signal_and_healthcheck_reach_the_record() -> None:
    from dockyard.engine.spec import RunOptions, build

    image = {
        "config": {
            "Cmd": ["sh"],
            "StopSignal": "SIGQUIT",
            "Healthcheck": {"Test": ["CMD-SHELL", "true"]},
        }
    }
    opts = RunOptions()
    config = build("c" * 64, image, opts)
    record = hostconfig.finish(config, opts, image)
    assert record["StopSignal"] == "SIGQUIT"
    assert record["Healthcheck"] == {"Test": ["CMD-SHELL", "true"]}
    assert record["Args"] == ["sh"]


def _checker(retries: int = 2) -> Checker:
    checker = Checker.__new__(Checker)
    checker.retries = retries
    checker.state = {"Status": "starting", "FailingStreak": 0, "Log": []}
    return checker


def test_health_rules() -> None:
    checker = _checker()
    fail = {"Start": "", "End": "", "ExitCode": 1, "Output": ""}
    ok = dict(fail, ExitCode=0)
    checker.record(fail, in_start_period=True)
    assert checker.state["Status"] == "starting" and checker.state["FailingStreak"] == 0
    checker.record(fail, in_start_period=False)
    assert checker.state["Status"] == "starting" and checker.state["FailingStreak"] == 1
    checker.record(ok, in_start_period=False)
    assert checker.state["Status"] == "healthy" and checker.state["FailingStreak"] == 0
    for _ in range(6):
        checker.record(fail, in_start_period=False)
    assert checker.state["Status"] == "unhealthy" and len(checker.state["Log"]) == 5
    assert status_suffix(checker.state) == " (unhealthy)"
    assert status_suffix({"Status": "starting"}) == " (health: starting)"
    assert status_suffix(None) == ""


def test_parse_timestamp() -> None:
    assert parse_timestamp("1136073600") == 1136073600.0
    assert parse_timestamp("1136073600.5") == 1136073600.5
    assert parse_timestamp("2006-01-01T00:00:00Z") == 1136073600.0
    assert parse_timestamp("2006-01-01T01:00:00+01:00") == 1136073600.0
    assert parse_timestamp("2006-01-01T00:00:00.25Z") == 1136073600.25
    assert abs(parse_timestamp("10m") - (time.time() - 600)) < 5
    with pytest.raises(UsageError):
        parse_timestamp("yesterday")
