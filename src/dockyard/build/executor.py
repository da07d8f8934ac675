"""The builder: stages as a graph, each step on the previous step's image.

Only the stages the target needs are built; a stage starts as soon as the
stages it reads from (FROM, COPY --from, RUN --mount from=) are done, so
independent stages run in parallel threads, each with its own engine (its own
SQLite connection). Config-only steps (ENV, LABEL, CMD, …) write a new image
config with an ``empty_layer`` history entry; RUN runs a container and commits
its changes (build/steps.py); COPY/ADD write into a created container's rootfs,
then commit (build/copy_steps.py). Every step is looked up in the cache first
(build/cache.py). Progress is BuildKit's plain mode (build/progress.py).
"""

from __future__ import annotations

import json
import os
import threading
import time

from dockyard.build.errors import DockerfileError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable
    from typing import Any

    from dockyard.build.context import DirContext, TarContext
    from dockyard.build.instructions import Instruction
    from dockyard.build.progress import Progress, Vertex
    from dockyard.engine.containers import Engine
    from dockyard.image.platforms import Platform
    from dockyard.image.store import Image, ImageStore

DEFAULT_SHELL = ["/bin/sh", "-c"]
# FROM scratch: an empty image whose ID never changes (a stable cache parent).
_EMPTY_CREATED = "1970-01-01T00:00:00Z"
# The args BuildKit defines in the global scope without an ARG line.
PLATFORM_ARGS = (
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
)
# Docker's predefined args: usable without an ARG line, kept out of the history.
PROXY_ARGS = frozenset(
    n
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
    for n in (name, name.lower())
)
VERTEX_STEPS = ("run", "copy", "add", "workdir")


class BuildError(Exception):
    """A build that can't go on (a missing stage or image, a bad flag); one line."""


class BuildCanceled(BuildError):
    """This stage stopped because another one failed (that one's error is reported)."""


class BuildOptions:
    def __init__(
        self,
        tags: list[str] | None = None,
        build_args: dict[str, str] | None = None,
        target: str | None = None,
        no_cache: bool = False,
        labels: dict[str, str] | None = None,
        progress: Progress | None = None,
        pull: bool = False,
        platform: str | None = None,
        network: str = "default",
        secrets: dict[str, bytes] | None = None,
        allow: set[str] | None = None,
        source_date_epoch: int | None = None,
        dockerfile: str = "",
        extra_hosts: list[str] | None = None,
    ) -> None:
        from dockyard.build.progress import Progress

        self.tags = tags or []
        self.build_args = build_args or {}
        self.target = target
        self.no_cache = no_cache
        self.labels = labels or {}
        self.progress = progress or Progress(None)
        self.pull = pull
        self.platform = platform
        self.network = network
        self.secrets = secrets or {}
        self.allow = allow or set()
        self.source_date_epoch = source_date_epoch
        self.dockerfile = dockerfile  # its text, quoted around a failing line
        self.extra_hosts = extra_hosts or []  # --add-host, for RUN steps


class Stage:
    def __init__(self, index: int, source: Instruction, name: str | None) -> None:
        self.index = index
        self.source = source
        self.name = name
        self.body: list[Instruction] = []
        self.image_id = ""
        self.base = ""  # the FROM reference after expansion
        self.label = ""  # `build ` / `stage-1 ` in the progress names
        self.step = 0
        self.total = 0
        self.platform: Platform | None = None  # FROM --platform, else the build's
        # Build state while the stage runs
        self.args: dict[str, str | None] = {}
        self.cmd_set = False


class Builder:
    def __init__(
        self,
        engine: Engine,
        context: DirContext | TarContext,
        instructions: list[Instruction],
        opts: BuildOptions,
        filename: str = "Dockerfile",
    ) -> None:
        from dockyard.image import platforms

        self.main_engine = engine
        self.root = engine.root
        self.context = context
        self.opts = opts
        self.progress = opts.progress
        self.filename = filename
        self.meta_args: dict[str, str | None] = {}
        self.stages: list[Stage] = []
        self.used_args: set[str] = set()
        self.local = threading.local()
        self.engines: list[Engine] = []
        self.engines_lock = threading.Lock()
        self.failed = threading.Event()
        self.resolved: set[tuple[str, str]] = set()  # FROM images looked up (or pulled)
        self.running: set[str] = set()  # RUN containers, killed when another stage fails
        self.build_platform = platforms.host()
        self.platform = platforms.parse(opts.platform) if opts.platform else self.build_platform
        for ins in instructions:
            if ins.cmd == "from":
                name = ins.args[2].lower() if len(ins.args) == 3 else None
                if name is not None and any(st.name == name for st in self.stages):
                    raise self.error(ins, f'duplicate stage name "{name}": give each stage its own')
                self.stages.append(Stage(len(self.stages), ins, name))
            elif not self.stages:
                if ins.cmd != "arg":
                    raise self.error(ins, "no build stage in current context")
                for item in ins.args:
                    k, eq, v = item.partition("=")
                    self.meta_args[k] = v if eq else None
            else:
                self.stages[-1].body.append(ins)
        if not self.stages:
            raise DockerfileError("file with no instructions", filename=filename)
        for st in self.stages:
            if st.name:
                st.label = f"{st.name} "
            elif len(self.stages) > 1:
                st.label = f"stage-{st.index} "

    # ------------------------------------------------------------------ helpers

    @property
    def engine(self) -> Engine:
        """This thread's engine: SQLite connections are not shared between threads."""
        eng: Engine | None = getattr(self.local, "engine", None)
        if eng is None:
            if threading.current_thread() is threading.main_thread():
                eng = self.main_engine
            else:
                from dockyard.engine.containers import Engine

                eng = Engine(self.root)
                with self.engines_lock:
                    self.engines.append(eng)
            self.local.engine = eng
        return eng

    @property
    def images(self) -> ImageStore:
        return self.engine.images

    def tmp_prefix(self, what: str) -> str:
        """`build-<pid>-<what>-`: names under <root>/tmp and snapshot keys that
        `system check` can tell from a live build's (engine/check.py)."""
        return f"build-{os.getpid()}-{what}-"

    def scratch_dir(self, stack: contextlib.ExitStack[Any], what: str) -> str:
        """A new directory under <root>/tmp named by `tmp_prefix`, gone when `stack` closes."""
        import tempfile

        tmp = os.path.join(self.root, "tmp")
        os.makedirs(tmp, exist_ok=True)
        return stack.enter_context(
            tempfile.TemporaryDirectory(dir=tmp, prefix=self.tmp_prefix(what))
        )

    def error(self, ins: Instruction, message: str) -> DockerfileError:
        return DockerfileError(message, ins.start_line, ins.end_line, ins.original, self.filename)

    def step_error(self, ins: Instruction, vertex: Vertex, message: str) -> DockerfileError:
        """A failed step: the vertex's ERROR and output, the Dockerfile around the line."""
        from dockyard.build.progress import snippet

        vertex.error(message)
        if self.opts.dockerfile:
            self.progress.raw(
                snippet(self.opts.dockerfile, ins.start_line, ins.end_line, self.filename)
            )
        return self.error(ins, message)

    def find_stage(self, name: str, before: int) -> Stage | None:
        for st in self.stages[:before]:
            if st.name == name.lower() or str(st.index) == name:
                return st
        return None

    def platform_args(self) -> dict[str, str]:
        out = {}
        for prefix, p in (("BUILD", self.build_platform), ("TARGET", self.platform)):
            out[f"{prefix}PLATFORM"] = str(p)
            out[f"{prefix}OS"] = p.os
            out[f"{prefix}ARCH"] = p.architecture
            out[f"{prefix}VARIANT"] = p.variant
        return out

    def meta_env(self) -> dict[str, str]:
        env = self.platform_args()
        for k, v in self.meta_args.items():
            value = self.opts.build_args.get(k, v)
            if value is not None:
                env[k] = value
        return env

    def arg_default(self, name: str) -> str | None:
        """What a stage's `ARG name` without a value gets: the global one, a platform arg."""
        if name in self.meta_args:
            return self.meta_env().get(name)
        return self.platform_args().get(name)

    def deps(self, st: Stage) -> list[Stage]:
        from dockyard.build.mounts import mount_sources

        refs = [st.base or self.expanded_from(st)]
        for ins in st.body:
            if ins.cmd in ("copy", "add") and ins.flag_values.get("from"):
                refs.append(str(ins.flag_values["from"]))
            if ins.cmd == "run":
                refs += mount_sources(ins)
        found = [self.find_stage(ref, st.index) for ref in refs]
        return [d for d in found if d is not None]

    def _needed(self) -> list[Stage]:
        if self.opts.target:
            target = self.find_stage(self.opts.target, len(self.stages))
            if target is None or target.name is None:
                raise BuildError(f"failed to reach build target {self.opts.target} in Dockerfile")
        else:
            target = self.stages[-1]
        needed: set[int] = set()
        todo = [target]
        while todo:
            st = todo.pop()
            if st.index not in needed:
                needed.add(st.index)
                todo += self.deps(st)
        return [st for st in self.stages if st.index in needed and st.index <= target.index]

    def expanded_from(self, st: Stage) -> str:
        from dockyard.build.expand import expand_instruction

        return expand_instruction(st.source, self.meta_env(), filename=self.filename).args[0]

    def now(self) -> str:
        from dockyard.oci import image_spec as spec

        epoch = self.opts.source_date_epoch
        return spec.rfc3339(epoch if epoch is not None else time.time())

    # ------------------------------------------------------------------ build

    def build(self) -> str:
        stages = self._needed()
        try:
            for st in stages:
                self.resolve_base(st)
            self.run_stages(stages)
        except BaseException:
            # What the failed build made stays as cache, listed only by `images -a`
            # (BuildKit lists none of it; the classic builder left a <none> image).
            from dockyard.build import cache

            try:
                cache.hide(self.images, {st.image_id for st in stages if st.image_id})
            except Exception:
                pass  # the build's own error is the one to report
            raise
        finally:
            for eng in self.engines:
                eng.close()
        final = stages[-1].image_id
        if self.opts.labels:
            final = self.config_step(
                final,
                "LABEL " + " ".join(f"{k}={v}" for k, v in sorted(self.opts.labels.items())),
                lambda c: c.setdefault("Labels", {}).update(self.opts.labels),
            )
        unused = set(self.opts.build_args) - self.used_args - set(self.meta_args)
        unused -= PROXY_ARGS | {"SOURCE_DATE_EPOCH"}
        if unused:
            self.progress.raw(
                f"[Warning] One or more build-args {sorted(unused)} were not consumed\n"
            )
        return final

    def run_stages(self, stages: list[Stage]) -> None:
        if len(stages) == 1:
            self.run_stage(stages[0])
            return
        finished = {st.index: threading.Event() for st in stages}
        errors: list[BaseException] = []

        def work(st: Stage) -> None:
            try:
                for dep in self.deps(st):
                    finished[dep.index].wait()
                if not self.failed.is_set():
                    self.run_stage(st)
            except BaseException as err:  # re-raised by the main thread
                errors.append(err)
                self.failed.set()
                self.kill_running()
            finally:
                finished[st.index].set()

        threads = [threading.Thread(target=work, args=(st,), daemon=True) for st in stages]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def kill_running(self) -> None:
        from dockyard.engine.containers import EngineError

        for cid in list(self.running):
            try:
                self.engine.kill(cid, 9)
            except EngineError:
                pass  # already gone

    def resolve_base(self, st: Stage) -> None:
        """FROM's image: an earlier stage, scratch, or an image (pulled if missing, or --pull)."""
        from dockyard.build.expand import expand_instruction

        exp = expand_instruction(st.source, self.meta_env(), filename=self.filename)
        st.base = exp.args[0]
        platform = str(exp.flag_values.get("platform") or "")
        st.platform = self.platform
        if platform:
            from dockyard.image import platforms

            try:
                st.platform = platforms.parse(platform)
            except platforms.PlatformError as err:
                raise self.error(st.source, str(err)) from None
        self.used_args.update(k for k in self.meta_args if k in self.opts.build_args)
        if self.find_stage(st.base, st.index) is not None or st.base == "scratch":
            return
        from dockyard.image import reference as refs
        from dockyard.image.store import ImageNotFound

        try:
            name = str(refs.parse(st.base))
        except refs.ReferenceError as err:
            raise self.error(st.source, str(err)) from None
        if (name, platform) in self.resolved:
            return
        self.resolved.add((name, platform))
        v = self.progress.vertex(f"[internal] load metadata for {name}")
        present = True
        try:
            self.images.get(st.base)
        except ImageNotFound:
            present = False
        if self.opts.pull or not present:
            self._pull(st, name, platform or None, v)
        v.done()

    def _pull(self, st: Stage, name: str, platform: str | None, v: Vertex) -> None:
        from dockyard.image import platforms
        from dockyard.image.pull import pull
        from dockyard.image.store import ImageError
        from dockyard.registry import config
        from dockyard.registry.client_errors import RegistryError

        wanted = platforms.parse(platform) if platform else self.platform
        try:
            conf = config.load(None, self.images.root)
            pull(self.images, name, wanted, conf, None)
        except (RegistryError, ImageError, OSError) as err:
            raise self.step_error(
                st.source, v, f"failed to resolve source metadata for {name}: {err}"
            ) from None

    def run_stage(self, st: Stage) -> None:
        dep = self.find_stage(st.base, st.index)
        if dep is not None:
            image_id = dep.image_id
        elif st.base == "scratch":
            image_id = self.empty_image()
        else:
            image_id = self.images.get(st.base).id
        image = self.images.get(image_id)
        if dep is None and st.base != "scratch":
            self._check_platform(st, image.config)
        elif dep is not None:
            st.platform = dep.platform
        triggers = list((image.config.get("config") or {}).get("OnBuild") or [])
        body = list(st.body)
        if triggers:
            from dockyard.build.parser import parse

            image_id = self.config_step(image_id, "ONBUILD-CLEAR", lambda c: c.pop("OnBuild", None))
            body = [t for text in triggers for t in parse(text, filename=self.filename)] + body
        st.total = 1 + sum(1 for ins in body if ins.cmd in VERTEX_STEPS)
        if dep is None and st.base != "scratch":
            from dockyard.image import reference as refs

            v = self.progress.vertex(f"{self.prefix(st)}FROM {refs.parse(st.base)}")
            v.done()
        else:
            st.step += 1
        st.image_id = image_id
        for ins in body:
            if self.failed.is_set():
                raise BuildCanceled("build canceled: another stage failed")
            self.dispatch(st, ins)

    def _check_platform(self, st: Stage, config: dict[str, Any]) -> None:
        from dockyard.image import platforms

        arch, os_name = config.get("architecture"), config.get("os")
        if not arch or not os_name:
            return
        have = platforms.parse(f"{os_name}/{arch}/{config.get('variant') or ''}".rstrip("/"))
        want = st.platform or self.platform
        if have.os != want.os or have.architecture != want.architecture:
            raise self.error(
                st.source,
                f"image {st.base} is {have}, the stage wants {want}:"
                f" pull it with --platform {want}",
            )

    def prefix(self, st: Stage) -> str:
        """BuildKit's `[name 2/5] ` before a step's name."""
        st.step += 1
        width = len(str(st.total))
        return f"[{st.label}{st.step:>{width}}/{st.total}] "

    # ------------------------------------------------------------------ images

    def empty_image(self) -> str:
        from dockyard.oci import image_spec as spec

        config = spec.new_config([], _EMPTY_CREATED, {}, [])
        if self.platform != self.build_platform:
            config["architecture"] = self.platform.architecture
            config["os"] = self.platform.os
            if self.platform.variant:
                config["variant"] = self.platform.variant
        return self.images.add_image(config, [], []).id

    def layers_of(self, image: Image) -> list[dict[str, Any]]:
        manifest = json.loads(self.images.content.read(image.manifest_digest))
        return list(manifest.get("layers") or [])

    def new_image(
        self,
        parent_id: str,
        created_by: str,
        change: Callable[[dict[str, Any]], object],
        layer: tuple[str, int] | None = None,
    ) -> str:
        from dockyard.oci import image_spec as spec

        parent = self.images.get(parent_id)
        config: dict[str, Any] = json.loads(json.dumps(parent.config))
        inner = dict(config.get("config") or {})
        change(inner)
        now = self.now()
        config["created"] = now
        config["config"] = inner
        config.pop("container", None)
        entry: dict[str, Any] = {"created": now, "created_by": created_by}
        layers = self.layers_of(parent)
        if layer is None:
            entry["empty_layer"] = True
        else:
            digest, size = layer
            layers.append(spec.descriptor(spec.MEDIA_LAYER, digest, size))
            config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
            config["rootfs"]["diff_ids"] = [*parent.diff_ids, digest]
        config["history"] = [*(config.get("history") or []), entry]
        return self.images.add_image(config, layers, []).id

    def _key(self, key: str) -> str:
        # SOURCE_DATE_EPOCH changes every image's timestamps, so it keys the cache too.
        epoch = self.opts.source_date_epoch
        if epoch is None:
            return key
        from dockyard.build.cache import step_key

        return step_key(key, f"SOURCE_DATE_EPOCH={epoch}")

    def cached(self, key: str) -> str | None:
        if self.opts.no_cache:
            return None
        from dockyard.build import cache

        return cache.lookup(self.images, self._key(key))

    def remember(self, key: str, parent: str, image_id: str) -> None:
        from dockyard.build import cache

        cache.store(self.images, self._key(key), parent, image_id)

    def config_step(
        self, parent: str, text: str, change: Callable[[dict[str, Any]], object]
    ) -> str:
        from dockyard.build.cache import step_key

        key = step_key(parent, text)
        hit = self.cached(key)
        if hit:
            return hit
        image_id = self.new_image(parent, f"/bin/sh -c #(nop)  {text}", change)
        self.remember(key, parent, image_id)
        return image_id

    # ------------------------------------------------------------------ steps

    def scope(self, st: Stage) -> dict[str, str]:
        """Variables for expansion: build args in scope, then the image's ENV over them."""
        env: dict[str, str] = {}
        for k, v in st.args.items():
            value = self.opts.build_args.get(k, v)
            if value is not None:
                env[k] = value
        for item in self.config(st).get("Env") or []:
            k, _, v = item.partition("=")
            env[k] = v
        return env

    def config(self, st: Stage) -> dict[str, Any]:
        return dict(self.images.get(st.image_id).config.get("config") or {})

    def dispatch(self, st: Stage, ins: Instruction) -> None:
        """Run one instruction; a user's error inside it (a bad flag value, an unknown
        user, a container that can't be made) is reported at its Dockerfile line."""
        from dockyard.build.context import ContextError
        from dockyard.build.mounts import MountError
        from dockyard.engine.containers import EngineError

        vertex: list[Vertex] = []
        try:
            self._dispatch(st, ins, vertex)
        except BuildCanceled:
            raise
        except (BuildError, ContextError, MountError, EngineError) as err:
            if vertex:
                raise self.step_error(ins, vertex[0], str(err)) from None
            raise self.error(ins, str(err)) from None

    def _dispatch(self, st: Stage, ins: Instruction, vertex: list[Vertex]) -> None:
        from dockyard.build import steps
        from dockyard.build.expand import expand_instruction

        cmd = ins.cmd
        if cmd in VERTEX_STEPS:
            exp = expand_instruction(ins, self.scope(st), filename=self.filename)
            v = self.progress.vertex(self.prefix(st) + display(ins))
            vertex.append(v)
            if cmd in ("copy", "add"):
                from dockyard.build import copy_steps

                st.image_id = copy_steps.do_copy(self, st, exp, v, add=cmd == "add")
            else:
                st.image_id = getattr(steps, f"do_{cmd}")(self, st, exp, v)
            return
        if cmd == "arg":
            exp = expand_instruction(ins, self.scope(st), filename=self.filename)
            for item in exp.args:
                k, eq, value = item.partition("=")
                st.args[k] = value if eq else self.arg_default(k)
                if k in self.opts.build_args:
                    self.used_args.add(k)
            st.image_id = self.config_step(st.image_id, "ARG " + " ".join(exp.args), lambda c: None)
            return
        text, change = steps.config_change(self, st, ins)
        st.image_id = self.config_step(st.image_id, text, change)

    def build_env(self, st: Stage) -> list[str]:
        """The build args in scope (with a value) as `K=V`, for RUN's environment."""
        env = []
        for k, v in st.args.items():
            value = self.opts.build_args.get(k, v)
            if value is not None:
                env.append(f"{k}={value}")
        return env

    def proxy_env(self, st: Stage) -> list[str]:
        """Docker's predefined proxy args: in RUN's environment, never in the history."""
        names = sorted(PROXY_ARGS & set(self.opts.build_args) - set(st.args))
        return [f"{k}={self.opts.build_args[k]}" for k in names]


def display(ins: Instruction) -> str:
    """A step as BuildKit names it: the logical line; a heredoc's first line only."""
    return ins.original.split("\n", 1)[0].strip()
