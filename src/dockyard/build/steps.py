"""The steps of the classic builder: config changes, RUN, WORKDIR, COPY/ADD."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import stat
import tarfile
import tempfile

from dockyard.build.executor import DEFAULT_SHELL, BuildError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import IO, Any

    from dockyard.build.executor import Builder, Stage
    from dockyard.build.instructions import Instruction
    from dockyard.engine.containers import Container

_GLOB = "*?["


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
        return f"STOPSIGNAL {a[0]}", lambda c: c.__setitem__("StopSignal", a[0])
    if cmd == "maintainer":
        author = " ".join(a)
        return f"MAINTAINER {author}", lambda c: None
    if cmd == "expose":
        ports = []
        for p in a:
            number, _, proto = p.partition("/")
            ports.append(f"{number}/{proto.lower() or 'tcp'}")

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
def container(b: Builder, st: Stage, command: list[str], env: list[str]) -> Iterator[Container]:
    """A created container on the stage's image; removed whatever happens."""
    from dockyard.engine.spec import RunOptions

    config = b.config(st)
    opts = RunOptions(
        command=command,
        entrypoint=[],
        env=env,
        workdir=config.get("WorkingDir") or None,
        user_spec=config.get("User") or None,
        network="host",
    )
    c = b.engine.create(st.image_id, opts)
    try:
        yield c
    finally:
        b.say(f"Removing intermediate container {c.id[:12]}")
        b.engine.remove(c.id, force=True)


def commit_layer(b: Builder, c: Container) -> tuple[str, int]:
    """The container's changes as a layer blob: (digest, size)."""
    from dockyard.engine.commit import layer_dirs
    from dockyard.image.layer_diff import diff_layer
    from dockyard.image.store import ImageError

    upper, lowers, _ = layer_dirs(b.engine, c)
    with b.images.content.writer() as writer:
        diff_id = diff_layer(upper, writer, lowers=lowers)  # type: ignore[arg-type]
        size = writer.offset
        digest = writer.commit()
    if digest != diff_id:
        raise ImageError(f"layer digest {digest} differs from its diff_id {diff_id}")
    return digest, size


def _finish(b: Builder, st: Stage, c: Container, key: str, created_by: str) -> str:
    # The lease keeps the new blob from a concurrent collection until the image holds it.
    from dockyard.storage.leases import CONTENT

    with b.images.leases.create() as lease:
        with lease.guard():
            digest, size = commit_layer(b, c)
            lease.add(CONTENT, digest)
        image_id = b.new_image(st.image_id, created_by, lambda cfg: None, (digest, size))
    b.remember(key, st.image_id, image_id)
    return image_id


# ---------------------------------------------------------------------- RUN


def do_run(b: Builder, st: Stage, ins: Instruction) -> str:
    from dockyard.build.cache import step_key

    shell = b.config(st).get("Shell") or DEFAULT_SHELL
    if ins.json:
        command = list(ins.args)
    else:
        script = ins.args[0] if ins.args else ""
        docs = ins.heredocs
        if len(docs) == 1 and script.strip() in (f"<<{docs[0].name}", f"<<-{docs[0].name}"):
            script = docs[0].content
        elif docs:
            script += "\n" + "".join(f"{h.content}{h.name}\n" for h in docs)
        command = [*shell, script]
    build_env = b.build_env(st)
    shown = " ".join(command)
    if build_env:
        shown = f"|{len(build_env)} {' '.join(build_env)} {shown}"
    key = step_key(st.image_id, "RUN " + shown)
    hit = b.cached(key)
    if hit:
        return hit
    env_names = {e.partition("=")[0] for e in b.config(st).get("Env") or []}
    extra = [e for e in build_env if e.partition("=")[0] not in env_names]
    with container(b, st, command, extra) as c:
        b.say(f" ---> Running in {c.id[:12]}")
        b.engine.start(c.id)
        for _stream, _stamp, text in b.engine.logs(c.id, follow=True):
            b.say(text.rstrip("\n"))
        code = b.engine.wait(c.id)
        if code != 0:
            raise b.error(
                ins, f"The command '{' '.join(command)}' returned a non-zero code: {code}"
            )
        return _finish(b, st, c, key, shown)


# ---------------------------------------------------------------------- WORKDIR


def _missing_dirs(root: str, path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    missing = []
    for i in range(1, len(parts) + 1):
        rel = "/".join(parts[:i])
        if not os.path.lexists(os.path.join(root, rel)):
            missing.append(rel)
    return missing


def do_workdir(b: Builder, st: Stage, ins: Instruction) -> str:
    from dockyard.build.cache import step_key
    from dockyard.engine.copy import _container_root

    current = b.config(st).get("WorkingDir") or "/"
    path = os.path.normpath(os.path.join(current, ins.args[0]))
    key = step_key(st.image_id, f"WORKDIR {path}")
    hit = b.cached(key)
    if hit:
        return hit

    def set_dir(c: dict[str, Any]) -> None:
        c["WorkingDir"] = path

    with container(b, st, ["true"], []) as c:
        with _container_root(b.engine, c, True) as root:
            missing = _missing_dirs(root, path)
            if missing:
                _write_tar(root, [(_dir_info(rel, 0, 0), None) for rel in missing])
        if not missing:
            image_id = b.new_image(st.image_id, f"/bin/sh -c #(nop) WORKDIR {path}", set_dir)
            b.remember(key, st.image_id, image_id)
            return image_id
        st.image_id = _finish(b, st, c, key + "-layer", f"/bin/sh -c #(nop) WORKDIR {path}")
    image_id = b.new_image(st.image_id, f"/bin/sh -c #(nop) WORKDIR {path}", set_dir)
    b.remember(key, st.image_id, image_id)
    return image_id


# ---------------------------------------------------------------------- COPY / ADD


def _dir_info(name: str, uid: int, gid: int, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.uid, info.gid = uid, gid
    return info


def _write_tar(root: str, members: list[tuple[tarfile.TarInfo, IO[bytes] | None]]) -> None:
    from dockyard.image.layers import apply_layer

    with tempfile.TemporaryFile() as tmp:
        with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, data)
        tmp.seek(0)
        apply_layer(tmp, root, same_owner=True)


def _owner(b: Builder, root: str, spec: str) -> tuple[int, int]:
    if not spec:
        return 0, 0
    from dockyard.engine.users import UserError, resolve

    user, _, group = spec.partition(":")
    try:
        uid, gid, _ = resolve(spec if group else user, [root])
    except UserError as err:
        raise BuildError(f"unable to convert uid/gid chown string to host mapping: {err}") from None
    return uid, gid


class _Source:
    """One matched source: a path in the context, or in another image's rootfs."""

    def __init__(self, rel: str, is_dir: bool, data: bytes | None = None) -> None:
        self.rel = rel
        self.is_dir = is_dir
        self.data = data  # a heredoc's content


def _context_sources(b: Builder, pattern: str) -> list[_Source]:
    from dockyard.build.context import ContextError
    from dockyard.build.dockerignore import normalize_relpath

    rel = normalize_relpath(pattern)
    if any(ch in rel for ch in _GLOB):
        depth = rel.count("/")
        found = [
            _Source(e.relpath, e.is_dir())
            for e in b.context.walk(".")
            if e.relpath.count("/") == depth and fnmatch.fnmatchcase(e.relpath, rel)
        ]
        if not found:
            raise BuildError(f"COPY failed: no source files were specified ({pattern})")
        return found
    try:
        first = next(iter(b.context.walk(rel)), None)
    except ContextError:
        first = None
    if first is None:
        raise BuildError(f"COPY failed: file not found in build context or excluded: {pattern}")
    return [_Source(first.relpath, first.is_dir())]


def _image_sources(root: str, pattern: str) -> list[_Source]:
    import glob

    rel = os.path.normpath("/" + pattern).lstrip("/") or "."
    if any(ch in rel for ch in _GLOB):
        names = [os.path.relpath(p, root) for p in glob.glob(os.path.join(root, rel))]
    else:
        names = [rel] if os.path.lexists(os.path.join(root, rel)) else []
    if not names:
        raise BuildError(f"COPY failed: stat {pattern}: file does not exist")
    return [_Source(n, os.path.isdir(os.path.join(root, n))) for n in names]


def _from_image(b: Builder, st: Stage, ref: str) -> str:
    dep = b.find_stage(ref, st.index)
    if dep is not None:
        return dep.image_id
    return b.images.get(ref).id


def do_add(b: Builder, st: Stage, ins: Instruction) -> str:
    return do_copy(b, st, ins, add=True)


def do_copy(b: Builder, st: Stage, ins: Instruction, add: bool = False) -> str:
    from dockyard.build.cache import step_key
    from dockyard.build.context import content_digest
    from dockyard.build.parser import parse_heredoc_word

    srcs, dest = ins.args[:-1], ins.args[-1]
    docs = {h.name: h for h in ins.heredocs}
    inline = []  # COPY <<EOF /dest: each document becomes a file named after it
    for word in list(srcs):
        doc = parse_heredoc_word(word)
        if doc is not None and doc.name in docs:
            srcs.remove(word)
            inline.append(_Source(doc.name, False, docs[doc.name].content.encode()))
    if add and any("://" in s for s in srcs):
        raise b.error(ins, "ADD from a URL is not supported by this builder")
    chown = str(ins.flag_values.get("chown") or "")
    chmod = str(ins.flag_values.get("chmod") or "")
    mode = int(chmod, 8) if chmod else None
    workdir = b.config(st).get("WorkingDir") or "/"
    as_dir = dest.endswith("/") or dest.endswith("/.") or dest in (".", "/")
    dest_abs = os.path.normpath(os.path.join(workdir, dest))
    ref = str(ins.flag_values.get("from") or "")
    text = f"{ins.cmd.upper()} " + " ".join([*ins.flags, *srcs, dest_abs + ("/" if as_dir else "")])
    if ref:
        source_image = _from_image(b, st, ref)
        key = step_key(st.image_id, text, source_image)
        sources: list[_Source] = []
    else:
        sources = [s for pattern in srcs for s in _context_sources(b, pattern)]
        digests = [content_digest(b.context, s.rel) for s in sources]
        key = step_key(st.image_id, text, *digests)
    key = step_key(key, "", *(f"{s.rel}\0{s.data!r}" for s in inline))
    sources += inline
    if len(srcs) + len(inline) > 1 and not as_dir:
        raise b.error(
            ins,
            "When using COPY with more than one source file, the destination "
            "must be a directory and end with a /",
        )
    hit = b.cached(key)
    if hit:
        return hit
    with container(b, st, ["true"], []) as c:
        from dockyard.engine.copy import _container_root

        with _container_root(b.engine, c, True) as root:
            uid, gid = _owner(b, root, chown)
            if ref:
                src_stage = _ImageRoot(b, source_image)
                with src_stage.mounted() as src_root:
                    sources = [s for p in srcs for s in _image_sources(src_root, p)] + inline
                    _place(
                        b,
                        root,
                        dest_abs,
                        as_dir or len(sources) > 1,
                        sources,
                        uid,
                        gid,
                        mode,
                        add=False,
                        src_root=src_root,
                    )
            else:
                _place(
                    b,
                    root,
                    dest_abs,
                    as_dir or len(sources) > 1,
                    sources,
                    uid,
                    gid,
                    mode,
                    add=add,
                    src_root=None,
                )
        return _finish(b, st, c, key, f"/bin/sh -c #(nop) {text}")


class _ImageRoot:
    def __init__(self, b: Builder, image_id: str) -> None:
        self.b = b
        self.image_id = image_id

    @contextlib.contextmanager
    def mounted(self) -> Iterator[str]:
        from dockyard.engine.copy import _container_root
        from dockyard.engine.spec import RunOptions

        c = self.b.engine.create(self.image_id, RunOptions(command=["true"], network="none"))
        try:
            with _container_root(self.b.engine, c, False) as root:
                yield root
        finally:
            self.b.engine.remove(c.id, force=True)


def _place(
    b: Builder,
    root: str,
    dest: str,
    dest_is_dir: bool,
    sources: list[_Source],
    uid: int,
    gid: int,
    mode: int | None,
    add: bool,
    src_root: str | None,
) -> None:
    from dockyard.build.context import looks_like_archive

    dest_rel = dest.lstrip("/")
    into_dir = dest_is_dir or any(s.is_dir for s in sources)
    if not into_dir and os.path.isdir(os.path.join(root, dest_rel)):
        into_dir = True  # an existing directory
    target_dir = dest_rel if into_dir else ""
    parent = target_dir if into_dir else os.path.dirname(dest_rel)
    with contextlib.ExitStack() as files:
        members: list[tuple[tarfile.TarInfo, IO[bytes] | None]] = []
        members += [(_dir_info(r, 0, 0), None) for r in _missing_dirs(root, parent)]
        archives: list[IO[bytes]] = []
        for s in sources:
            base = s.rel.rstrip("/").rsplit("/", 1)[-1]
            for rel, st_, link, opener in _entries(b, s, src_root):
                if s.is_dir:
                    sub = rel[len(s.rel) :].lstrip("/") if s.rel != "." else rel
                    if not sub:
                        continue
                    name = _join(target_dir, sub)
                else:
                    name = _join(target_dir, base) if into_dir else dest_rel
                    if add and stat.S_ISREG(st_.st_mode):
                        f = files.enter_context(opener())
                        if looks_like_archive(f.read(512)):
                            f.seek(0)
                            archives.append(f)
                            continue
                        f.seek(0)
                        members.append((_info(name, st_, link, uid, gid, mode), f))
                        continue
                data = files.enter_context(opener()) if stat.S_ISREG(st_.st_mode) else None
                members.append((_info(name, st_, link, uid, gid, mode), data))
        _write_tar(root, members)
        if archives:
            from dockyard.image.layers import apply_layer

            into = os.path.join(root, parent)
            real = os.path.realpath(into)
            if real != os.path.realpath(root) and not real.startswith(os.path.realpath(root) + "/"):
                raise BuildError(f"ADD: /{parent} leads outside the image (a symlink)")
            for f in archives:
                apply_layer(f, into, same_owner=True)  # type: ignore[arg-type]


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def _entries(
    b: Builder, s: _Source, src_root: str | None
) -> Iterator[tuple[str, os.stat_result, str, Callable[[], IO[bytes]]]]:
    if s.data is not None:
        import io

        data = s.data
        fake = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, len(data), 0, 0, 0))
        yield s.rel, fake, "", lambda: io.BytesIO(data)
        return
    if src_root is None:
        for e in b.context.walk(s.rel):

            def opener(e: Any = e) -> IO[bytes]:
                return b.context.open_entry(e)

            yield e.relpath, e.stat, e.linkname, opener  # type: ignore[misc]
        return
    top = os.path.join(src_root, s.rel)
    paths = [top]
    if s.is_dir and not os.path.islink(top):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            paths += [os.path.join(dirpath, n) for n in sorted(dirnames + filenames)]
    for p in paths:
        st_ = os.lstat(p)
        link = os.readlink(p) if stat.S_ISLNK(st_.st_mode) else ""

        def open_file(p: str = p) -> IO[bytes]:
            return open(p, "rb")

        yield os.path.relpath(p, src_root), st_, link, open_file


def _info(name: str, st_: Any, link: str, uid: int, gid: int, mode: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    m = st_.st_mode
    if stat.S_ISDIR(m):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(m):
        info.type = tarfile.SYMTYPE
        info.linkname = link
    elif stat.S_ISREG(m):
        info.size = st_.st_size
    else:
        raise BuildError(f"{name}: unsupported file type in a COPY source")
    info.mode = mode if mode is not None and not stat.S_ISLNK(m) else stat.S_IMODE(m)
    info.uid, info.gid = uid, gid
    info.mtime = int(getattr(st_, "st_mtime", 0))
    return info
