"""The kernel side of a container's network: bridges, veth pairs, addresses, routes.

Through iproute2's `ip -batch` (one exec per namespace). pyroute2, the library
DESIGN.md first named for this, costs 110-130 ms to import (its package loads
its whole NDB and CLI), eight times the 15 ms budget of a container's network
set-up; `ip` is already a dependency and does each step in ~1 ms.

The container end of a veth pair is created straight in the container's
network namespace (`netns PID`), so the pair disappears with that namespace
when the container's last process exits: a crash can't leak a veth.
"""

from __future__ import annotations

import os

from dockyard.runtime import syscalls as sc

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"


class LinkError(Exception):
    """A network device could not be set up; the message says which and why."""


def _run(script: str, netns_pid: int = 0) -> None:
    """`ip -batch -` fed `script` (in the network namespace of `netns_pid` when given)."""
    script_r, script_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - ends in execv or _exit
        try:
            os.close(script_w)
            os.close(err_r)
            if netns_pid:
                fd = os.open(f"/proc/{netns_pid}/ns/net", os.O_RDONLY)
                sc.current().setns(fd, sc.CLONE_NEWNET)
                os.close(fd)
            os.dup2(script_r, 0)
            os.dup2(err_w, 2)
            null = os.open("/dev/null", os.O_WRONLY)
            os.dup2(null, 1)
            os.execv(IP, [IP, "-batch", "-"])
        except BaseException as err:
            os.write(2, f"{err}\n".encode())
        finally:
            os._exit(127)
    os.close(script_r)
    os.close(err_w)
    try:
        os.write(script_w, script.encode())
    except BrokenPipeError:
        pass
    os.close(script_w)
    chunks = []
    while chunk := os.read(err_r, 65536):
        chunks.append(chunk)
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        message = b"".join(chunks).decode(errors="replace").strip().replace("\n", "; ")
        raise LinkError(message or f"ip -batch failed with status {status}")


def exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")


def _sysctl(path: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{path}") as f:
            if f.read().strip() == value:
                return
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)
    except OSError as err:
        raise LinkError(f"cannot set {path.replace('/', '.')}={value}: {err.strerror}") from None


def ensure_bridge(name: str, gateway: str, prefixlen: int) -> None:
    """The bridge exists, is up and has the gateway address (idempotent, race-safe)."""
    if not exists(name):
        try:
            _run(f"link add {name} type bridge\n")
        except LinkError as err:
            if not exists(name):  # (another dockyard made it meanwhile: fine)
                raise LinkError(f"cannot create bridge {name}: {err}") from None
    if not _has_address(name, gateway):
        try:
            _run(f"addr add {gateway}/{prefixlen} dev {name}\n")
        except LinkError as err:
            if "File exists" not in str(err) and not _has_address(name, gateway):
                raise LinkError(f"cannot give bridge {name} address {gateway}: {err}") from None
    if not _is_up(name):
        _run(f"link set {name} up\n")
    _sysctl("net/ipv4/ip_forward", "1")
    # DNAT of 127.0.0.1:PORT to a container routes a loopback source out of the bridge.
    _sysctl(f"net/ipv4/conf/{name}/route_localnet", "1")


def delete_bridge(name: str) -> None:
    if exists(name):
        try:
            _run(f"link del {name}\n")
        except LinkError:
            if exists(name):
                raise


def _is_up(name: str) -> bool:
    try:
        with open(f"/sys/class/net/{name}/flags") as f:
            return bool(int(f.read(), 16) & 1)
    except OSError:
        return False


def _has_address(name: str, address: str) -> bool:
    """Whether interface `name`'s primary IPv4 address is `address` (an ioctl, no exec)."""
    import _socket
    import fcntl
    import struct

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16s16x", name.encode())
        got = fcntl.ioctl(sock.fileno(), 0x8915, req)  # SIOCGIFADDR
    except OSError:
        return False
    finally:
        sock.close()
    return _socket.inet_ntoa(got[20:24]) == address


def attach(
    pid: int,
    host_ifname: str,
    bridge: str,
    ip: str,
    prefixlen: int,
    gateway: str | None,
    mac: str,
    container_ifname: str = "eth0",
) -> None:
    """A veth pair from `bridge` into the network namespace of process `pid`, with
    the container end named `container_ifname`, its address and MAC, and a
    default route via `gateway` (None: no default route, e.g. an internal network
    or a second network)."""
    if exists(host_ifname):  # left by a crash before its namespace went: replace it
        detach(host_ifname)
    try:
        _run(
            f"link add {host_ifname} type veth peer name {container_ifname}"
            f" address {mac} netns {pid}\n"
            f"link set {host_ifname} master {bridge} up\n"
            # Hairpin: with br_netfilter loaded, a container's connection to its own
            # published port (via a host address) is DNATed back to it and bridged
            # out of the port it came in on, which a bridge refuses unless asked.
            f"link set {host_ifname} type bridge_slave hairpin on\n"
        )
    except LinkError as err:
        detach(host_ifname)
        raise LinkError(f"cannot create veth {host_ifname} on {bridge}: {err}") from None
    try:
        _configure_inside(pid, container_ifname, ip, prefixlen, gateway)
    except LinkError as err:
        detach(host_ifname)
        raise LinkError(f"cannot configure {container_ifname} in the container: {err}") from None


def _configure_inside(pid: int, ifname: str, ip: str, prefixlen: int, gateway: str | None) -> None:
    """Address, up, default route of `ifname` in process `pid`'s network namespace: a
    forked child that joins it and uses the classic ioctls (SIOCSIFADDR,
    SIOCSIFNETMASK, SIOCSIFFLAGS, SIOCADDRT), ~0.3 ms where an `ip` exec costs 2-3."""
    err_r, err_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - ends in _exit
        code = 0
        try:
            os.close(err_r)
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            sc.current().setns(fd, sc.CLONE_NEWNET)
            os.close(fd)
            _ioctl_configure(ifname, ip, prefixlen, gateway)
        except BaseException as err:
            os.write(err_w, f"{getattr(err, 'strerror', None) or err}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(err_w)
    message = b""
    while chunk := os.read(err_r, 4096):
        message += chunk
    os.close(err_r)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise LinkError(message.decode(errors="replace") or f"status {status}")


def _ioctl_configure(ifname: str, ip: str, prefixlen: int, gateway: str | None) -> None:
    import _socket
    import fcntl
    import struct

    def sockaddr(address: str) -> bytes:  # struct sockaddr_in, 16 bytes
        return struct.pack("=HH4s8x", _socket.AF_INET, 0, _socket.inet_aton(address))

    mask = (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF
    name = ifname.encode()
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        fd = sock.fileno()
        fcntl.ioctl(fd, 0x8916, struct.pack("16s16s8x", name, sockaddr(ip)))  # SIOCSIFADDR
        netmask = _socket.inet_ntoa(mask.to_bytes(4, "big"))
        fcntl.ioctl(fd, 0x891C, struct.pack("16s16s8x", name, sockaddr(netmask)))  # NETMASK
        flags = struct.unpack("16sH22x", fcntl.ioctl(fd, 0x8913, struct.pack("16sH22x", name, 0)))[
            1
        ]
        fcntl.ioctl(fd, 0x8914, struct.pack("16sH22x", name, flags | 1))  # SIOCSIFFLAGS: up
        if gateway:
            import ctypes

            # struct rtentry (native layout): pad1, dst, gateway, genmask, flags
            # (RTF_UP|RTF_GATEWAY), pad2, pad3, pad4, metric, dev, mtu, window, irtt.
            dev = ctypes.create_string_buffer(name)
            entry = struct.pack(
                "@L16s16s16sHhLPhPLLH0L",
                0,
                sockaddr("0.0.0.0"),
                sockaddr(gateway),
                sockaddr("0.0.0.0"),
                0x0001 | 0x0002,
                0,
                0,
                0,
                0,
                ctypes.addressof(dev),
                0,
                0,
                0,
            )
            fcntl.ioctl(fd, 0x890B, entry)  # SIOCADDRT
    finally:
        sock.close()


def detach(host_ifname: str) -> None:
    """Delete the veth pair by its host end (both ends go); gone already is fine."""
    if not exists(host_ifname):
        return
    try:
        _run(f"link del {host_ifname}\n")
    except LinkError:
        if exists(host_ifname):
            raise


def host_veths(prefix: str = "veth") -> list[str]:
    """Host interfaces whose names start with `prefix` (for leak checks and repair)."""
    try:
        return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))
    except OSError:
        return []
