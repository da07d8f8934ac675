"""The Go-template subset behind `inspect -f` and `--format` (pure)."""

from __future__ import annotations

import pytest

from dockyard.cli.gotemplate import TemplateError, go_float, go_print, render
from dockyard.engine.stats import formatted, human_binary, human_decimal, record

DOC = {
    "Id": "abc",
    "Name": "/web",
    "State": {"Status": "running", "Pid": 42, "Running": True},
    "Args": ["-c", "sleep 1"],
    "Config": {"Labels": {"k": "v", "a": "b"}, "Cmd": ["sh", "-c"], "Env": None},
    "Size": 33554432,
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.Id}}", "abc"),
        ("id: {{.Id}}!", "id: abc!"),
        ("{{.State.Status}}/{{.State.Pid}}/{{.State.Running}}", "running/42/true"),
        ("{{.Size}}", "33554432"),
        ("{{json .Config.Labels}}", '{"a":"b","k":"v"}'),
        ("{{json .}}", None),
        ('{{index .Config.Labels "k"}}', "v"),
        ("{{index .Args 1}}", "sleep 1"),
        ("{{.Config.Cmd}}", "[sh -c]"),
        ("{{.Config.Labels}}", "map[a:b k:v]"),
        ("{{.Config.Env}}", "<nil>"),
        ("{{range .Args}}<{{.}}>{{end}}", "<-c><sleep 1>"),
        ("{{range .Config.Env}}x{{else}}none{{end}}", "none"),
        ("{{println .Id}}", "abc\n"),
        ('{{if eq .State.Status "running"}}up{{else}}down{{end}}', "up"),
        ("{{if .Config.Env}}env{{else if .Id}}id{{end}}", "id"),
        ("{{with .State}}{{.Pid}}{{end}}", "42"),
        ('{{join .Args ","}}', "-c,sleep 1"),
        ('{{upper .Id | printf "%s!"}}', "ABC!"),
        ("{{len .Args}}", "2"),
        ("a {{- .Id -}} b", "aabcb"),
        ("{{.}}", None),
    ],
)
def test_render(template: str, expected: str | None) -> None:
    out = render(template, DOC)
    if expected is not None:
        assert out == expected
    else:
        assert out


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{.Nope}}", 'template: :1:2: executing "" at <.Nope>: map has no entry for key "Nope"'),
        (
            "{{json .Nope}}",
            'template: :1:7: executing "" at <.Nope>: map has no entry for key "Nope"',
        ),
        ("{{nofunc .}}", 'template: :1:2: function "nofunc" not defined'),
        ("{{if .Id}}x", "unexpected EOF"),
        ("{{end}}", "unexpected {{end}}"),
        ("{{.Id", "unclosed action"),
    ],
)
def test_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template, DOC)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (42, "42"),
        (123456, "123456"),
        (1000000, "1e+06"),
        (33554432, "3.3554432e+07"),
        (0.5, "0.5"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-3, "-3"),
    ],
)
def test_go_float(value: float, text: str) -> None:
    assert go_float(value) == text


def test_go_print() -> None:
    assert go_print({"b": [1, True], "a": None}) == "map[a:<nil> b:[1 true]]"


def test_stats_record_and_format() -> None:
    class C:
        id = "f" * 64
        name = "box"

    before = {"cpu": {"usage_ns": 0}}
    after = {
        "cpu": {"usage_ns": 250_000_000},
        "memory": {"usage": 3 << 20, "inactive_file": 1 << 20, "limit": 32 << 20},
        "pids": {"current": 2},
        "blkio": {"read": 4096, "write": 2_000_000},
    }
    rec = record(C(), before, after, 500_000_000, 8 << 30, 4)  # type: ignore[arg-type]
    assert rec["cpu_percent"] == pytest.approx(50.0)
    shown = formatted(rec)
    assert shown["MemUsage"] == "2MiB / 32MiB" and shown["MemPerc"] == "6.25%"
    assert shown["CPUPerc"] == "50.00%" and shown["PIDs"] == "2"
    assert shown["BlockIO"] == "4.096kB / 2MB" and shown["NetIO"] == "0B / 0B"
    no_limit = record(C(), None, {"memory": {"usage": 10}}, 1, 8 << 30, 1)  # type: ignore[arg-type]
    assert no_limit["memory_limit"] == 8 << 30
    stopped = formatted(record(C(), None, None, 1, 8 << 30, 1))  # type: ignore[arg-type]
    assert stopped["CPUPerc"] == "--" and stopped["MemUsage"] == "-- / --"
    assert human_binary(1536) == "1.5KiB" and human_decimal(999) == "999B"


def test_fields_of_a_parenthesized_pipeline() -> None:
    from dockyard.cli.gotemplate import render

    doc = {
        "NetworkSettings": {
            "Networks": {"bridge": {"IPAddress": "10.1.1.2"}},
            "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]},
        }
    }
    assert render('{{(index .NetworkSettings.Networks "bridge").IPAddress}}', doc) == "10.1.1.2"
    assert render('{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}', doc) == "8080"
