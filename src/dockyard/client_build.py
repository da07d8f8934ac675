"""docker-py's `client.images.build(...)`: the builder in process, its progress as log dicts.

A Jenkins-style pipeline (`docker.build('my-app')`, then `docker.image('my-app').run()`)
through the Python API: the same Builder the CLI's `build` drives.
"""

from __future__ import annotations

import io
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from dockyard.engine.containers import Engine
    from dockyard.image.store import Image


class BuildError(Exception):
    """docker-py's `docker.errors.BuildError`: `msg` (the one-line reason) and
    `build_log` (the log dicts up to the failure)."""

    def __init__(self, reason: str, build_log: list[dict[str, Any]]) -> None:
        super().__init__(reason)
        self.msg = reason
        self.build_log = build_log


def build(
    engine: Engine,
    path: str | None = None,
    fileobj: BinaryIO | None = None,
    tag: str | None = None,
    dockerfile: str | None = None,
    buildargs: dict[str, str] | None = None,
    nocache: bool = False,
    target: str | None = None,
    labels: dict[str, str] | None = None,
    pull: bool = False,
    platform: str | None = None,
    network_mode: str | None = None,
) -> tuple[Image, list[dict[str, Any]]]:
    """Build from the directory `path` (or the tar `fileobj`); tag it `tag`.

    Returns (the image, the build log as docker-py's `{"stream": line}` dicts)."""
    from dockyard.build.context import ContextError, DirContext, TarContext
    from dockyard.build.dockerignore import load_matcher
    from dockyard.build.errors import DockerfileError
    from dockyard.build.executor import Builder, BuildOptions
    from dockyard.build.executor import BuildError as ExecutorBuildError
    from dockyard.build.mounts import MountError
    from dockyard.build.parser import parse
    from dockyard.build.progress import Progress
    from dockyard.image import reference as refs

    if (path is None) == (fileobj is None):
        raise TypeError("build() needs one of path or fileobj")
    name = dockerfile or "Dockerfile"
    stream = io.StringIO()
    progress = Progress(stream)
    ctx: DirContext | TarContext
    if path is not None:
        df_path = name if os.path.isabs(name) else os.path.join(path, name)
        ctx = DirContext(path, load_matcher(path, df_path))
        with open(df_path, "rb") as f:
            text = f.read()
        name = os.path.basename(df_path)
    else:
        assert fileobj is not None
        ctx = TarContext(fileobj)
        text = ctx.read_file(name)
    tags = [str(refs.parse(tag))] if tag else []
    with ctx:
        opts = BuildOptions(
            tags=tags,
            build_args=dict(buildargs or {}),
            target=target,
            no_cache=nocache,
            labels=dict(labels or {}),
            progress=progress,
            pull=pull,
            platform=platform,
            network={"bridge": "default", None: "default"}.get(network_mode, network_mode or ""),
            dockerfile=text.decode("utf-8", "replace"),
        )
        try:
            image_id = Builder(engine, ctx, parse(text, filename=name), opts, name).build()
        except (DockerfileError, ExecutorBuildError, ContextError, MountError) as err:
            raise BuildError(str(err), _log(stream)) from err
    for t in tags:
        engine.images.tag(image_id, t)
    stream.write(f"Successfully built {image_id.split(':', 1)[1][:12]}\n")
    for t in tags:
        stream.write(f"Successfully tagged {refs.parse(t).familiar()}\n")
    return engine.images.get(image_id), _log(stream)


def _log(stream: io.StringIO) -> list[dict[str, Any]]:
    return [{"stream": line + "\n"} for line in stream.getvalue().splitlines()]
