"""The Python API, shaped like docker-py's models so its users feel at home.

    import dockyard
    client = dockyard.Client()
    print(client.containers.run("busybox", ["echo", "hi"], remove=True))
    web = client.containers.run("busybox", "sleep 60", detach=True, name="web")
    print(web.exec_run("echo hi"))          # ExecResult(exit_code=0, output=b'hi\n')
    web.stop(); web.remove()
    data = client.volumes.create("data")

It calls the same engine functions as the `dockyard` CLI, in this process, with
no daemon.
"""

from __future__ import annotations

import os

from dockyard.client_build import BuildError
from dockyard.client_running import ExecResult, ExecStream
from dockyard.client_volumes import Volume, VolumeCollection, VolumeError, VolumeNotFound
from dockyard.engine.containers import Container as _Record
from dockyard.engine.containers import ContainerNotFound, Engine, EngineError
from dockyard.engine.spec import RunOptions

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import builtins
    from typing import Any, BinaryIO

    from dockyard.engine.mountspec import MountSpec
    from dockyard.image.store import Image as _ImageRecord

__all__ = [
    "BuildError",
    "Client",
    "Container",
    "ContainerError",
    "ContainerNotFound",
    "EngineError",
    "ExecResult",
    "ExecStream",
    "Image",
    "Volume",
    "VolumeError",
    "VolumeNotFound",
]

DEFAULT_ROOT = "/var/lib/dockyard"


class ContainerError(EngineError):
    """`containers.run` without detach: the command exited non-zero (as docker-py raises)."""

    def __init__(self, container: Container, exit_status: int, command: list[str], stderr: bytes):
        self.container = container
        self.exit_status = exit_status
        self.stderr = stderr
        super().__init__(
            f"Command '{' '.join(command)}' in image '{container.image}' returned non-zero "
            f"exit status {exit_status}: {stderr.decode(errors='replace').strip()}"
        )


class Client:
    """Everything under one state root (`root`, `DOCKYARD_ROOT`, or /var/lib/dockyard)."""

    def __init__(self, root: str | None = None) -> None:
        self.engine = Engine(root or os.environ.get("DOCKYARD_ROOT") or DEFAULT_ROOT)
        # One monitor server, booted now, forks the monitor of every start: no
        # container waits for an interpreter start (engine/monitor_server.py).
        self.engine.keep_warm = True
        self.engine.boot_monitor_server()
        self.containers = ContainerCollection(self)
        self.images = ImageCollection(self)
        self.volumes = VolumeCollection(self)

    def close(self) -> None:
        """Let the monitor server go (running containers keep running), as docker-py's
        `close()` closes its connection; the client boots a new one if used again."""
        self.engine.close()

    @classmethod
    def from_env(cls) -> Client:
        return cls()


class Container:
    """docker-py's Container model."""

    def __init__(self, client: Client, record: _Record) -> None:
        self.client = client
        self._record = record

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def short_id(self) -> str:
        return self._record.id[:12]

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def status(self) -> str:
        return self._record.status()

    @property
    def image(self) -> str:
        return self._record.image_ref

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._record.config.get("Labels") or {})

    @property
    def attrs(self) -> dict[str, Any]:
        """`dockyard inspect`'s object for the container, as it is now."""
        from dockyard.engine.inspect import container_document

        return container_document(self.client.engine, self._record)

    def reload(self) -> None:
        self._record = self.client.engine.get(self.id)

    def start(self) -> None:
        self.client.engine.start(self.id)

    def stop(self, timeout: float = 10) -> None:
        self.client.engine.stop(self.id, timeout=timeout)

    def kill(self, signal: int | str = 9) -> None:
        from dockyard.runtime.cli import parse_signal

        self.client.engine.kill(
            self.id, signal if isinstance(signal, int) else parse_signal(signal)
        )

    def remove(self, force: bool = False, v: bool = False) -> None:
        """`v`: also remove its anonymous volumes (`rm -v`)."""
        self.client.engine.remove(self.id, force=force, volumes=v)

    def pause(self) -> None:
        from dockyard.engine import control

        control.pause(self.client.engine, self.id)

    def unpause(self) -> None:
        from dockyard.engine import control

        control.unpause(self.client.engine, self.id)

    def rename(self, name: str) -> None:
        from dockyard.engine import control

        self._record = control.rename(self.client.engine, self.id, name)

    def top(self, ps_args: str | None = None) -> dict[str, Any]:
        """{"Titles": [...], "Processes": [[...], ...]} from `ps` (ps_args: "-ef" by default)."""
        import shlex

        from dockyard.engine import control

        titles, rows = control.top(self.client.engine, self.id, shlex.split(ps_args or ""))
        return {"Titles": titles, "Processes": rows}

    def stats(
        self, decode: bool | None = None, stream: bool = True, one_shot: bool | None = None
    ) -> Any:
        """Docker's stats object: with stream (the default) an iterator of them, one a
        second until the container stops (JSON bytes, or dicts with `decode`);
        otherwise one dict (CPU figures over half a second, none with `one_shot`)."""
        from dockyard import client_running

        return client_running.stats(self.client.engine, self.id, stream, decode, one_shot)

    def exec_run(
        self,
        cmd: str | list[str],
        stdout: bool = True,
        stderr: bool = True,
        stdin: bool = False,
        tty: bool = False,
        privileged: bool = False,
        user: str | int = "",
        detach: bool = False,
        stream: bool = False,
        socket: bool = False,
        environment: dict[str, str] | list[str] | None = None,
        workdir: str | None = None,
        demux: bool = False,
    ) -> ExecResult:
        """Run a command in the running container, as `dockyard exec`: ExecResult(exit_code,
        output). output is bytes (stdout and stderr as they came), (stdout, stderr) with
        demux (None for a stream that said nothing), or with stream an ExecStream of
        chunks (exit_code None; the stream's own exit_code once it ended). detach: start
        it and return ExecResult(None, b""). A command that can't start gives Docker's
        126/127 and the message as output. stdin: the process reads /dev/null (there is
        no socket to write to; socket=True raises EngineError)."""
        from dockyard import client_running

        return client_running.exec_run(
            self.client.engine,
            self.id,
            cmd,
            stdout=stdout,
            stderr=stderr,
            tty=tty,
            privileged=privileged,
            user=user,
            detach=detach,
            stream=stream,
            socket=socket,
            environment=environment,
            workdir=workdir,
            demux=demux,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Container) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("Container", self.id))

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        code = self.client.engine.wait(self.id, timeout=timeout)
        return {"StatusCode": code, "Error": None}

    def logs(
        self,
        stdout: bool = True,
        stderr: bool = True,
        timestamps: bool = False,
        tail: int | str = "all",
        follow: bool = False,
    ) -> bytes:
        entries = self.client.engine.logs(
            self.id,
            stdout=stdout,
            stderr=stderr,
            timestamps=timestamps,
            tail=None if tail == "all" else int(tail),
            follow=follow,
        )
        return "".join(text for _, _, text in entries).encode()

    def __repr__(self) -> str:
        return f"<Container: {self.short_id}>"


def _mount_specs(
    volumes: dict[str, Any] | list[str] | None, tmpfs: dict[str, str] | None
) -> list[MountSpec]:
    """docker-py's `volumes` ({source: {"bind": target, "mode": "rw"}} or ["source:target:mode",
    "/anonymous"]) and `tmpfs` ({target: "size=64m"}) as `-v` and `--tmpfs` would give them."""
    from dockyard.engine import mountspec

    binds: list[str] = []
    if isinstance(volumes, dict):
        for source, value in volumes.items():
            if not isinstance(value, dict):
                binds.append(f"{source}:{value}:rw")
                continue
            if "ro" in value and "mode" in value:
                raise EngineError(f'Binding cannot contain both "ro" and "mode": {value!r}')
            mode = ("ro" if value["ro"] else "rw") if "ro" in value else value.get("mode", "rw")
            if value.get("propagation"):
                mode = f"{mode},{value['propagation']}" if mode else value["propagation"]
            binds.append(f"{source}:{value['bind']}:{mode}")
    else:
        binds = list(volumes or [])
    return [
        *(mountspec.parse_volume(b) for b in binds),
        *(
            mountspec.parse_tmpfs(f"{target}:{options}" if options else target)
            for target, options in (tmpfs or {}).items()
        ),
    ]


def _ports(ports: dict[str, Any] | None) -> list[tuple[str, str, int, int]]:
    """docker-py's `ports` → (proto, host_ip, host_port or 0, container_port) entries."""
    wanted: list[tuple[str, str, int, int]] = []
    for key, value in (ports or {}).items():
        port, _, proto = str(key).partition("/")
        for binding in value if isinstance(value, list) else [value]:
            if isinstance(binding, tuple):
                host_ip, host_port = binding[0], binding[1] if len(binding) > 1 else 0
            else:
                host_ip, host_port = "", binding
            wanted.append((proto or "tcp", host_ip, int(host_port or 0), int(port)))
    return wanted


def _as_list(value: str | list[str] | None) -> list[str] | None:
    import shlex

    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else list(value)


class ContainerCollection:
    def __init__(self, client: Client) -> None:
        self.client = client

    def create(
        self,
        image: str,
        command: str | list[str] | None = None,
        *,
        name: str | None = None,
        environment: dict[str, str] | list[str] | None = None,
        working_dir: str | None = None,
        user: str | int | None = None,
        hostname: str | None = None,
        entrypoint: str | list[str] | None = None,
        labels: dict[str, str] | None = None,
        read_only: bool = False,
        privileged: bool = False,
        cap_add: list[str] | None = None,
        cap_drop: list[str] | None = None,
        mem_limit: int | str | None = None,
        pids_limit: int | None = None,
        network_mode: str | None = None,
        restart_policy: dict[str, Any] | None = None,
        auto_remove: bool = False,
        tty: bool = False,
        volumes: dict[str, Any] | list[str] | None = None,
        tmpfs: dict[str, str] | None = None,
        ports: dict[str, Any] | None = None,
        publish_all_ports: bool = False,
        network: str | None = None,
        dns: list[str] | None = None,
        extra_hosts: dict[str, str] | None = None,
    ) -> Container:
        """docker-py's `create` for the options listed; `volumes`/`tmpfs`/`ports` as
        docker-py's (`{"80/tcp": 8080}`, `("127.0.0.1", 8080)`, `None` for any port,
        or a list of those)."""
        env = (
            [f"{k}={v}" for k, v in environment.items()]
            if isinstance(environment, dict)
            else list(environment or [])
        )
        resources: dict[str, Any] = {}
        if mem_limit is not None:
            from dockyard.engine.spec import parse_size

            limit = mem_limit if isinstance(mem_limit, int) else parse_size(mem_limit)
            resources["memory"] = {"limit": limit}
        if pids_limit:
            resources["pids"] = {"limit": pids_limit}
        opts = RunOptions(
            command=_as_list(command),
            entrypoint=_as_list(entrypoint),
            env=env,
            workdir=working_dir,
            user_spec=None if user is None else str(user),
            hostname=hostname,
            tty=tty,
            read_only=read_only,
            privileged=privileged,
            cap_add=cap_add,
            cap_drop=cap_drop,
            network=network or network_mode or "bridge",
            resources=resources,
            labels=labels,
            mount_specs=_mount_specs(volumes, tmpfs),
            publish=_ports(ports),
            publish_all=publish_all_ports,
            dns=dns,
            extra_hosts=[f"{host}:{ip}" for host, ip in (extra_hosts or {}).items()],
        )
        policy = restart_policy or {"Name": "no"}
        record = self.client.engine.create(
            image,
            opts,
            name=name,
            restart_policy={
                "name": policy.get("Name", policy.get("name", "no")),
                "maximum_retry_count": policy.get(
                    "MaximumRetryCount", policy.get("maximum_retry_count", 0)
                ),
            },
            auto_remove=auto_remove,
        )
        return Container(self.client, record)

    def run(
        self,
        image: str,
        command: str | list[str] | None = None,
        *,
        detach: bool = False,
        remove: bool = False,
        stdout: bool = True,
        stderr: bool = False,
        **kwargs: Any,
    ) -> Container | bytes:
        """detach: the running Container; otherwise its output (ContainerError on failure)."""
        container = self.create(image, command, auto_remove=remove and detach, **kwargs)
        try:
            container.start()
        except BaseException:
            container.remove(force=True)
            raise
        if detach:
            return container
        code = container.wait()["StatusCode"]
        output = container.logs(stdout=stdout, stderr=stderr)
        if code != 0:
            error = ContainerError(
                container,
                code,
                container._record.command,
                container.logs(stdout=False, stderr=True),
            )
            if remove:
                container.remove(force=True)
            raise error
        if remove:
            container.remove(force=True)
        return output

    def get(self, container_id: str) -> Container:
        return Container(self.client, self.client.engine.get(container_id))

    def list(self, all: bool = False) -> list[Container]:
        return [Container(self.client, r) for r in self.client.engine.list_containers(all=all)]


class Image:
    """docker-py's Image model."""

    def __init__(self, client: Client, record: _ImageRecord) -> None:
        self.client = client
        self._record = record

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def short_id(self) -> str:
        return self._record.id[:19]  # "sha256:" + 12, as docker-py

    @property
    def tags(self) -> list[str]:
        from dockyard.image.reference import parse

        return [parse(t).familiar() for t in self._record.tags]

    @property
    def labels(self) -> dict[str, str]:
        return dict((self._record.config.get("config") or {}).get("Labels") or {})

    def tag(self, repository: str, tag: str | None = None) -> bool:
        self.client.images.store.tag(self.id, f"{repository}:{tag}" if tag else repository)
        return True

    def __repr__(self) -> str:
        return f"<Image: {', '.join(repr(t) for t in self.tags)}>"


class ImageCollection:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.store = client.engine.images

    def get(self, name: str) -> Image:
        return Image(self.client, self.store.get(name))

    def list(self) -> list[Image]:
        return [Image(self.client, r) for r in self.store.list_images()]

    def remove(self, image: str, force: bool = False) -> None:
        self.store.remove(image, force=force)

    def build(self, **kwargs: Any) -> tuple[Image, builtins.list[dict[str, Any]]]:
        """docker-py's `images.build(path=…, tag=…, dockerfile=…, buildargs=…, nocache=…,
        target=…, labels=…, pull=…, platform=…, fileobj=…)`: (the image, its build log).
        A failed build raises `BuildError` (`.msg`, `.build_log`)."""
        from dockyard.client_build import build

        record, log = build(self.client.engine, **kwargs)
        return Image(self.client, record), log

    def import_tar(self, source: str | BinaryIO, repository: str | None = None) -> Image:
        """`docker import`: a root file system tar (path or binary stream) → an image."""
        if isinstance(source, str):
            with open(source, "rb") as f:
                record = self.store.import_tar(f, repository)
        else:
            record = self.store.import_tar(source, repository)
        return Image(self.client, record)

    def pull(
        self,
        repository: str,
        tag: str | None = None,
        all_tags: bool = False,
        platform: str | None = None,
        auth_config: dict[str, str] | None = None,
    ) -> Image | builtins.list[Image]:
        """docker-py's `images.pull`: `pull("busybox")` (tag latest), `pull("busybox",
        "1.36")`, `pull("app", "sha256:…")`; with `all_tags`, a list of every tag's image.
        `auth_config` ({"username", "password"}) overrides stored logins."""
        from dockyard.image import platforms
        from dockyard.image.pull import Clients, pull
        from dockyard.registry import config

        wanted = platforms.parse(platform) if platform else None
        clients = Clients(credentials=_credentials(auth_config))
        conf = config.load(None, self.store.root)
        try:
            if all_tags:
                ref = conf.resolve(repository)[0]
                source = conf.pull_sources(ref)[-1]
                tags = clients.get(source.host, source.insecure).tags(source.repository)
                names = [f"{ref.name}:{t}" for t in sorted(tags)]
            else:
                names = [_pull_name(repository, tag)]
            found = [pull(self.store, n, wanted, conf, clients=clients).image for n in names]
        finally:
            clients.close()
        images = [Image(self.client, record) for record in found]
        return images if all_tags else images[0]

    def push(
        self,
        repository: str,
        tag: str | None = None,
        stream: bool = False,
        auth_config: dict[str, str] | None = None,
        decode: bool = False,
    ) -> Any:
        """docker-py's `images.push`: the daemon's JSON progress messages, as one string
        (or, with `stream`, one by one; with `decode`, as dicts)."""
        import json

        from dockyard.image.pull import Clients
        from dockyard.image.push import push
        from dockyard.registry.progress import Collect

        progress = Collect()
        clients = Clients(credentials=_credentials(auth_config))
        try:
            result = push(self.store, f"{repository}:{tag}" if tag else repository, None,
                          progress, clients)  # fmt: skip
        finally:
            clients.close()
        messages = [
            *progress.messages,
            {
                "progressDetail": {},
                "aux": {"Tag": result.reference.tag, "Digest": result.digest, "Size": result.size},
            },
        ]
        if stream:
            return iter(messages) if decode else (json.dumps(m) + "\r\n" for m in messages)
        return "".join(json.dumps(m) + "\r\n" for m in messages)


def _pull_name(repository: str, tag: str | None) -> str:
    """docker-py's rule: a tag given apart replaces one in `repository`; a digest joins
    with `@`; no tag at all means `latest` (the pull adds it)."""
    if not tag:
        return repository
    base = repository.split("@", 1)[0]
    last = base.rsplit("/", 1)[-1]
    if ":" in last:
        base = base[: len(base) - len(last) + last.index(":")]
    return f"{base}@{tag}" if tag.startswith("sha256:") else f"{base}:{tag}"


def _credentials(auth_config: dict[str, str] | None) -> Any:
    if not auth_config:
        return None
    from dockyard.registry.client_auth import Credentials

    return Credentials(auth_config.get("username", ""), auth_config.get("password", ""))
