"""The classic builder (DOCKER_BUILDKIT=0): each step runs on the previous step's
image and makes a new one.

Config-only steps (ENV, LABEL, CMD, …) write a new image config with an
``empty_layer`` history entry; RUN runs a container and commits its changes;
COPY/ADD (build/steps.py) write into a created container's rootfs, then commit.
Every step is looked up in the cache first (build/cache.py).
"""

from __future__ import annotations

import json
import time

from dockyard.build.errors import DockerfileError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dockyard.build.context import DirContext, TarContext
    from dockyard.build.instructions import Instruction
    from dockyard.engine.containers import Engine
    from dockyard.image.store import Image

DEFAULT_SHELL = ["/bin/sh", "-c"]
# FROM scratch: an empty image whose ID never changes (a stable cache parent).
_EMPTY_CREATED = "1970-01-01T00:00:00Z"


class BuildError(Exception):
    """A build that can't go on (a missing stage or image, a bad flag); one line."""


class BuildOptions:
    def __init__(
        self,
        tags: list[str] | None = None,
        build_args: dict[str, str] | None = None,
        target: str | None = None,
        no_cache: bool = False,
        labels: dict[str, str] | None = None,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.tags = tags or []
        self.build_args = build_args or {}
        self.target = target
        self.no_cache = no_cache
        self.labels = labels or {}
        self.out = out or (lambda s: None)


class Stage:
    def __init__(self, index: int, source: Instruction, name: str | None) -> None:
        self.index = index
        self.source = source
        self.name = name
        self.body: list[Instruction] = []
        self.image_id = ""
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
        self.engine = engine
        self.images = engine.images
        self.context = context
        self.opts = opts
        self.filename = filename
        self.meta_args: dict[str, str | None] = {}
        self.stages: list[Stage] = []
        self.used_args: set[str] = set()
        for ins in instructions:
            if ins.cmd == "from":
                name = ins.args[2].lower() if len(ins.args) == 3 else None
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
        self.step = 0
        self.total = 0

    # ------------------------------------------------------------------ helpers

    def error(self, ins: Instruction, message: str) -> DockerfileError:
        return DockerfileError(message, ins.start_line, ins.end_line, ins.original, self.filename)

    def say(self, text: str) -> None:
        self.opts.out(text)

    def find_stage(self, name: str, before: int) -> Stage | None:
        for st in self.stages[:before]:
            if st.name == name.lower() or str(st.index) == name:
                return st
        return None

    def meta_env(self) -> dict[str, str]:
        env = {}
        for k, v in self.meta_args.items():
            value = self.opts.build_args.get(k, v)
            if value is not None:
                env[k] = value
        return env

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
            if st.index in needed:
                continue
            needed.add(st.index)
            refs = [self.expanded_from(st)]
            refs += [
                str(ins.flag_values["from"])
                for ins in st.body
                if ins.cmd in ("copy", "add") and ins.flag_values.get("from")
            ]
            for ref in refs:
                dep = self.find_stage(ref, st.index)
                if dep is not None:
                    todo.append(dep)
        return [st for st in self.stages if st.index in needed and st.index <= target.index]

    def expanded_from(self, st: Stage) -> str:
        from dockyard.build.expand import expand_instruction

        return expand_instruction(st.source, self.meta_env(), filename=self.filename).args[0]

    # ------------------------------------------------------------------ build

    def build(self) -> str:
        stages = self._needed()
        self.total = sum(1 + len(st.body) for st in stages)
        for st in stages:
            self.run_stage(st)
        final = stages[-1].image_id
        if self.opts.labels:
            final = self.config_step(
                final,
                "LABEL " + " ".join(f"{k}={v}" for k, v in sorted(self.opts.labels.items())),
                lambda c: c.setdefault("Labels", {}).update(self.opts.labels),
                count=False,
            )
        unused = sorted(set(self.opts.build_args) - self.used_args - set(self.meta_args))
        if unused:
            self.say(f"[Warning] One or more build-args {unused} were not consumed")
        return final

    def next_step(self, ins: Instruction) -> None:
        self.step += 1
        self.say(f"Step {self.step}/{self.total} : {ins.original}")

    def run_stage(self, st: Stage) -> None:
        self.next_step(st.source)
        ref = self.expanded_from(st)
        dep = self.find_stage(ref, st.index)
        if dep is not None:
            image_id = dep.image_id
        elif ref == "scratch":
            image_id = self.empty_image()
        else:
            from dockyard.image.store import ImageNotFound

            try:
                image_id = self.images.get(ref).id
            except ImageNotFound:
                raise self.error(
                    st.source, f"pull access denied for {ref}: no such image (pull it first)"
                ) from None
        st.image_id = image_id
        self.say(f" ---> {_short(image_id)}")
        self.used_args.update(k for k in self.meta_args if k in self.opts.build_args)
        image = self.images.get(image_id)
        triggers = list((image.config.get("config") or {}).get("OnBuild") or [])
        if triggers:
            from dockyard.build.parser import parse

            self.say(f"# Executing {len(triggers)} build trigger{'s' * (len(triggers) > 1)}")
            st.image_id = self.config_step(
                st.image_id, "ONBUILD-CLEAR", lambda c: c.pop("OnBuild", None), count=False
            )
            for text in triggers:
                for trig in parse(text, filename=self.filename):
                    self.dispatch(st, trig)
        for ins in st.body:
            self.next_step(ins)
            self.dispatch(st, ins)
            self.say(f" ---> {_short(st.image_id)}")

    # ------------------------------------------------------------------ images

    def empty_image(self) -> str:
        from dockyard.oci import image_spec as spec

        config = spec.new_config([], _EMPTY_CREATED, {}, [])
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
        now = spec.rfc3339(time.time())
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

    def cached(self, key: str) -> str | None:
        if self.opts.no_cache:
            return None
        from dockyard.build import cache

        hit = cache.lookup(self.images, key)
        if hit:
            self.say(" ---> Using cache")
        return hit

    def remember(self, key: str, parent: str, image_id: str) -> None:
        from dockyard.build import cache

        cache.store(self.images, key, parent, image_id)

    def config_step(
        self,
        parent: str,
        text: str,
        change: Callable[[dict[str, Any]], object],
        count: bool = True,
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
        from dockyard.build import steps
        from dockyard.build.expand import expand_instruction

        cmd = ins.cmd
        if cmd in ("run", "copy", "add", "workdir"):
            exp = expand_instruction(ins, self.scope(st), filename=self.filename)
            st.image_id = getattr(steps, f"do_{cmd}")(self, st, exp)
            return
        if cmd == "arg":
            exp = expand_instruction(ins, self.scope(st), filename=self.filename)
            for item in exp.args:
                k, eq, v = item.partition("=")
                meta = self.meta_env().get(k) if k in self.meta_args and not eq else None
                st.args[k] = v if eq else meta
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


def _short(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]
