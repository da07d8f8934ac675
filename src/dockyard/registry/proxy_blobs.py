"""A blob coming from the upstream into the content store, served while it arrives.

One `BlobFetch` per blob a pull-through cache is fetching (proxy.py keeps them by
digest, so concurrent requests for a blob share one upstream GET). A thread reads
the upstream's response into the content store's writer (hashed as written,
verified and renamed into place at the end) and reports each step to the event
loop; any number of requests stream the blob from the growing file meanwhile,
each at its own pace (`respond`). The last byte is held back until the digest
was verified: a client never receives a complete body that is wrong. When the
fetch fails, the clients' connections are cut short (a short body is an error
to every client), and the next request starts a new fetch.
"""

from __future__ import annotations

import asyncio
import http.client
import os

from aiohttp import web

from dockyard.registry.client_errors import RegistryUnreachable
from dockyard.registry.client_http import describe_failure
from dockyard.registry.errors import RegistryError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable

    from dockyard.registry.client import RegistryClient
    from dockyard.registry.client_http import Response
    from dockyard.storage.content import LocalContentStore

READ_SIZE = 1 << 20
"""Most bytes read from the upstream, or from the growing file, at a time."""


class FetchStopped(Exception):
    """The server is shutting down: the fetch gave up."""


class BlobFetch:
    """One blob on its way from the upstream; the loop's view of the downloading thread.

    `repos` are the repositories the blob is linked into once it is stored (the one
    that asked first, and any that joined). The downloading thread reports to the
    event loop (`call_soon_threadsafe`); the attributes change in the loop only."""

    def __init__(self, digest: str, repo: str) -> None:
        self.digest = digest
        self.repos = {repo}
        self.size: int | None = None  # the upstream's Content-Length, once it answered
        self.written = 0  # bytes in the file so far
        self.fd = -1  # the growing file, open for reading (readers dup it)
        self.started = False
        self.committed = False
        self.error: RegistryError | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._response: Response | None = None  # the upstream's, while it is read

    @property
    def finished(self) -> bool:
        return self.committed or self.error is not None

    # -- the downloading thread -----------------------------------------------------------

    def download(
        self,
        client: RegistryClient,
        remote: str,
        store: LocalContentStore,
        loop: asyncio.AbstractEventLoop,
        stopping: Callable[[], bool],
    ) -> None:
        """GET the blob from the upstream into `store` (runs in a thread). Raises the
        client's errors, the content store's (digest or size wrong), FetchStopped."""
        resp = client.get_blob(remote, self.digest)
        self._response = resp
        try:
            length = resp.header("Content-Length")
            size = int(length) if length and length.isdigit() else None
            with store.writer(expected=self.digest, size=size) as writer:
                fd = os.open(writer.path, os.O_RDONLY | os.O_CLOEXEC)
                loop.call_soon_threadsafe(self._started, size, fd)
                while True:
                    if stopping():
                        raise FetchStopped("the server is stopping")
                    try:
                        data = resp.read1(READ_SIZE)
                    except (OSError, http.client.HTTPException) as err:
                        if stopping():
                            raise FetchStopped("the server is stopping") from None
                        raise RegistryUnreachable(
                            f"registry {client.host}: blob {self.digest} was cut short: "
                            f"{describe_failure(err)}"
                        ) from None
                    if not data:
                        break
                    writer.write(data)
                    writer.flush()  # readers read the file, not the writer's buffer
                    loop.call_soon_threadsafe(self._progress, writer.offset)
                if stopping():
                    raise FetchStopped("the server is stopping")
                writer.commit()
            resp.release()
        finally:
            self._response = None
            resp.close()

    def abort(self) -> None:
        """Make the downloading thread stop reading now (the server is stopping)."""
        resp = self._response
        if resp is not None:
            resp.abort()

    # -- in the loop ----------------------------------------------------------------------

    def _started(self, size: int | None, fd: int) -> None:
        if self.finished:  # too late: nobody will read it
            os.close(fd)
            return
        self.size = size
        self.fd = fd
        self.started = True
        self._wake()

    def _progress(self, written: int) -> None:
        self.written = written
        self._wake()

    def finish(self, error: RegistryError | None) -> None:
        """Stored (None) or failed: tell every reader, close the file (readers hold dups)."""
        if error is None:
            self.committed = True
        else:
            self.error = error
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, ready: Callable[[], bool]) -> None:
        """Until `ready()` (checked whenever the fetch moves on)."""
        loop = asyncio.get_running_loop()
        while not ready():
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            await waiter

    def sendable(self) -> int:
        """How many bytes a reader may send now: all but the last until it is verified."""
        if self.committed or self.size is None:
            return self.written
        return max(0, min(self.written, self.size - 1))

    def outcome(self) -> None:
        """After it finished: None when stored, else its error raised."""
        if self.error is not None:
            raise RegistryError(
                self.error.code, self.error.message, self.error.detail, self.error.status
            )


# -- answering requests ---------------------------------------------------------------------


async def head_response(
    request: web.Request, headers: dict[str, str], size: int
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=headers)
    response.content_length = size
    await response.prepare(request)
    return response


async def respond(
    fetch: BlobFetch, request: web.Request, headers: dict[str, str]
) -> web.StreamResponse | None:
    """Answer a GET/HEAD of the blob `fetch` brings; None when it is stored by now (the
    caller serves it from storage). A Range request waits for the whole blob."""
    await fetch.wait(lambda: fetch.started or fetch.finished)
    if fetch.finished:
        fetch.outcome()
        return None
    if request.method == "HEAD" and fetch.size is not None:
        return await head_response(request, headers, fetch.size)
    if request.method == "HEAD" or request.headers.get("Range"):
        await fetch.wait(lambda: fetch.finished)
        fetch.outcome()
        return None
    fd = os.dup(fetch.fd)  # still open: it closes only when the fetch finishes
    try:
        return await _stream(fetch, request, headers, fd)
    finally:
        os.close(fd)


async def _stream(
    fetch: BlobFetch, request: web.Request, headers: dict[str, str], fd: int
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=headers)
    if fetch.size is not None:
        response.content_length = fetch.size
    await response.prepare(request)
    offset = 0

    def more() -> bool:
        return fetch.finished or fetch.sendable() > offset

    while True:
        await fetch.wait(more)
        if fetch.error is not None:
            _cut(request)
            return response
        end = fetch.sendable()
        while offset < end:
            data = await asyncio.to_thread(os.pread, fd, min(READ_SIZE, end - offset), offset)
            if not data:  # the file is shorter than reported: never expected
                _cut(request)
                return response
            await response.write(data)
            offset += len(data)
        if fetch.committed and offset >= fetch.written:
            break
    await response.write_eof()
    return response


def _cut(request: web.Request) -> None:
    """End the connection mid-body: the client sees a short (failed) download."""
    transport = request.transport
    if transport is not None:
        transport.close()
