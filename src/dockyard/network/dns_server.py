"""The serving side of the DNS server of user-defined networks (see dns.py).

One `Server` listens on UDP and TCP `port` (53) on the gateway address of
every user-defined network that has endpoints; the socket a query arrived on
says which network asks. Names of that network's containers (name, short id,
aliases) are answered here; everything else is forwarded to the host's
nameservers (resolv.conf) with a fresh random id, in a worker thread, and a
failed forward is answered with SERVFAIL. Internal networks get no forwarding
(SERVFAIL), as with Docker.

The listen set follows the DB: it is compared every `reload_interval` seconds
(and at once after `request_reload`, which main() wires to SIGHUP). Sockets are
bound with IP_FREEBIND, so a gateway whose bridge has no address yet is
listened on already. With nothing to serve for `idle_exit` seconds, `serve`
returns "idle".
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import sys
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from dockyard.network.dns_records import Records, ResolvWatcher, bare_ip
from dockyard.storage import db

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable

    from dockyard.network.dns_records import NetworkView

TTL = 60
RELOAD_INTERVAL = 0.5
FORWARD_TIMEOUT = 2.0  # per upstream; all of them together get twice that
TCP_IDLE = 10.0
MAX_WORKERS = 128  # forwards and TCP connections in flight at once
_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_IPV6_FREEBIND = 78
_HEADER = struct.Struct(">HHHHHH")


def _log(message: str) -> None:
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} dns[{os.getpid()}]: {message}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Listener:
    """The UDP and TCP sockets on one gateway address."""

    def __init__(self, gateway: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
        self.gateway = gateway
        self.udp = _bound(family, socket.SOCK_DGRAM, gateway, port)
        try:
            self.tcp = _bound(family, socket.SOCK_STREAM, gateway, port)
            self.tcp.listen(64)
        except BaseException:
            self.udp.close()
            raise

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def _bound(family: int, kind: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:  # listen before the bridge has its address (or while it is tentative)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        except OSError:
            pass
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Server:
    def __init__(
        self,
        root: str,
        port: int = 53,
        resolv_conf: str = "/etc/resolv.conf",
        idle_exit: float = 10.0,
        forward_timeout: float = FORWARD_TIMEOUT,
        reload_interval: float = RELOAD_INTERVAL,
        log: Callable[[str], None] = _log,
    ) -> None:
        self.root = os.path.abspath(root)
        self.port = port
        self.idle_exit = idle_exit
        self.forward_timeout = forward_timeout
        self.reload_interval = reload_interval
        self.log = log
        self.db_path = os.path.join(self.root, db.DB_NAME)
        self.conn = db.open_db(self.root)
        self.db_ino = os.stat(self.db_path).st_ino
        self.records = Records(self.conn)
        self.resolv = ResolvWatcher(resolv_conf)
        self.resolv_lock = threading.Lock()
        self.listeners: dict[str, Listener] = {}
        self.failed: dict[str, str] = {}  # gateway → the bind error last logged
        self.workers = threading.BoundedSemaphore(MAX_WORKERS)
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._drain_wake)
        self.reload_requested = False
        self.stop_requested = False
        self.errors = 0

    # ------------------------------------------------------------ control

    def request_reload(self) -> None:
        self.reload_requested = True
        self._wake()

    def request_stop(self) -> None:
        self.stop_requested = True
        self._wake()

    def _wake(self) -> None:
        try:
            self.wake_w.send(b"\0")
        except OSError:
            pass  # full or closed: the loop wakes anyway

    def _drain_wake(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                if not sock.recv(4096):
                    return
            except OSError:
                return

    def close(self) -> None:
        for listener in self.listeners.values():
            self.selector.unregister(listener.udp)
            self.selector.unregister(listener.tcp)
            listener.close()
        self.listeners.clear()
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()
        self.conn.close()

    def has_endpoints(self) -> bool:
        return bool(self.records.current())

    def db_gone(self) -> bool:
        try:
            return os.stat(self.db_path).st_ino != self.db_ino
        except OSError:
            return True

    # ------------------------------------------------------------ the loop

    def sync(self) -> set[str]:
        """Listen on exactly the gateways that have endpoints; the set listened on."""
        wanted = set(self.records.current())
        for gateway in list(self.listeners):
            if gateway not in wanted:
                listener = self.listeners.pop(gateway)
                self.selector.unregister(listener.udp)
                self.selector.unregister(listener.tcp)
                listener.close()
        for gateway in sorted(wanted - set(self.listeners)):
            try:
                listener = Listener(gateway, self.port)
            except OSError as exc:
                message = f"cannot listen on {gateway} port {self.port}: {exc.strerror or exc}"
                if self.failed.get(gateway) != message:
                    self.log(message)
                    self.failed[gateway] = message
                continue
            self.failed.pop(gateway, None)
            self.listeners[gateway] = listener
            self.selector.register(listener.udp, selectors.EVENT_READ, self._on_udp)
            self.selector.register(listener.tcp, selectors.EVENT_READ, self._on_accept)
        for gateway in list(self.failed):
            if gateway not in wanted:
                del self.failed[gateway]
        return wanted

    def serve(self) -> str:
        """Serve until asked to stop ("stop"), idle too long ("idle") or the DB is gone."""
        idle_since: float | None = None
        next_sync = 0.0
        while not self.stop_requested:
            now = time.monotonic()
            if self.reload_requested or now >= next_sync:
                self.reload_requested = False
                if self.db_gone():
                    return "gone"
                try:
                    serving = self.sync()
                except Exception as exc:  # the DB, most likely: try again next time
                    self.log(f"cannot read the networks: {exc}")
                    serving = set(self.listeners)
                if serving:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= self.idle_exit:
                    return "idle"
                next_sync = now + self.reload_interval
            timeout = max(0.0, next_sync - time.monotonic())
            for key, _ in self.selector.select(timeout):
                key.data(key.fileobj)
        return "stop"

    # ------------------------------------------------------------ UDP

    def _on_udp(self, sock: socket.socket) -> None:
        gateway = sock.getsockname()[0]
        for _ in range(64):  # drain what is there, but let other sockets have a turn
            try:
                wire, peer = sock.recvfrom(65535)
            except OSError:
                return

            def reply(
                data: bytes, sock: socket.socket = sock, peer: tuple[object, ...] = peer
            ) -> None:
                try:
                    sock.sendto(data, peer)
                except OSError:
                    pass

            self.guarded(wire, gateway, reply, tcp=False)

    # ------------------------------------------------------------ TCP

    def _on_accept(self, sock: socket.socket) -> None:
        gateway = sock.getsockname()[0]
        for _ in range(16):
            try:
                conn, _peer = sock.accept()
            except OSError:
                return
            if not self.workers.acquire(blocking=False):
                conn.close()
                continue
            thread = threading.Thread(
                target=self._tcp_connection, args=(conn, gateway), daemon=True
            )
            try:
                thread.start()
            except RuntimeError:
                conn.close()
                self.workers.release()

    def _tcp_connection(self, conn: socket.socket, gateway: str) -> None:
        try:
            conn.settimeout(TCP_IDLE)

            def reply(data: bytes) -> None:
                try:
                    conn.sendall(struct.pack(">H", len(data)) + data)
                except OSError:
                    pass

            for _ in range(1000):
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                wire = _recv_exact(conn, struct.unpack(">H", head)[0])
                if wire is None:
                    return
                self.guarded(wire, gateway, reply, tcp=True, inline=True)
        finally:
            conn.close()
            self.workers.release()

    # ------------------------------------------------------------ queries

    def guarded(
        self,
        wire: bytes,
        gateway: str,
        reply: Callable[[bytes], None],
        tcp: bool,
        inline: bool = False,
    ) -> None:
        """`handle`, and a SERVFAIL instead of the server's end when it fails."""
        try:
            self.handle(wire, gateway, reply, tcp, inline)
        except Exception as exc:
            self.errors += 1
            if self.errors <= 100:  # a query that trips us up may come again and again
                self.log(f"query on {gateway} failed: {exc!r}")
            if len(wire) >= 12:
                reply(_error_reply(wire, dns.rcode.SERVFAIL))

    def handle(
        self,
        wire: bytes,
        gateway: str,
        reply: Callable[[bytes], None],
        tcp: bool,
        inline: bool = False,
    ) -> None:
        """Answer one query that arrived on `gateway`: here, or by forwarding it."""
        if len(wire) < 12 or wire[2] & 0x80:  # too short for a header, or a response
            return
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            reply(_error_reply(wire, dns.rcode.FORMERR))
            return
        views = self.records.current()
        view = views.get(gateway)
        if query.opcode() != dns.opcode.QUERY:
            response = dns.message.make_response(query, recursion_available=True)
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response = dns.message.make_response(query, recursion_available=True)
            response.set_rcode(dns.rcode.FORMERR)
        else:
            with self.resolv_lock:
                conf = self.resolv.current()
            local = None if view is None else self.local_answer(query, view, conf.search)
            if local is not None:
                response = local
            elif view is not None and view.internal:
                response = dns.message.make_response(query, recursion_available=True)
                response.set_rcode(dns.rcode.SERVFAIL)
            else:
                # Never to ourselves: a host whose resolv.conf names a gateway.
                upstreams = [ns for ns in conf.nameservers if ns not in views]
                self._forward(query, wire, upstreams, reply, tcp, inline)
                return
        reply(_to_wire(response, query, tcp))

    def local_answer(
        self, query: dns.message.Message, view: NetworkView, search: tuple[str, ...]
    ) -> dns.message.Message | None:
        """The answer from `view`'s containers, or None when the name is not theirs."""
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            return None
        qname = question.name
        rdtype = question.rdtype
        if rdtype == dns.rdatatype.PTR:
            target = _ptr_target(view, qname)
            if target is not None:
                response = dns.message.make_response(query, recursion_available=True)
                response.flags |= dns.flags.AA
                response.answer.append(
                    dns.rrset.from_text_list(qname, TTL, "IN", "PTR", [target.to_text()])
                )
                return response
        addresses = view.lookup(qname.to_text(omit_final_dot=True), search)
        if addresses is None:
            return None
        response = dns.message.make_response(query, recursion_available=True)
        response.flags |= dns.flags.AA
        v4 = [a for a in addresses if ":" not in a]
        v6 = [a for a in addresses if ":" in a]
        wanted: list[tuple[str, list[str]]] = []
        if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
            wanted.append(("A", v4))
        if rdtype in (dns.rdatatype.AAAA, dns.rdatatype.ANY):
            wanted.append(("AAAA", v6))
        for kind, found in wanted:
            if found:
                response.answer.append(dns.rrset.from_text_list(qname, TTL, "IN", kind, found))
        return response  # a name of ours with no record of that type: NOERROR, empty

    # ------------------------------------------------------------ forwarding

    def _forward(
        self,
        query: dns.message.Message,
        wire: bytes,
        upstreams: list[str],
        reply: Callable[[bytes], None],
        tcp: bool,
        inline: bool,
    ) -> None:
        def run() -> None:
            answer = forward(wire, upstreams, tcp, self.forward_timeout)
            if answer is None:
                response = dns.message.make_response(query, recursion_available=True)
                response.set_rcode(dns.rcode.SERVFAIL)
                answer = _to_wire(response, query, tcp)
            reply(answer)

        if inline:
            run()
            return
        if not self.workers.acquire(blocking=False):  # swamped: fail fast
            response = dns.message.make_response(query, recursion_available=True)
            response.set_rcode(dns.rcode.SERVFAIL)
            reply(_to_wire(response, query, tcp))
            return

        def worker() -> None:
            try:
                run()
            finally:
                self.workers.release()

        try:
            threading.Thread(target=worker, daemon=True).start()
        except RuntimeError:
            self.workers.release()


def forward(wire: bytes, upstreams: list[str], tcp: bool, timeout: float) -> bytes | None:
    """Ask `upstreams` (port 53) in turn; their reply with the client's id, or None.

    Each gets at most `timeout` seconds and all of them together twice that.
    The query goes out with a fresh random id, and only a reply with that id
    from the upstream the query was sent to is taken.
    """
    client_id = wire[:2]
    deadline = time.monotonic() + 2 * timeout
    for upstream in upstreams:
        left = min(timeout, deadline - time.monotonic())
        if left <= 0:
            break
        our_id = os.urandom(2)
        out = our_id + wire[2:]
        try:
            answer = (_tcp_exchange if tcp else _udp_exchange)(out, upstream, left)
        except OSError:
            continue
        if answer is not None:
            return client_id + answer[2:]
    return None


def _udp_exchange(wire: bytes, upstream: str, timeout: float) -> bytes | None:
    family = socket.AF_INET6 if ":" in upstream else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect((upstream, 53))  # a refusal (ICMP) then fails recv at once
        sock.send(wire)
        for _ in range(16):  # skip stray datagrams that are not our reply
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            answer = sock.recv(65535)
            if _is_reply(answer, wire):
                return answer
    return None


def _tcp_exchange(wire: bytes, upstream: str, timeout: float) -> bytes | None:
    with socket.create_connection((upstream, 53), timeout=timeout) as sock:
        sock.sendall(struct.pack(">H", len(wire)) + wire)
        head = _recv_exact(sock, 2)
        if head is None:
            return None
        answer = _recv_exact(sock, struct.unpack(">H", head)[0])
    return answer if answer is not None and _is_reply(answer, wire) else None


def _is_reply(answer: bytes, query: bytes) -> bool:
    return len(answer) >= 12 and answer[:2] == query[:2] and bool(answer[2] & 0x80)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def _ptr_target(view: NetworkView, qname: dns.name.Name) -> dns.name.Name | None:
    try:
        address = bare_ip(dns.reversename.to_address(qname))
    except (dns.exception.DNSException, ValueError):
        return None
    name = view.ptr.get(address)
    if not name:
        return None
    try:
        return dns.name.from_text(name)
    except dns.exception.DNSException:
        return None


def _to_wire(response: dns.message.Message, query: dns.message.Message, tcp: bool) -> bytes:
    if tcp:
        limit = 65535
    elif query.edns >= 0:
        limit = max(512, min(query.payload, 65535))
    else:
        limit = 512
    try:
        return response.to_wire(max_size=limit, prefer_truncation=True)
    except dns.exception.DNSException:
        response.answer.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit, prefer_truncation=True)


def _error_reply(wire: bytes, rcode: int) -> bytes:
    """A header-only reply for a query dnspython could not parse."""
    ident, flags = struct.unpack(">HH", wire[:4])
    flags = 0x8000 | (flags & 0x7900) | 0x0080 | (rcode & 0xF)  # QR, opcode+RD, RA
    return _HEADER.pack(ident, flags, 0, 0, 0, 0)
