"""`run`'s own exit codes, as Docker's: 125 run failed, 126 not invocable, 127 not found."""

from __future__ import annotations

import pytest

from tests.cli.dockyard_helper import Dockyard


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["busybox", "/no/such"], 127),
        (["busybox", "nosuchcmd"], 127),
        (["busybox", "/etc/passwd"], 126),
        (["nosuchimage"], 125),
        (["-m", "lots", "busybox", "true"], 125),
        (["busybox", "sh", "-c", "exit 9"], 9),
    ],
)
def test_run_exit_codes(dy: Dockyard, args: list[str], code: int) -> None:
    out = dy("run", "--rm", *args, check=False)
    assert out.returncode == code, out.stderr
    assert dy("ps", "-aq").stdout == ""
