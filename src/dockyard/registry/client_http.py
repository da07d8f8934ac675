"""HTTP/1.1 for the registry client: kept-alive connections shared by threads, TLS.

The standard library's `http.client` rather than aiohttp (DESIGN.md's choice for
HTTP): a pull is a few large streaming GETs, each hashed and written to disk as it
arrives. With one thread per layer, `recv`, `sha256` and `write` all release the
GIL, so layers really proceed in parallel on every CPU; an event loop would have
to hand the hashing and writing to threads anyway. It also keeps `aiohttp` (about
100 ms of imports) out of `pull` and `push`.

A `Transport` hands out connections by (scheme, host); a response goes back to the
pool once read to its end (else its connection is closed). A request that fails on
a reused connection the server had already closed is sent again on a new one.
"""

from __future__ import annotations

import http.client
import threading

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable
    from typing import BinaryIO

    Body = bytes | Callable[[], BinaryIO] | None

DEFAULT_TIMEOUT = 60.0
BLOCK = 1 << 20
"""Read and send size: fewer system calls and GIL round trips than http.client's 8 KiB."""
_IDLE_MAX = 8
_STALE = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


class Response:
    """One response; `release()` (or `with`) gives its connection back or closes it."""

    def __init__(
        self,
        transport: Transport,
        key: tuple[str, str, bool],
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        url: str,
    ) -> None:
        self._transport = transport
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp
        self.status = resp.status
        self.reason = resp.reason
        self.url = url

    def header(self, name: str) -> str | None:
        return self._resp.getheader(name)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        return self._resp.readinto(buffer)

    def read1(self, size: int = BLOCK) -> bytes:
        """What has arrived, up to `size` bytes, with at most one read of the socket."""
        return self._resp.read1(size)

    def read(self, limit: int | None = None) -> bytes:
        """The whole body; with `limit`, a body longer than that is an error (ValueError)."""
        if limit is None:
            return self._resp.read()
        data = self._resp.read(limit + 1)
        if len(data) > limit:
            self.close()
            raise ValueError(f"the response is larger than {limit} bytes")
        return data

    def release(self) -> None:
        """Done with it: the connection is reused when the body was read to its end."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        resp = self._resp
        if not resp.isclosed():
            try:  # a small unread rest (an error body) is cheaper to read than a reconnect
                left = resp.read(64 << 10)
                if not resp.isclosed() or len(left) >= 64 << 10:
                    conn.close()
                    return
            except (OSError, http.client.HTTPException):
                conn.close()
                return
        if resp.will_close:
            conn.close()
        else:
            self._transport._put(self._key, conn)

    def abort(self) -> None:
        """From another thread: end the connection, so that a blocked read returns now."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            import socket

            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Done with it, and its connection too (a body not read to its end)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.release()
        else:
            self.close()


class Transport:
    """Connections by (scheme, host:port, verify TLS); safe to use from many threads."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self._idle: dict[tuple[str, str, bool], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._contexts: dict[bool, ssl.SSLContext] = {}

    def _context(self, verify: bool) -> ssl.SSLContext:
        with self._lock:
            context = self._contexts.get(verify)
            if context is None:
                import ssl

                context = ssl.create_default_context()
                if not verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self._contexts[verify] = context
            return context

    def _get(self, key: tuple[str, str, bool]) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        scheme, netloc, verify = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                netloc, timeout=self.timeout, context=self._context(verify), blocksize=BLOCK
            )
        else:
            conn = http.client.HTTPConnection(netloc, timeout=self.timeout, blocksize=BLOCK)
        return conn, False

    def _put(self, key: tuple[str, str, bool], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < _IDLE_MAX:
                idle.append(conn)
                return
        conn.close()

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: Body = None,
        verify: bool = True,
    ) -> Response:
        """One request to an absolute `url`; raises OSError / http.client.HTTPException
        when no response came. `body`: bytes, or a function giving a fresh stream
        (called again when the request is retried)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        key = (parts.scheme, parts.netloc, verify)
        for attempt in range(2):
            conn, reused = self._get(key)
            stream = body() if callable(body) else body
            try:
                conn.request(method, target, body=stream, headers=headers or {})
                resp = conn.getresponse()
            except _STALE:
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed the idle connection: once more, anew
                raise
            except BaseException:
                conn.close()
                raise
            return Response(self, key, conn, resp, url)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


def describe_failure(err: BaseException) -> str:
    """Why no HTTP conversation happened, in a few words."""
    import socket

    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the host name: {err.strerror or err}"
    if isinstance(err, TimeoutError):
        return "timed out"
    text = type(err).__name__
    try:
        import ssl

        if isinstance(err, ssl.SSLError):
            reason = err.reason or str(err)
            if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
                return "http: server gave HTTP response to HTTPS client"
            return f"TLS handshake failed: {reason}"
    except ImportError:  # pragma: no cover - Python without ssl
        pass
    if isinstance(err, http.client.RemoteDisconnected):
        return "the connection was closed without an answer"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    return f"{text}: {err}" if str(err) else text
