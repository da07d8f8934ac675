"""RUN --mount: bind, cache, tmpfs and secret mounts, as BuildKit's Dockerfile frontend has them.

- bind: a path of the build context (default), a stage or an image, read-only
  unless `rw` (and then the writes are thrown away).
- cache: a directory under `<root>/build/cache-mounts/` kept between builds,
  keyed by `id` (the target by default); `sharing=locked` takes a lock for the
  step, `private` takes another instance (kept too) while a step has the first.
- tmpfs: a fresh tmpfs (`size=`).
- secret: `--secret id=…` of the build, as a 0400 file (`/run/secrets/<id>`) or
  an environment variable (`env=`); never in a layer, never in the cache key.

A mount point the runtime had to create in the rootfs is taken out of the
step's upper dir afterwards, so no empty stub reaches the layer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from dockyard.build.executor import Builder, Stage
    from dockyard.build.instructions import Instruction
    from dockyard.engine.containers import Container

_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_KEYS = {
    "type": "type",
    "target": "target",
    "dst": "target",
    "destination": "target",
    "source": "source",
    "src": "source",
    "from": "from",
    "id": "id",
    "sharing": "sharing",
    "mode": "mode",
    "uid": "uid",
    "gid": "gid",
    "size": "size",
    "required": "required",
    "env": "env",
    "ro": "readonly",
    "readonly": "readonly",
    "rw": "readwrite",
    "readwrite": "readwrite",
}


class MountError(Exception):
    """A RUN --mount value BuildKit would refuse; one line."""


class RunMount:
    def __init__(self, fields: dict[str, str], text: str) -> None:
        self.text = text
        self.type = fields.get("type", "bind")
        if self.type not in _TYPES:
            raise MountError(
                f"unsupported mount type {self.type!r}: use bind, cache, tmpfs or secret"
            )
        if self.type == "ssh":
            raise MountError(
                "RUN --mount=type=ssh: SSH agent forwarding is not supported; use a secret"
            )
        self.source = fields.get("source", "")
        self.source_from = fields.get("from", "")
        self.id = fields.get("id", "")
        self.env = fields.get("env", "")
        self.target = fields.get("target", "")
        if self.type == "secret":
            self.id = self.id or os.path.basename(self.target)
            if not self.id:
                raise MountError(f"RUN --mount={text}: a secret needs id= or target=")
            if not self.target and not self.env:
                self.target = f"/run/secrets/{self.id}"
        elif not self.target:
            raise MountError(f"RUN --mount={text}: target= is required")
        self.readonly = _flag(fields, "readonly", self.type == "bind") and not _flag(
            fields, "readwrite", False
        )
        self.sharing = fields.get("sharing", "shared")
        if self.sharing not in ("shared", "private", "locked"):
            raise MountError(
                f"invalid sharing mode {self.sharing!r}: use shared, private or locked"
            )
        self.required = _flag(fields, "required", False)
        default_mode = "0400" if self.type == "secret" else "0755"
        try:
            self.mode = int(fields.get("mode", default_mode), 8)
            self.uid = int(fields.get("uid", "0"))
            self.gid = int(fields.get("gid", "0"))
        except ValueError:
            raise MountError(
                f"RUN --mount={text}: mode is octal, uid and gid are numbers"
            ) from None
        self.size = _size(fields.get("size", ""), text)
        self.mounted = False  # whether prepared() put it in the spec

    def resolve(self, workdir: str) -> None:
        if self.target:
            self.target = os.path.normpath(os.path.join(workdir, self.target))

    def key(self) -> str:
        return f"{self.type}:{self.target}:{self.source}:{self.source_from}:{self.id}:{self.env}"


def _flag(fields: dict[str, str], name: str, default: bool) -> bool:
    if name not in fields:
        return default
    return fields[name].lower() in ("", "true", "1")


def _size(text: str, whole: str) -> int:
    if not text:
        return 0
    units = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20}
    units |= {"g": 1 << 30, "gb": 1 << 30}
    number = text.rstrip("bkmgBKMG")
    try:
        return int(float(number) * units[text[len(number) :].lower()])
    except (ValueError, KeyError):
        raise MountError(f"RUN --mount={whole}: bad size {text!r}") from None


def parse(text: str) -> RunMount:
    import csv

    fields: dict[str, str] = {}
    for item in next(csv.reader([text])):
        k, eq, v = item.partition("=")
        key = _KEYS.get(k.strip().lower())
        if key is None:
            raise MountError(f"unexpected key {k!r} in {item!r}")
        if not eq and key not in ("readonly", "readwrite", "required"):
            raise MountError(f"RUN --mount={text}: {k} needs a value ({k}=...)")
        fields[key] = v
    return RunMount(fields, text)


def mount_sources(ins: Instruction) -> list[str]:
    """The stages/images a RUN's mounts read (`from=`): the build waits for those stages."""
    found = []
    for text in ins.flag_list("mount"):
        try:
            m = parse(str(text))
        except MountError:
            continue  # reported when the step runs
        if m.source_from and m.type in ("bind", "cache"):
            found.append(m.source_from)
    return found


def parse_all(b: Builder, st: Stage, ins: Instruction) -> list[RunMount]:
    workdir = b.config(st).get("WorkingDir") or "/"
    specs = []
    for text in ins.flag_list("mount"):
        try:
            m = parse(str(text))
        except MountError as err:
            raise b.error(ins, str(err)) from None
        m.resolve(workdir)
        specs.append(m)
    return specs


def cache_keys(b: Builder, st: Stage, specs: list[RunMount]) -> list[str]:
    """What each mount adds to the step's cache key: a bind's content, not a secret's."""
    from dockyard.build.context import content_digest

    keys = []
    for m in specs:
        keys.append(m.key())
        if m.type == "bind":
            if m.source_from:
                keys.append(_source_image(b, st, m.source_from))
            else:
                keys.append(content_digest(b.context, b.context.resolve(m.source or ".")))
    return keys


def _source_image(b: Builder, st: Stage, ref: str) -> str:
    dep = b.find_stage(ref, st.index)
    return dep.image_id if dep is not None else b.images.get(ref).id


def bind_mount(source: str, target: str, readonly: bool) -> dict[str, Any]:
    options = ["rbind", "ro" if readonly else "rw"]
    return {"destination": target, "type": "bind", "source": source, "options": options}


def _inside(root: str, rel: str) -> str:
    path = os.path.realpath(os.path.join(root, rel.lstrip("/")))
    real_root = os.path.realpath(root)
    if path != real_root and not path.startswith(real_root + "/"):
        raise MountError(f"mount source {rel} leads outside its root")
    if not os.path.exists(path):
        raise MountError(f"mount source {rel}: no such file or directory")
    return path


@contextlib.contextmanager
def prepared(
    b: Builder, st: Stage, specs: list[RunMount]
) -> Iterator[tuple[list[dict[str, Any]], list[str]]]:
    """(the OCI mounts, the secrets' env lines) for the step; cleaned up afterwards."""
    mounts: list[dict[str, Any]] = []
    env: list[str] = []
    with contextlib.ExitStack() as stack:

        def scratch() -> str:
            return b.scratch_dir(stack, "mount")

        for m in specs:
            if m.type == "bind":
                source = _bind_source(b, st, m, stack, scratch)
                mounts.append(bind_mount(source, m.target, m.readonly))
            elif m.type == "cache":
                mounts.append(
                    bind_mount(_cache_dir(b, st, m, stack, scratch), m.target, m.readonly)
                )
            elif m.type == "tmpfs":
                options = ["nosuid", "nodev"] + ([f"size={m.size}"] if m.size else [])
                mounts.append(
                    {
                        "destination": m.target,
                        "type": "tmpfs",
                        "source": "tmpfs",
                        "options": options,
                    }
                )
            else:
                data = b.opts.secrets.get(m.id)
                if data is None:
                    if m.required:
                        raise MountError(
                            f"secret {m.id}: not found (give it with --secret id={m.id},src=FILE)"
                        )
                    continue
                if m.env:
                    env.append(f"{m.env}={data.decode('utf-8', 'surrogateescape')}")
                if m.target:
                    path = os.path.join(scratch(), "secret")
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with open(fd, "wb") as f:
                        f.write(data)
                    os.chown(path, m.uid, m.gid)
                    os.chmod(path, m.mode)
                    mounts.append(bind_mount(path, m.target, True))
            m.mounted = bool(m.target)
        yield mounts, env


def _bind_source(
    b: Builder, st: Stage, m: RunMount, stack: contextlib.ExitStack, scratch: Any
) -> str:
    if m.source_from:
        from dockyard.build.copy_direct import image_view

        root = stack.enter_context(image_view(b, _source_image(b, st, m.source_from)))
        path = _inside(root, m.source or "/")
        if m.readonly:
            return path
        copy = os.path.join(scratch(), "src")
        _copy(path, copy)
        return copy
    from dockyard.build.context import DirContext

    ctx = b.context
    rel = ctx.resolve(m.source or ".")  # links inside the context's scope, as COPY's
    if isinstance(ctx, DirContext) and not ctx.matcher and m.readonly:
        return _inside(ctx.root, rel)  # nothing excluded: the context itself, read-only
    copy = os.path.join(scratch(), "src")
    _materialize(b, rel, copy)
    return copy


def _copy(src: str, dest: str) -> None:
    if os.path.isdir(src):
        shutil.copytree(src, dest, symlinks=True)
    else:
        shutil.copy2(src, dest)


def _materialize(b: Builder, rel: str, dest: str) -> None:
    """The context's `rel` (what .dockerignore leaves) copied to `dest`."""
    import stat

    from dockyard.build.dockerignore import normalize_relpath

    rel = normalize_relpath(rel)
    for e in b.context.walk(rel):
        sub = e.relpath[len(rel) :].lstrip("/") if rel != "." else e.relpath
        path = os.path.join(dest, sub) if sub else dest
        mode = e.stat.st_mode
        if stat.S_ISDIR(mode):
            os.makedirs(path, exist_ok=True)
        elif stat.S_ISLNK(mode):
            os.symlink(e.linkname, path)
        elif stat.S_ISREG(mode):
            with b.context.open_entry(e) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out)
        else:
            continue
        if not stat.S_ISLNK(mode):
            os.chmod(path, stat.S_IMODE(mode))


def _cache_dir(
    b: Builder, st: Stage, m: RunMount, stack: contextlib.ExitStack, scratch: Any
) -> str:
    import fcntl
    import hashlib

    name = hashlib.sha256((m.id or m.target).encode()).hexdigest()[:32]
    base = os.path.join(b.root, "build", "cache-mounts")
    os.makedirs(base, exist_ok=True)
    path = os.path.join(base, name)
    if m.sharing == "private":
        # BuildKit keeps one more instance for each step that finds the others in use.
        for n in range(64):
            path = os.path.join(base, name if n == 0 else f"{name}-{n}")
            lock = stack.enter_context(open(path + ".lock", "a"))  # noqa: SIM115 - the stack closes it
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                continue
        else:
            path = os.path.join(scratch(), "cache")  # 64 in use: a throwaway one
    elif m.sharing == "locked":
        lock = stack.enter_context(open(path + ".lock", "a"))  # noqa: SIM115 - the stack closes it
        fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.isdir(path):
        fresh = tempfile.mkdtemp(dir=base, prefix=".new-")
        if m.source_from:
            from dockyard.build.copy_direct import image_view

            with image_view(b, _source_image(b, st, m.source_from)) as root:
                shutil.rmtree(fresh)
                _copy(_inside(root, m.source or "/"), fresh)
        os.chown(fresh, m.uid, m.gid)
        os.chmod(fresh, m.mode)
        try:
            os.rename(fresh, path)
        except OSError:
            shutil.rmtree(fresh)  # another build made it first
            if not os.path.isdir(path):
                raise
    return path


# The files the engine bind-mounts into every container (Docker keeps them in an
# init layer, so they never reach a commit).
ENGINE_TARGETS = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")


def remove_stubs(b: Builder, c: Container, specs: list[RunMount]) -> None:
    """Take the mount points the runtime created (and nothing put in) out of the upper dir,
    with the parent directories overlay copied up only to hold them."""
    from dockyard.engine.commit import layer_dirs

    upper, lowers, _ = layer_dirs(b.engine, c)
    targets = {m.target for m in specs if m.mounted} | set(ENGINE_TARGETS)
    for target in sorted(targets, reverse=True):
        rel = target.strip("/")
        while rel:
            path = os.path.join(upper, rel)
            in_lower = any(os.path.lexists(os.path.join(lower, rel)) for lower in lowers)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    if in_lower and _opaque(path):
                        break
                    os.rmdir(path)
                elif not in_lower and os.path.isfile(path) and os.path.getsize(path) == 0:
                    os.unlink(path)
                else:
                    break
            except OSError:
                break  # not empty: the step put something there
            rel = os.path.dirname(rel)


def _opaque(path: str) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(path, name, follow_symlinks=False):
                return True
        except OSError:
            continue
    return False


def cache_mounts_dir(root: str) -> str:
    return os.path.join(root, "build", "cache-mounts")


def prune_cache_mounts(root: str) -> int:
    """`builder prune`: every cache mount goes; returns how many."""
    base = cache_mounts_dir(root)
    count = 0
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return 0
    for name in names:
        path = os.path.join(base, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
            count += 1
        else:
            os.unlink(path)
    return count
