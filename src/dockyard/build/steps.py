"""The builder's steps: config changes, RUN and WORKDIR; the step container and its commit.

COPY and ADD are in build/copy_steps.py, RUN --mount in build/mounts.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from dockyard.build.executor import DEFAULT_SHELL, BuildCanceled, BuildError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from dockyard.build.executor import Builder, Stage
    from dockyard.build.instructions import Instruction
    from dockyard.build.progress import Vertex
    from dockyard.engine.containers import Container
    from dockyard.storage.leases import Lease


# ---------------------------------------------------------------------- config


def _cmd_value(ins: Instruction, shell: list[str]) -> list[str]:
    return list(ins.args) if ins.json else [*shell, ins.args[0]] if ins.args else []


def _duration(text: str) -> int:
    """A Go duration ("30s", "1m30s", "500ms") as nanoseconds."""
    import re

    units = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
    units["h"] = 3600 * 10**9
    total = 0.0
    parts = re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise BuildError(f"time: invalid duration {text!r}")
    for number, unit in parts:
        total += float(number) * units[unit]
    return int(total)


def config_change(
    b: Builder, st: Stage, ins: Instruction
) -> tuple[str, Callable[[dict[str, Any]], object]]:
    """(the step's text for cache and history, how it changes the image config)."""
    from dockyard.build.expand import expand_instruction

    exp = expand_instruction(ins, b.scope(st), filename=b.filename)
    cmd, a = exp.cmd, exp.args
    shell = b.config(st).get("Shell") or DEFAULT_SHELL
    if cmd in ("env", "label"):
        pairs = [(a[i], a[i + 1]) for i in range(0, len(a) - 2, 3)]
        text = f"{cmd.upper()} " + " ".join(f"{k}={v}" for k, v in pairs)
        if cmd == "env":

            def change(c: dict[str, Any]) -> None:
                env = list(c.get("Env") or [])
                for k, v in pairs:
                    env = [e for e in env if e.partition("=")[0] != k] + [f"{k}={v}"]
                c["Env"] = env
        else:

            def change(c: dict[str, Any]) -> None:
                c["Labels"] = {**(c.get("Labels") or {}), **dict(pairs)}

        return text, change
    if cmd in ("cmd", "entrypoint"):
        value = _cmd_value(exp, shell)
        key = "Cmd" if cmd == "cmd" else "Entrypoint"

        # Docker: ENTRYPOINT resets a CMD this stage has not set itself.
        reset = cmd == "entrypoint" and not st.cmd_set
        st.cmd_set = st.cmd_set or cmd == "cmd"

        def set_cmd(c: dict[str, Any]) -> None:
            c[key] = value
            if reset:
                c["Cmd"] = None

        return f"{cmd.upper()} {json.dumps(value)}" + (" (cmd reset)" * reset), set_cmd
    if cmd == "shell":
        value = list(a)
        return f"SHELL {json.dumps(value)}", lambda c: c.__setitem__("Shell", value)
    if cmd == "user":
        return f"USER {a[0]}", lambda c: c.__setitem__("User", a[0])
    if cmd == "stopsignal":
        from dockyard.engine.hostconfig import parse_signal_name

        parse_signal_name(a[0])  # Docker refuses an unknown signal at build time
        return f"STOPSIGNAL {a[0]}", lambda c: c.__setitem__("StopSignal", a[0])
    if cmd == "maintainer":
        author = " ".join(a)
        return f"MAINTAINER {author}", lambda c: None
    if cmd == "expose":
        from dockyard.network.ports import PortSpecError, parse_publish

        ports: list[str] = []
        for p in a:
            try:
                specs = parse_publish(p)
            except PortSpecError as err:
                raise b.error(ins, f"EXPOSE: {err}") from None
            ports += [f"{port}/{proto}" for proto, _, _, port in specs]

        def expose(c: dict[str, Any]) -> None:
            c["ExposedPorts"] = {**(c.get("ExposedPorts") or {}), **{p: {} for p in ports}}

        return "EXPOSE " + " ".join(ports), expose
    if cmd == "volume":
        paths = [p for p in a if p]
        if not paths:
            raise b.error(ins, "VOLUME specified can not be an empty string")

        def volume(c: dict[str, Any]) -> None:
            c["Volumes"] = {**(c.get("Volumes") or {}), **{p: {} for p in paths}}

        return "VOLUME " + json.dumps(paths), volume
    if cmd == "onbuild":
        trigger = ins.original.split(None, 1)[1] if ins.sub is not None else ""

        def onbuild(c: dict[str, Any]) -> None:
            c["OnBuild"] = [*(c.get("OnBuild") or []), trigger]

        return f"ONBUILD {trigger}", onbuild
    if cmd == "healthcheck":
        return _healthcheck(exp, shell)
    raise b.error(ins, f"unknown instruction: {ins.keyword}")


def _healthcheck(
    exp: Instruction, shell: list[str]
) -> tuple[str, Callable[[dict[str, Any]], object]]:
    kind = exp.args[0].upper()
    if kind == "NONE":
        check: dict[str, Any] = {"Test": ["NONE"]}
    else:
        rest = exp.args[1:]
        test = ["CMD", *rest] if exp.json else ["CMD-SHELL", " ".join(rest)]
        check = {"Test": test}
        names = {
            "interval": "Interval",
            "timeout": "Timeout",
            "start-period": "StartPeriod",
            "start-interval": "StartInterval",
        }
        for flag, key in names.items():
            v = exp.flag_values.get(flag)
            if isinstance(v, str) and v:
                check[key] = _duration(v)
        retries = exp.flag_values.get("retries")
        if isinstance(retries, str) and retries:
            check["Retries"] = int(retries)
    return f"HEALTHCHECK {json.dumps(check)}", lambda c: c.__setitem__("Healthcheck", check)


# ---------------------------------------------------------------------- containers


@contextlib.contextmanager
def container(
    b: Builder,
    st: Stage,
    command: list[str],
    env: list[str],
    network: str = "none",
    mounts: list[dict[str, Any]] | None = None,
    privileged: bool = False,
) -> Iterator[Container]:
    """A created container on the stage's image; removed (with its anonymous volumes:
    a VOLUME's contents never reach a layer) whatever happens."""
    from dockyard.engine.check import BUILD_LABEL
    from dockyard.engine.spec import RunOptions

    config = b.config(st)
    opts = RunOptions(
        command=command,
        entrypoint=[],
        env=env,
        workdir=config.get("WorkingDir") or None,
        user_spec=config.get("User") or None,
        network=network,
        mounts=mounts or [],
        privileged=privileged,
        labels={BUILD_LABEL: str(os.getpid())},  # system check: a killed build's step
        extra_hosts=list(b.opts.extra_hosts) if network != "host" else [],
    )
    c = b.engine.create(st.image_id, opts)
    try:
        yield c
    finally:
        b.engine.remove(c.id, force=True, volumes=True)


def finish(b: Builder, st: Stage, c: Container, key: str, created_by: str) -> str:
    """Commit the step container as the stage's next image and remember it under `key`.

    Its snapshot becomes the new layer's (named by the chain ID), as containerd commits
    an active snapshot: the next step stands on it without unpacking the layer again,
    and removing the container has no upper dir left to delete."""
    from dockyard.engine.commit import layer_dirs
    from dockyard.storage.snapshots import unmount

    upper, lowers, _ = layer_dirs(b.engine, c)
    rootfs = os.path.join(c.dir, "rootfs")
    if os.path.ismount(rootfs):
        unmount(rootfs)
    with b.images.leases.create() as lease:
        image_id = commit_snapshot_dir(
            b, st, upper, f"container-{c.id}", created_by, lease, lowers, owned=False
        )
    b.remember(key, st.image_id, image_id)
    return image_id


def commit_snapshot_dir(
    b: Builder,
    st: Stage,
    upper: str,
    active: str,
    created_by: str,
    lease: Lease,
    lowers: list[str] | None = None,
    owned: bool = True,
) -> str:
    """Active snapshot `active` (its directory `upper`, not mounted) as the stage's next
    image: the layer is its diff, the snapshot is committed under the layer's chain ID.
    When that chain is there already, `active` is removed if `owned` (a container's
    goes with the container). `lowers` are read for metacopy files only."""
    from dockyard.image.layer_diff import diff_layer
    from dockyard.oci import image_spec as spec
    from dockyard.storage.leases import CONTENT, SNAPSHOT
    from dockyard.storage.snapshots import SnapshotExists, SnapshotNotFound

    # The lease keeps the blob and the snapshot from a concurrent collection until the
    # image holds them.
    with lease.guard(), b.images.content.writer() as writer:
        diff_id = diff_layer(
            upper,
            writer,  # type: ignore[arg-type]
            lowers=lowers,
            mtime_clamp=b.opts.source_date_epoch,
        )
        size = writer.offset
        digest = writer.commit()
        lease.add(CONTENT, digest)
    if digest != diff_id:
        from dockyard.image.store import ImageError

        raise ImageError(f"layer digest {digest} differs from its diff_id {diff_id}")
    chain = spec.chain_ids([*b.images.get(st.image_id).diff_ids, diff_id])[-1]
    lease.add(SNAPSHOT, chain)
    snapshots = b.images.snapshots
    try:
        snapshots.stat(chain)
        exists = True  # the same layer on the same parent
    except SnapshotNotFound:
        try:
            snapshots.commit(chain, active)
            exists = False
        except SnapshotExists:
            exists = True  # another build committed it first
    if exists and owned:
        snapshots.remove(active)
    return b.new_image(st.image_id, created_by, lambda cfg: None, (digest, size))


# ---------------------------------------------------------------------- RUN


# Where a `RUN <<EOF` script that starts with `#!` is mounted and run from (BuildKit's).
HEREDOC_DIR = "/dev/pipes"


def _run_command(
    b: Builder, st: Stage, ins: Instruction
) -> tuple[list[str], tuple[str, str] | None]:
    """(the step's command, (name, text) of a `#!` heredoc to run as a file, or None)."""
    if ins.json:
        return list(ins.args), None
    shell = b.config(st).get("Shell") or DEFAULT_SHELL
    script = ins.args[0] if ins.args else ""
    docs = ins.heredocs
    if len(docs) == 1 and script.strip() in (f"<<{docs[0].name}", f"<<-{docs[0].name}"):
        if docs[0].content.startswith("#!"):
            # BuildKit runs it as an executable file, so its interpreter is the shebang's.
            path = f"{HEREDOC_DIR}/{docs[0].name}"
            return [*shell, path], (docs[0].name, docs[0].content)
        script = docs[0].content
    elif docs:
        script += "\n" + "".join(f"{h.content}{h.name}\n" for h in docs)
    return [*shell, script], None


def _script_mount(b: Builder, stack: contextlib.ExitStack, name: str, text: str) -> dict[str, Any]:
    """A read-only mount of HEREDOC_DIR holding the executable script `name`."""
    directory = b.scratch_dir(stack, "heredoc")
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o755)
    os.chmod(directory, 0o755)
    from dockyard.build.mounts import bind_mount

    return bind_mount(directory, HEREDOC_DIR, readonly=True)


def _network(b: Builder, ins: Instruction) -> str:
    mode = str(ins.flag_values.get("network") or "default")
    if mode not in ("default", "none", "host"):
        raise b.error(ins, f"unsupported network mode {mode!r}: use default, none or host")
    if mode == "default":
        mode = b.opts.network
    if mode == "host" and b.opts.network != "host" and "network.host" not in b.opts.allow:
        raise b.error(
            ins,
            "RUN --network=host needs the network.host entitlement:"
            " build with --allow network.host",
        )
    return {"default": "bridge", "none": "none", "host": "host"}.get(mode, mode)


def _privileged(b: Builder, ins: Instruction) -> bool:
    mode = str(ins.flag_values.get("security") or "sandbox")
    if mode not in ("sandbox", "insecure"):
        raise b.error(ins, f"unsupported security mode {mode!r}: use sandbox or insecure")
    if mode == "insecure" and "security.insecure" not in b.opts.allow:
        raise b.error(
            ins,
            "RUN --security=insecure needs the security.insecure entitlement:"
            " build with --allow security.insecure",
        )
    if ins.flag_values.get("device"):
        raise b.error(ins, "RUN --device is not supported by this builder")
    return mode == "insecure"


def do_run(b: Builder, st: Stage, ins: Instruction, v: Vertex) -> str:
    from dockyard.build import mounts as run_mounts
    from dockyard.build.cache import step_key

    if st.platform is not None and st.platform != b.build_platform:
        raise b.step_error(
            ins, v, f"can't RUN {st.platform} programs on a {b.build_platform} host (no emulation)"
        )
    command, script = _run_command(b, st, ins)
    network = _network(b, ins)
    privileged = _privileged(b, ins)
    specs = run_mounts.parse_all(b, st, ins)
    build_env = b.build_env(st)
    shown = " ".join(command)
    if build_env:
        shown = f"|{len(build_env)} {' '.join(build_env)} {shown}"
    # What a mount brings in is part of the step: its flags, and for a bind its content.
    extra = [f"{ins.flag_values.get('network') or ''}", *run_mounts.cache_keys(b, st, specs)]
    if script is not None:
        extra.append(script[1])  # the command names only its path
    key = step_key(st.image_id, "RUN " + shown, *extra)
    hit = b.cached(key)
    if hit:
        v.cached()
        return hit
    env_names = {e.partition("=")[0] for e in b.config(st).get("Env") or []}
    env = [e for e in build_env + b.proxy_env(st) if e.partition("=")[0] not in env_names]
    try:
        with contextlib.ExitStack() as stack:
            oci_mounts, secret_env = stack.enter_context(run_mounts.prepared(b, st, specs))
            if script is not None:
                oci_mounts = [*oci_mounts, _script_mount(b, stack, *script)]
            run_env = env + secret_env
            c = stack.enter_context(
                container(b, st, command, run_env, network, oci_mounts, privileged)
            )
            code = _run(b, c.id, v)
            if code != 0:
                if b.failed.is_set():
                    raise BuildCanceled("build canceled: another stage failed")
                message = (
                    f'process "{" ".join(command)}" did not complete successfully:'
                    f" exit code: {code}"
                )
                raise b.step_error(ins, v, message)
            run_mounts.remove_stubs(b, c, specs)
            image_id = finish(b, st, c, key, shown)
    except run_mounts.MountError as err:
        raise b.step_error(ins, v, str(err)) from None
    v.done()
    return image_id


def _run(b: Builder, cid: str, v: Vertex) -> int:
    b.running.add(cid)
    try:
        b.engine.start(cid)
        for _stream, _stamp, text in b.engine.logs(cid, follow=True):
            v.log(text)
        return b.engine.wait(cid)
    finally:
        b.running.discard(cid)


# ---------------------------------------------------------------------- WORKDIR


def missing_dirs(root: str, path: str) -> list[str]:
    """The directories on `path` that `root` lacks, outermost first, as paths in `root`
    with its symlinks resolved inside it (an image's absolute link is not the host's)."""
    from dockyard.build.copy_direct import resolve_in

    parts = [p for p in resolve_in(root, path).split("/") if p]
    missing = []
    for i in range(1, len(parts) + 1):
        rel = "/".join(parts[:i])
        if not os.path.lexists(os.path.join(root, rel)):
            missing.append(rel)
    return missing


def do_workdir(b: Builder, st: Stage, ins: Instruction, v: Vertex) -> str:
    from dockyard.build.cache import step_key
    from dockyard.build.copy_steps import dir_info, write_tar
    from dockyard.engine.copy import _container_root
    from dockyard.engine.users import resolve

    config = b.config(st)
    current = config.get("WorkingDir") or "/"
    path = os.path.normpath(os.path.join(current, ins.args[0]))
    # BuildKit makes the missing directories as the stage's USER.
    user = config.get("User") or ""
    key = step_key(st.image_id, f"WORKDIR {path}", user)
    hit = b.cached(key)
    if hit:
        v.cached()
        return hit

    def set_dir(c: dict[str, Any]) -> None:
        c["WorkingDir"] = path

    with container(b, st, ["true"], []) as c:
        with _container_root(b.engine, c, True) as root:
            missing = missing_dirs(root, path)
            if missing:
                uid, gid = resolve(user, [root])[:2] if user else (0, 0)
                now = time.time()
                write_tar(root, [(dir_info(rel, uid, gid, mtime=now), None) for rel in missing])
        if missing:
            st.image_id = finish(b, st, c, key + "-layer", f"/bin/sh -c #(nop) WORKDIR {path}")
    image_id = b.new_image(st.image_id, f"/bin/sh -c #(nop) WORKDIR {path}", set_dir)
    b.remember(key, st.image_id, image_id)
    v.done()
    return image_id
