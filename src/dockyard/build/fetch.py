"""`ADD <url> <dest>`: download an http(s) URL as BuildKit's HTTP source does.

What is matched (moby/buildkit source/http/source.go and
frontend/dockerfile/dockerfile2llb/convert_copy.go):

- The name the file gets in the image is `path.Base` of the *requested* URL's
  (percent-decoded) path, never the redirected one; with no usable base (`/`,
  empty) it is `__unnamed__`, the frontend's fallback. The Dockerfile frontend
  always names the file, so BuildKit never uses Content-Disposition for ADD.
- The file's mode is 0600 and its mtime the response's Last-Modified, or the
  Unix epoch (0) when there is none or it does not parse.
- `digest` is sha256 of the bytes as received. `--checksum` is parsed as
  go-digest does (sha256, sha384 or sha512, lowercase hex of the exact length);
  a mismatch says `digest mismatch <got>: <want>`, as BuildKit's Snapshot does.
  BuildKit compares a sha384/sha512 checksum with its sha256 and so never
  matches; here the content is hashed with the checksum's own algorithm.
- A status outside 2xx (after redirects) is `invalid response status <code>`;
  9 redirects are followed and the 10th refused (Go's http.Client: `stopped after 10
  redirects`), to http(s) only. Proxies come from the environment, as Go's
  (never for loopback).

Nothing secret is sent: no cookies, no netrc, no Authorization; a URL with
`user:password@` is refused rather than stripped (Go would send it as basic
auth). Errors are one line, and name the URL with any password masked.
The timeout bounds the connect and each read, not the whole download.
"""

from __future__ import annotations

import hashlib
import os
import re

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import http.client
    import urllib.request
    from typing import IO

_CHUNK = 1 << 20
_MAX_REDIRECTS = 10  # Go's http.Client default, which BuildKit uses
_UNNAMED = "__unnamed__"
# go-digest's available algorithms and their hex lengths
_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class FetchError(Exception):
    """A URL that can't be fetched, or whose content isn't what was pinned (one line)."""


class Fetched:
    """A downloaded file: `path` (mode 0600, mtime set), `filename` (its name in the
    image), `mtime` (epoch seconds), `digest` ("sha256:<hex>"), `size`, and `url`
    (the final URL, after redirects)."""

    __slots__ = ("digest", "filename", "mtime", "path", "size", "url")

    def __init__(
        self, path: str, filename: str, mtime: int, digest: str, size: int, url: str
    ) -> None:
        self.path, self.filename, self.mtime = path, filename, mtime
        self.digest, self.size, self.url = digest, size, url

    def __repr__(self) -> str:
        return f"Fetched({self.filename!r}, {self.digest}, size={self.size}, mtime={self.mtime})"


def parse_checksum(checksum: str) -> tuple[str, str]:
    """(algorithm, hex) of an `ADD --checksum` value; FetchError when malformed."""
    algorithm, sep, hex_ = checksum.partition(":")
    fix = "use sha256:<64 hex digits> (or sha384:, sha512:)"
    if not sep or not algorithm or not hex_:
        raise FetchError(f"invalid checksum digest format {checksum!r}: {fix}")
    if algorithm not in _ALGORITHMS:
        raise FetchError(f"unsupported digest algorithm {algorithm!r} in --checksum: {fix}")
    if len(hex_) != _ALGORITHMS[algorithm]:
        raise FetchError(
            f"invalid checksum digest length {checksum!r}: "
            f"{algorithm} takes {_ALGORITHMS[algorithm]} hex digits"
        )
    if any(c not in "0123456789abcdef" for c in hex_):
        raise FetchError(f"invalid checksum digest format {checksum!r}: {fix} (lowercase)")
    return algorithm, hex_


def filename_for(url: str) -> str:
    """The name ADD gives the file: Go's `path.Base` of the URL's decoded path."""
    from urllib.parse import unquote, urlsplit

    try:
        path = urlsplit(url).path
    except ValueError:
        return _UNNAMED
    if _BAD_ESCAPE.search(path):
        return _UNNAMED  # Go's url.Parse fails on it, and the frontend falls back
    path = unquote(path, errors="surrogateescape").rstrip("/")
    base = path.rsplit("/", 1)[-1]
    # "." and "/" are Go's; "..", NUL and "" would not name a file in the image.
    if base in ("", ".", "..") or "\0" in base:
        return _UNNAMED
    return base


def redact(url: str) -> str:
    """The URL with a password masked, as BuildKit's urlutil.RedactCredentials does."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:xxxxx@{host}"))


def _check_url(url: str, shown: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise FetchError(f"invalid URL {shown!r}: {err}") from None
    if parts.scheme not in ("http", "https"):
        raise FetchError(f'unsupported URL scheme in "{shown}": only http:// and https://')
    if not parts.hostname:
        raise FetchError(f'invalid URL "{shown}": no host')
    if "@" in parts.netloc:
        raise FetchError(
            f'"{shown}" holds credentials, which ADD does not send: remove the "user@" part'
        )


def _quote(url: str) -> str:
    """Spaces and non-ASCII percent-encoded, as Go sends them; existing escapes kept."""
    from urllib.parse import quote

    return quote(url, safe="!#$%&'()*+,/:;=?@[]~", errors="surrogateescape")


def _opener(url: str) -> urllib.request.OpenerDirector:
    import urllib.request

    class Redirects(urllib.request.HTTPRedirectHandler):
        # urllib's own loop checks count distinct URLs; Go counts hops, so do that.
        max_redirections = max_repeats = 1 << 30

        def redirect_request(
            self,
            req: urllib.request.Request,
            fp: IO[bytes],
            code: int,
            msg: str,
            headers: http.client.HTTPMessage,
            newurl: str,
        ) -> urllib.request.Request | None:
            hops = getattr(req, "dockyard_hops", 0) + 1
            shown = redact(newurl)
            try:
                if hops >= _MAX_REDIRECTS:  # Go: the 10th redirect is refused
                    raise FetchError(f'Get "{redact(url)}": stopped after 10 redirects')
                _check_url(newurl, shown)
            except FetchError:
                fp.close()
                raise
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None:
                new.dockyard_hops = hops  # type: ignore[attr-defined]
            return new

    class Proxies(urllib.request.ProxyHandler):
        # Go's ProxyFromEnvironment never proxies loopback; urllib would, unless no_proxy says.
        def proxy_open(
            self, req: urllib.request.Request, proxy: str, type: str
        ) -> http.client.HTTPResponse | None:
            if _loopback(req.host):
                return None
            return super().proxy_open(req, proxy, type)

    return urllib.request.build_opener(Redirects(), Proxies())


def _loopback(host: str) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    try:
        name = urlsplit(f"//{host}").hostname or ""
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _mtime(value: str | None) -> int:
    """Last-Modified as epoch seconds; 0 when absent or unparsable (BuildKit's epoch)."""
    if not value:
        return 0
    from email.utils import mktime_tz, parsedate_tz

    parsed = parsedate_tz(value)
    if parsed is None:
        return 0
    try:  # a date without a zone (asctime) is UTC to Go, not local time
        return int(mktime_tz((*parsed[:9], parsed[9] or 0)))
    except (OverflowError, ValueError):
        return 0


def fetch_url(
    url: str, directory: str, checksum: str | None = None, timeout: float = 60.0
) -> Fetched:
    """Download `url` into a new file in `directory` (the caller's; it removes it)."""
    import http.client
    import tempfile
    import urllib.error
    import urllib.request

    from dockyard import __version__

    shown = redact(url)
    _check_url(url, shown)
    want = parse_checksum(checksum) if checksum else None
    where = f'Get "{shown}"'
    request = urllib.request.Request(_quote(url), headers={"User-Agent": f"dockyard/{__version__}"})
    try:
        response = _opener(url).open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if "not allowed" in str(err.msg):  # urllib refused a redirect to file: or the like
            raise FetchError(f"{where}: redirected to {redact(err.url)}: only http(s)") from None
        raise FetchError(f"{where}: invalid response status {err.code}") from None
    except urllib.error.URLError as err:
        raise FetchError(f"{where}: {_reason(err.reason)}") from None
    except (http.client.HTTPException, OSError) as err:
        raise FetchError(f"{where}: {_reason(err)}") from None
    sha256 = hashlib.sha256()
    other = hashlib.new(want[0]) if want and want[0] != "sha256" else None
    fd, path = tempfile.mkstemp(dir=directory, prefix=".add-")  # mode 0600, as Docker's
    size = 0
    try:
        with response, open(fd, "wb") as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                sha256.update(chunk)
                if other is not None:
                    other.update(chunk)
                size += len(chunk)
            length = response.headers.get("Content-Length")
            # http.client returns b"" when the server hangs up early; Go says so.
            if length and length.isdigit() and size < int(length):
                raise FetchError(f"{where}: unexpected EOF after {size} of {length} bytes")
        digest = "sha256:" + sha256.hexdigest()
        if want is not None:
            got = digest if other is None else f"{want[0]}:{other.hexdigest()}"
            if got != f"{want[0]}:{want[1]}":
                raise FetchError(f"digest mismatch {got}: {want[0]}:{want[1]}")
        mtime = _mtime(response.headers.get("Last-Modified"))
        os.utime(path, (mtime, mtime))
    except BaseException as err:
        os.unlink(path)
        if isinstance(err, (http.client.HTTPException, OSError)):
            raise FetchError(f"{where}: {_reason(err)}") from None
        raise
    return Fetched(path, filename_for(url), mtime, digest, size, response.geturl())


def _reason(reason: object) -> str:
    """One line for a network error: the OS's words where there are some."""
    import http.client

    if isinstance(reason, http.client.IncompleteRead):
        return "unexpected EOF"
    if isinstance(reason, TimeoutError) or str(reason) == "timed out":
        return "timed out (no data within the timeout)"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    text = str(reason).strip().splitlines()
    return text[0] if text and text[0] else type(reason).__name__
