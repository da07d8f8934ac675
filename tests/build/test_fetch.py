"""ADD <url>: downloads from a real HTTP server on loopback (BuildKit's HTTP source rules)."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.build.fetch import (
    Fetched,
    FetchError,
    fetch_url,
    filename_for,
    parse_checksum,
    redact,
)

BODY = b"hello from the server\n" * 100
SHA256 = hashlib.sha256(BODY).hexdigest()
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
LAST_MODIFIED_EPOCH = 1445412480
TIMEOUT = 5.0


class Handler(http.server.BaseHTTPRequestHandler):
    release: threading.Event  # set by the fixture: lets a stalled response go at teardown

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest's output clean

    def send_body(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, code: int = 302) -> None:
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/files/hello.txt":
            self.send_body(BODY, {"Last-Modified": LAST_MODIFIED})
        elif path == "/files/plain.bin":
            self.send_body(BODY)
        elif path == "/files/space%20name.txt":
            self.send_body(b"spaced")
        elif path == "/files/asctime":
            self.send_body(b"x", {"Last-Modified": "Wed Oct 21 07:28:00 2015"})
        elif path == "/files/bad-date":
            self.send_body(b"x", {"Last-Modified": "yesterday"})
        elif path == "/disposition/":
            self.send_body(b"cd", {"Content-Disposition": 'attachment; filename="real.tgz"'})
        elif path == "/":
            self.send_body(b"index")
        elif path == "/redirect":
            self.redirect("/files/hello.txt")
        elif path == "/hops":  # /hops?N redirects N more times, then serves BODY
            left = int(query)
            if left:
                self.redirect(f"/hops?{left - 1}", 307)
            else:
                self.send_body(BODY)
        elif path == "/to-ftp":
            self.redirect("ftp://127.0.0.1/x")
        elif path == "/to-file":
            self.redirect("file:///etc/hostname")
        elif path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only ten b")
            self.close_connection = True
        elif path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.flush()
            self.release.wait(TIMEOUT)
        else:
            self.send_error(404)


@pytest.fixture
def server() -> Iterator[str]:
    release = threading.Event()
    handler = type("BoundHandler", (Handler,), {"release": release})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def fetch(
    url: str, tmp_path: Path, checksum: str | None = None, timeout: float = TIMEOUT
) -> Fetched:
    return fetch_url(url, str(tmp_path), checksum, timeout=timeout)


def test_download_with_last_modified(server: str, tmp_path: Path) -> None:
    f = fetch(f"{server}/files/hello.txt", tmp_path)
    assert f.filename == "hello.txt"
    assert f.digest == f"sha256:{SHA256}"
    assert f.size == len(BODY)
    assert f.mtime == LAST_MODIFIED_EPOCH
    assert f.url == f"{server}/files/hello.txt"
    st = os.stat(f.path)
    assert Path(f.path).read_bytes() == BODY
    assert os.path.dirname(f.path) == str(tmp_path)
    assert stat.S_IMODE(st.st_mode) == 0o600  # Docker's mode for a downloaded file
    assert int(st.st_mtime) == LAST_MODIFIED_EPOCH


def test_download_without_last_modified_is_epoch(server: str, tmp_path: Path) -> None:
    f = fetch(f"{server}/files/plain.bin", tmp_path)
    assert (f.filename, f.mtime, int(os.stat(f.path).st_mtime)) == ("plain.bin", 0, 0)
    assert fetch(f"{server}/files/bad-date", tmp_path).mtime == 0
    assert fetch(f"{server}/files/asctime", tmp_path).mtime == LAST_MODIFIED_EPOCH  # UTC


def test_two_downloads_of_one_name_do_not_collide(server: str, tmp_path: Path) -> None:
    first = fetch(f"{server}/files/hello.txt", tmp_path)
    second = fetch(f"{server}/files/hello.txt?again", tmp_path)
    assert first.path != second.path
    assert first.filename == second.filename == "hello.txt"


def test_redirect_keeps_the_requested_name(server: str, tmp_path: Path) -> None:
    f = fetch(f"{server}/redirect", tmp_path)
    assert f.filename == "redirect"  # BuildKit names the file after the URL in the Dockerfile
    assert f.url == f"{server}/files/hello.txt"
    assert f.mtime == LAST_MODIFIED_EPOCH
    assert f.digest == f"sha256:{SHA256}"


def test_redirects_are_bounded_as_go_does(server: str, tmp_path: Path) -> None:
    assert fetch(f"{server}/hops?9", tmp_path).digest == f"sha256:{SHA256}"
    with pytest.raises(FetchError, match=r"stopped after 10 redirects$"):
        fetch(f"{server}/hops?10", tmp_path)
    assert len(os.listdir(tmp_path)) == 1  # the refused download left nothing behind


def test_redirect_to_other_schemes_is_refused(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"unsupported URL scheme in \"ftp://"):
        fetch(f"{server}/to-ftp", tmp_path)
    with pytest.raises(FetchError, match=r"redirected to file:///etc/hostname: only http"):
        fetch(f"{server}/to-file", tmp_path)


def test_filename_from_the_decoded_path(server: str, tmp_path: Path) -> None:
    f = fetch(f"{server}/files/space%20name.txt", tmp_path)
    assert f.filename == "space name.txt"
    assert fetch(f"{server}/", tmp_path).filename == "__unnamed__"
    # BuildKit's frontend names the file itself: Content-Disposition is not used
    assert fetch(f"{server}/disposition/", tmp_path).filename == "disposition"


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://h/a/b.tar.gz?x=1#frag", "b.tar.gz"),
        ("http://h/dir/", "dir"),
        ("http://h/dir//", "dir"),
        ("http://h", "__unnamed__"),
        ("http://h/", "__unnamed__"),
        ("http://h/%E2%82%AC.txt", "\u20ac.txt"),
        ("http://h/a%2Fb", "b"),
        ("http://h/..", "__unnamed__"),
        ("http://h/x%00", "__unnamed__"),
        ("http://h/bad%zzescape", "__unnamed__"),
    ],
)
def test_filename_for(url: str, name: str) -> None:
    assert filename_for(url) == name


def test_checksum_match(server: str, tmp_path: Path) -> None:
    f = fetch(f"{server}/files/hello.txt", tmp_path, f"sha256:{SHA256}")
    assert f.digest == f"sha256:{SHA256}"
    sha512 = hashlib.sha512(BODY).hexdigest()
    f = fetch(f"{server}/files/hello.txt", tmp_path, f"sha512:{sha512}")
    assert f.digest == f"sha256:{SHA256}"  # the digest is sha256 whatever was pinned
    sha384 = hashlib.sha384(BODY).hexdigest()
    fetch(f"{server}/files/hello.txt", tmp_path, f"sha384:{sha384}")


def test_checksum_mismatch(server: str, tmp_path: Path) -> None:
    want = "sha256:" + "0" * 64
    with pytest.raises(FetchError) as info:
        fetch(f"{server}/files/hello.txt", tmp_path, want)
    assert str(info.value) == f"digest mismatch sha256:{SHA256}: {want}"
    want = "sha512:" + "0" * 128
    with pytest.raises(FetchError, match=r"^digest mismatch sha512:[0-9a-f]{128}: sha512:0+$"):
        fetch(f"{server}/files/hello.txt", tmp_path, want)
    assert os.listdir(tmp_path) == []  # the download is removed


@pytest.mark.parametrize(
    ("checksum", "message"),
    [
        ("abc", "invalid checksum digest format 'abc'"),
        ("sha256:", "invalid checksum digest format"),
        (":" + "0" * 64, "invalid checksum digest format"),
        ("md5:" + "0" * 32, "unsupported digest algorithm 'md5'"),
        ("sha256:abc", "invalid checksum digest length 'sha256:abc': sha256 takes 64"),
        ("sha256:" + "A" * 64, "invalid checksum digest format"),
        ("sha256:" + "g" * 64, "invalid checksum digest format"),
    ],
)
def test_malformed_checksum(checksum: str, message: str, tmp_path: Path) -> None:
    # checked before any connection: this URL would be refused
    with pytest.raises(FetchError, match="^" + message.replace("(", r"\(")) as info:
        fetch_url("http://127.0.0.1:9/x", str(tmp_path), checksum, timeout=TIMEOUT)
    assert "\n" not in str(info.value)


def test_parse_checksum() -> None:
    assert parse_checksum("sha256:" + "a" * 64) == ("sha256", "a" * 64)


def test_status_404(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as info:
        fetch(f"{server}/missing", tmp_path)
    assert str(info.value) == f'Get "{server}/missing": invalid response status 404'
    assert os.listdir(tmp_path) == []


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError) as info:
        fetch(f"http://127.0.0.1:{port}/x.txt", tmp_path)
    assert str(info.value) == f'Get "http://127.0.0.1:{port}/x.txt": connection refused'


def test_truncated_body(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"/short\": unexpected EOF"):
        fetch(f"{server}/short", tmp_path)
    assert os.listdir(tmp_path) == []


def test_read_timeout(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"/stall\": timed out"):
        fetch(f"{server}/stall", tmp_path, timeout=0.3)
    assert os.listdir(tmp_path) == []


def test_only_http_and_no_credentials(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"^unsupported URL scheme in \"ftp://h/x\""):
        fetch("ftp://h/x", tmp_path)
    with pytest.raises(FetchError, match="holds credentials, which ADD does not send") as info:
        fetch("http://user:secret@127.0.0.1:9/x", tmp_path)
    assert "secret" not in str(info.value)
    assert redact("https://u:p@h/x") == "https://u:xxxxx@h/x"
    assert redact("https://h/x") == "https://h/x"


def test_loopback_is_never_proxied(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "HTTP_PROXY"):  # a proxy that is not there
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert fetch(f"{server}/files/plain.bin", tmp_path).size == len(BODY)
