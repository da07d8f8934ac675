"""--dns, --dns-search, --dns-option, --add-host and -h land in the container's files."""

from __future__ import annotations

from tests.cli.dockyard_helper import Dockyard


def test_dns_flags_and_extra_hosts_are_written(dy: Dockyard) -> None:
    out = dy(
        "run",
        "--rm",
        "-h",
        "box",
        "--dns",
        "10.1.2.3",
        "--dns-search",
        "example.test",
        "--dns-option",
        "ndots:2",
        "--add-host",
        "db.local:10.9.8.7",
        "busybox",
        "sh",
        "-c",
        "cat /etc/resolv.conf; echo ==; cat /etc/hosts; echo ==; hostname; cat /etc/hostname",
    ).stdout
    resolv, hosts, names = out.split("==\n")
    assert resolv.splitlines() == ["nameserver 10.1.2.3", "search example.test", "options ndots:2"]
    assert "10.9.8.7\tdb.local" in hosts.splitlines()
    assert any(line.endswith("\tbox") for line in hosts.splitlines())  # its address and name
    assert names.split() == ["box", "box"]


def test_bad_network_flags_are_one_line_errors(dy: Dockyard) -> None:
    for args, message in (
        (["--dns", "not-an-ip"], "not-an-ip is not an ip address"),
        (["--add-host", "nocolon"], "invalid argument 'nocolon' for --add-host"),
        (["-p", "1.2.3.4.5:80:80"], "invalid IP address"),
        (["-p", "80/icmp"], "invalid proto"),
        (["--network-alias", "x"], "only for user-defined networks"),
        (["--network", "none", "-p", "80:80"], ""),  # Docker ignores -p here: no error
    ):
        out = dy("run", "--rm", *args, "busybox", "true", check=False)
        if message:
            assert out.returncode == 125, (args, out.stderr)
            assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr
        else:
            assert out.returncode == 0, out.stderr
    assert dy("ps", "-aq").stdout == ""
