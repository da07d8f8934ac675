"""The Python API's networking: docker-py's `ports=`, `network=` and the default bridge."""

from __future__ import annotations

import socket
import time

import dockyard
from dockyard.client import Container
from tests.test_client import client  # noqa: F401 - the fixture


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                conn.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            if data:
                return data.decode(errors="replace")
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered on 127.0.0.1:{port}")
        time.sleep(0.05)


def test_ports_publish_on_loopback_and_show_in_attrs(client: dockyard.Client) -> None:  # noqa: F811
    port = _free_port()
    web = client.containers.run(
        "busybox",
        "httpd -f -p 80 -h /etc",
        detach=True,
        name="web",
        ports={"80/tcp": ("127.0.0.1", port)},
    )
    assert isinstance(web, Container)
    assert _get(port, "/hostname").rstrip().endswith(web.short_id)
    settings = web.attrs["NetworkSettings"]
    assert settings["Ports"]["80/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    assert settings["IPAddress"] and settings["Networks"]["bridge"]["IPAddress"]
    web.remove(force=True)


def test_default_network_is_the_bridge_and_none_has_only_lo(client: dockyard.Client) -> None:  # noqa: F811
    out = client.containers.run("busybox", "cat /proc/net/dev", remove=True)
    assert isinstance(out, bytes) and b"eth0" in out
    out = client.containers.run("busybox", "cat /proc/net/dev", remove=True, network_mode="none")
    assert isinstance(out, bytes) and b"eth0" not in out and b"lo" in out
