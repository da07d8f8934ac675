"""The json-file log: Docker's exact line format, rotation, reading back, following."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

from dockyard.engine import logs
from dockyard.engine.logs import JsonFileWriter, read_logs

# A line as dockerd's json-file driver writes it.
DOCKER_SAMPLE = '{"log":"hi\\n","stream":"stdout","time":"2026-11-25T07:00:00.123456789Z"}\n'
LINE_RE = re.compile(
    r'^\{"log":"(?:[^"\\]|\\.)*","stream":"(stdout|stderr)",'
    r'"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z"\}$'
)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_entry_is_byte_for_byte_docker() -> None:
    ns = 1795590000_123456789  # 2026-11-25T07:00:00.123456789Z
    assert logs.encode_entry("stdout", b"hi", False, ns).decode() == DOCKER_SAMPLE


def test_time_is_go_rfc3339nano() -> None:
    base = 1795590000_000000000
    assert logs.format_time(base) == "2026-11-25T07:00:00Z"
    assert logs.format_time(base + 120_000_000) == "2026-11-25T07:00:00.12Z"
    assert logs.fixed_time("2026-11-25T07:00:00.12Z") == "2026-11-25T07:00:00.120000000Z"
    assert logs.parse_time("2026-11-25T07:00:00.5Z") == 1795590000.5


def test_escaping_like_docker() -> None:
    raw = b'a"b\\c\td<e>&f\x01\r\xff \xe2\x80\xa8 \xc3\xa9'
    got = logs.json_string(raw).decode()
    assert got == '"a\\"b\\\\c\\u0009d\\u003ce\\u003e\\u0026f\\u0001\\r\\ufffd \\u2028 \u00e9"'
    assert json.loads(got) == raw.decode("utf-8", "replace")


def test_writer_lines_and_streams(tmp_path: Path) -> None:
    path = tmp_path / "container-json.log"
    with JsonFileWriter(str(path)) as w:
        w.write("stdout", b"one\ntw")
        w.write("stderr", b"err\n")
        w.write("stdout", b"o\nthree")
    lines = _lines(path)
    assert all(LINE_RE.match(line) for line in lines), lines
    docs = [json.loads(line) for line in lines]
    assert list(docs[0]) == ["log", "stream", "time"]
    # the unterminated last line gets its newline at close, as Docker does at EOF
    assert [(d["stream"], d["log"]) for d in docs] == [
        ("stdout", "one\n"),
        ("stderr", "err\n"),
        ("stdout", "two\n"),
        ("stdout", "three\n"),
    ]


def test_long_line_split_into_partial_entries(tmp_path: Path) -> None:
    path = tmp_path / "container-json.log"
    line = b"x" * (logs.MAX_LINE * 2 + 100)
    with JsonFileWriter(str(path)) as w:
        for i in range(0, len(line), 1000):  # arrives in pieces, like from a pipe
            w.write("stdout", line[i : i + 1000])
        w.write("stdout", b"\nshort\n")
    texts = [json.loads(x)["log"] for x in _lines(path)]
    assert [len(t) for t in texts] == [logs.MAX_LINE, logs.MAX_LINE, 101, 6]
    assert not texts[0].endswith("\n") and texts[2].endswith("\n")
    assert "".join(texts) == line.decode() + "\nshort\n"


def test_rotation_keeps_max_files_and_reads_in_order(tmp_path: Path) -> None:
    path = tmp_path / "container-json.log"
    with JsonFileWriter(str(path), max_size=1000, max_files=3) as w:
        for i in range(200):
            w.write("stdout" if i % 3 else "stderr", f"line {i}\n".encode())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["container-json.log", "container-json.log.1", "container-json.log.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 1000
    got = [int(text.split()[1]) for _, _, text in read_logs(str(path))]
    assert got == list(range(got[0], 200))  # the oldest dropped, the rest in order
    assert got[0] > 0


def test_rotation_single_file(tmp_path: Path) -> None:
    path = tmp_path / "container-json.log"
    with JsonFileWriter(str(path), max_size=500, max_files=1) as w:
        for i in range(100):
            w.write("stdout", f"line {i}\n".encode())
    assert [p.name for p in tmp_path.iterdir()] == ["container-json.log"]
    assert path.stat().st_size <= 500
    assert list(read_logs(str(path)))[-1][2] == "line 99\n"


def _sample(tmp_path: Path) -> Path:
    path = tmp_path / "container-json.log"
    base = 1795590000_000000000
    with open(path, "wb") as f:
        for i in range(10):
            stream = "stderr" if i % 2 else "stdout"
            f.write(logs.encode_entry(stream, f"l{i}".encode(), False, base + i * 10**9))
    return path


def test_filters_tail_since_until_timestamps(tmp_path: Path) -> None:
    path = str(_sample(tmp_path))
    base = 1795590000.0
    assert [t for _, _, t in read_logs(path)] == [f"l{i}\n" for i in range(10)]
    assert [t for _, _, t in read_logs(path, tail=3)] == ["l7\n", "l8\n", "l9\n"]
    assert list(read_logs(path, tail=0)) == []
    assert [t for _, _, t in read_logs(path, stderr=False)] == [f"l{i}\n" for i in (0, 2, 4, 6, 8)]
    assert [t for _, _, t in read_logs(path, stdout=False, tail=2)] == ["l7\n", "l9\n"]
    assert [t for _, _, t in read_logs(path, since=base + 7)] == ["l7\n", "l8\n", "l9\n"]
    assert [t for _, _, t in read_logs(path, until=base + 1.5)] == ["l0\n", "l1\n"]
    assert [t for _, _, t in read_logs(path, since=base + 2, until=base + 3, tail=1)] == ["l3\n"]
    stream, stamp, text = next(read_logs(path, timestamps=True))
    assert (stream, stamp) == ("stdout", "2026-11-25T07:00:00Z")
    assert text == "2026-11-25T07:00:00.000000000Z l0\n"


def test_reader_skips_half_written_last_line(tmp_path: Path) -> None:
    path = _sample(tmp_path)
    with open(path, "ab") as f:
        f.write(b'{"log":"half')
    assert len(list(read_logs(str(path)))) == 10


def test_follow_picks_up_appended_lines_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "container-json.log"
    # ~5 entries a file; 4 files: the reader must keep up across several rotations
    writer = JsonFileWriter(str(path), max_size=400, max_files=4)
    writer.write("stdout", b"first\n")
    done = threading.Event()

    def produce() -> None:
        for i in range(60):
            writer.write("stdout", f"n{i}\n".encode())
            if i % 5 == 0:
                time.sleep(0.02)
        time.sleep(0.2)
        done.set()

    got: list[str] = []
    thread = threading.Thread(target=produce)
    thread.start()
    start = time.monotonic()
    for _, _, text in read_logs(str(path), follow=True, stop=done.is_set, poll_interval=0.005):
        got.append(text)
    thread.join()
    writer.close()
    assert time.monotonic() - start < 5
    assert got == ["first\n"] + [f"n{i}\n" for i in range(60)]
    assert os.path.exists(f"{path}.1")  # it did rotate under the reader


def test_follow_stops_when_told(tmp_path: Path) -> None:
    path = _sample(tmp_path)
    calls = []

    def stop() -> bool:
        calls.append(1)
        if len(calls) == 3:
            with JsonFileWriter(str(path)) as w:
                w.write("stdout", b"late\n")
        return len(calls) >= 5

    got = [t for _, _, t in read_logs(str(path), follow=True, tail=1, stop=stop)]
    assert got == ["l9\n", "late\n"]
