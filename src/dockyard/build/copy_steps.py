"""COPY and ADD: sources from the context, another stage or image, a heredoc or a URL.

Sources are written into the step container's rootfs as one tar (Docker's
directory rules: a directory's contents are copied, a trailing `/` or several
sources make the destination a directory), then the container is committed.
`--link` builds the layer on its own, without the parent: its cache entry
(a one-layer image) is reused whatever the parent is.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
import tarfile
import tempfile
import time

from dockyard.build.executor import BuildError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import IO, Any

    from dockyard.build.dockerignore import IgnoreMatcher
    from dockyard.build.executor import Builder, Stage
    from dockyard.build.instructions import Instruction
    from dockyard.build.progress import Vertex

_GLOB = "*?["


def dir_info(name: str, uid: int, gid: int, mode: int = 0o755, mtime: float = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    return info


def write_tar(
    root: str,
    members: list[tuple[tarfile.TarInfo, Callable[[], IO[bytes]] | None]],
    donor: str | None = None,
) -> None:
    """Write `members` into `root` with the layer code's safe extraction (paths through
    directory fds, symlinks kept inside root); each file is opened only while copied.
    Files identical in the committed tree `donor` are hard-linked from there."""
    from dockyard.image.layer_entries import apply_entries

    apply_entries(members, root, same_owner=True, donor=donor)


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

    def __init__(
        self,
        rel: str,
        is_dir: bool,
        data: bytes | None = None,
        host_path: str | None = None,
        mtime: int = 0,
        digest: str = "",
        path: str | None = None,
    ) -> None:
        self.rel = rel  # as the Dockerfile names it: a file keeps this base name
        # where it is read, its symlinks resolved in the context's (or image's) scope
        self.path = rel if path is None else path
        self.is_dir = is_dir
        self.data = data  # a heredoc's content
        self.host_path = host_path  # a downloaded file (ADD <url>): mode 0600, not unpacked
        self.mtime = mtime
        self.digest = digest


def _context_sources(b: Builder, pattern: str) -> list[_Source]:
    """The context paths `pattern` names. A source that is a symlink is followed inside
    the context (Docker's FollowSymlinkInScope): its target's content is copied under
    the link's name; links below a copied directory stay links."""
    from dockyard.build.context import ContextError
    from dockyard.build.dockerignore import normalize_relpath

    rel = normalize_relpath(pattern)
    if rel == ".." or rel.startswith("../"):
        raise BuildError(f"COPY failed: forbidden path outside the build context: {pattern}")
    if any(ch in rel for ch in _GLOB):
        depth = rel.count("/")
        names = [
            e.relpath
            for e in b.context.walk(".")
            if e.relpath.count("/") == depth and fnmatch.fnmatchcase(e.relpath, rel)
        ]
        if not names:
            raise BuildError(f"COPY failed: no source files were specified ({pattern})")
    else:
        names = [rel]
    found = []
    for name in names:
        if name == ".":
            found.append(_Source(".", True))  # the whole context: walk(".") gives its children
            continue
        try:
            real = b.context.resolve(name)
            first = None if real == "." else next(iter(b.context.walk(real)), None)
        except ContextError:  # excluded, or a symlink loop
            real, first = "", None
        if real == ".":
            found.append(_Source(name, True, path="."))
        elif first is None:
            raise BuildError(f"COPY failed: file not found in build context or excluded: {pattern}")
        else:
            found.append(_Source(name, first.is_dir(), path=first.relpath))
    return found


def _image_sources(root: str, pattern: str) -> list[_Source]:
    """The paths `pattern` names in an image's root file system `root`, every symlink
    on the way (and a source that is one) resolved as if `root` were `/`."""
    from dockyard.build.copy_direct import resolve_in
    from dockyard.runtime.errors import RuntimeFailure

    rel = os.path.normpath("/" + pattern).lstrip("/") or "."
    try:
        names = _scoped_glob(root, rel) if any(ch in rel for ch in _GLOB) else [rel]
        reals = [resolve_in(root, name) if name != "." else "" for name in names]
    except RuntimeFailure as err:  # a symlink loop
        raise BuildError(f"COPY failed: {pattern}: {err}") from None
    found = []
    for name, real in zip(names, reals, strict=True):
        if real and not os.path.lexists(os.path.join(root, real)):
            continue
        path = os.path.join(root, real) if real else root
        found.append(_Source(name, os.path.isdir(path), path=real or "."))
    if not found:
        raise BuildError(f"COPY failed: stat {pattern}: file does not exist")
    return found


def _scoped_glob(root: str, rel: str) -> list[str]:
    """The paths under `root` matching `rel` component by component (as the kernel
    would not: a symlink on the way is resolved inside `root`), sorted."""
    from dockyard.build.copy_direct import resolve_in

    matches = [""]
    for part in rel.split("/"):
        step = []
        for have in matches:
            here = resolve_in(root, have) if have else ""
            if not any(ch in part for ch in _GLOB):
                step.append(f"{have}/{part}" if have else part)
                continue
            try:
                listing = sorted(os.listdir(os.path.join(root, here) if here else root))
            except OSError:
                continue
            # Go's filepath.Match, as BuildKit's: `*` matches a leading dot too
            step += [f"{have}/{e}" if have else e for e in listing if fnmatch.fnmatchcase(e, part)]
        matches = step
    return [m for m in matches if m]


def _from_image(b: Builder, st: Stage, ref: str) -> str:
    dep = b.find_stage(ref, st.index)
    if dep is not None:
        return dep.image_id
    return b.images.get(ref).id


def _is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def _is_git(src: str) -> bool:
    return src.startswith(("git@", "git://")) or (
        "://" in src and src.split("#", 1)[0].endswith(".git")
    )


def _fetch(b: Builder, ins: Instruction, urls: list[str], into: str) -> list[_Source]:
    from dockyard.build.fetch import FetchError, fetch_url

    checksum = str(ins.flag_values.get("checksum") or "") or None
    if checksum and len(urls) != 1:
        raise b.error(ins, "checksum can't be specified for multiple sources")
    found = []
    for url in urls:
        try:
            f = fetch_url(url, into, checksum)
        except FetchError as err:
            raise b.error(ins, str(err)) from None
        found.append(_Source(f.filename, False, host_path=f.path, mtime=f.mtime, digest=f.digest))
    return found


def do_copy(b: Builder, st: Stage, ins: Instruction, v: Vertex, add: bool = False) -> str:
    from dockyard.build.cache import step_key
    from dockyard.build.context import content_digest
    from dockyard.build.copy_direct import copy_direct, image_view
    from dockyard.build.parser import parse_heredoc_word

    srcs, dest = list(ins.args[:-1]), ins.args[-1]
    docs = {h.name: h for h in ins.heredocs}
    inline = []  # COPY <<EOF /dest: each document becomes a file named after it
    for word in list(srcs):
        doc = parse_heredoc_word(word)
        if doc is not None and doc.name in docs:
            srcs.remove(word)
            inline.append(_Source(doc.name, False, docs[doc.name].content.encode()))
    if add and any(_is_git(s) for s in srcs):
        raise b.error(ins, "ADD of a git repository is not supported: clone it in a RUN step")
    urls = [s for s in srcs if _is_url(s)] if add else []
    if ins.flag_values.get("checksum") and not urls:
        raise b.error(ins, "checksum can't be specified for non-HTTP(S) sources")
    srcs = [s for s in srcs if s not in urls]
    chown = str(ins.flag_values.get("chown") or "")
    chmod = str(ins.flag_values.get("chmod") or "")
    try:
        mode = int(chmod, 8) if chmod else None
    except ValueError:
        raise b.error(
            ins, f"invalid chmod parameter {chmod!r}: use an octal mode like 0755"
        ) from None
    link = bool(ins.flag_values.get("link"))
    excludes = ins.flag_list("exclude")
    exclude = None
    if excludes:
        from dockyard.build.dockerignore import IgnoreMatcher

        exclude = IgnoreMatcher(excludes)
    workdir = b.config(st).get("WorkingDir") or "/"
    as_dir = dest.endswith("/") or dest.endswith("/.") or dest in (".", "/")
    dest_abs = os.path.normpath(os.path.join(workdir, dest))
    ref = str(ins.flag_values.get("from") or "")
    text = f"{ins.cmd.upper()} " + " ".join(
        [*ins.flags, *srcs, *urls, dest_abs + ("/" if as_dir else "")]
    )
    if len(srcs) + len(urls) + len(inline) > 1 and not as_dir:
        raise b.error(
            ins,
            "When using COPY with more than one source file, the destination "
            "must be a directory and end with a /",
        )
    with contextlib.ExitStack() as stack:
        downloads = b.scratch_dir(stack, "add")
        fetched = _fetch(b, ins, urls, downloads)
        if ref:
            source_image = _from_image(b, st, ref)
            digests = [source_image]
            sources: list[_Source] = []
        else:
            try:
                sources = [s for pattern in srcs for s in _context_sources(b, pattern)]
            except BuildError as err:
                raise b.step_error(ins, v, str(err)) from None
            digests = [content_digest(b.context, s.path) for s in sources]
        digests += [f"{s.rel}\0{s.data!r}" for s in inline]
        digests += [f"{s.rel}\0{s.digest}\0{s.mtime}" for s in fetched]
        sources += inline + fetched
        key = step_key(st.image_id, text, *digests)
        hit = b.cached(key)
        if hit:
            v.cached()
            return hit
        placement = _Placement(
            b, dest_abs, as_dir, sources, srcs if ref else [], chown, mode, add, exclude
        )
        if ref:
            src_root = stack.enter_context(image_view(b, source_image))
            placement.from_image(src_root, inline + fetched)
        created_by = f"/bin/sh -c #(nop) {text}"
        if link:
            link_key = step_key("COPY --link", text, *digests)
            image_id, reused = _linked(b, st, placement, link_key, created_by)
            b.remember(key, st.image_id, image_id)
            if reused:
                v.cached()
                return image_id
        else:
            donor_key = step_key(st.image_id, text, "donor")
            direct = None if add else copy_direct(b, st, placement, key, created_by, donor_key)
            image_id = (
                direct
                if direct is not None
                else _through_container(b, st, placement, key, created_by)
            )
    v.done()
    return image_id


def _through_container(
    b: Builder, st: Stage, placement: _Placement, key: str, created_by: str
) -> str:
    """The copy through a step container's merged view (ADD, or a symlink to follow)."""
    from dockyard.build.steps import container, finish
    from dockyard.engine.copy import _container_root

    with container(b, st, ["true"], []) as c:
        with _container_root(b.engine, c, True) as root:
            placement.write(root)
        return finish(b, st, c, key, created_by)


def _tmp(b: Builder) -> str:
    path = os.path.join(b.root, "tmp")
    os.makedirs(path, exist_ok=True)
    return path


def _linked(
    b: Builder, st: Stage, placement: _Placement, link_key: str, created_by: str
) -> tuple[str, bool]:
    """--link: the layer is made in an empty directory, cached apart from any parent.
    Returns (the new image, whether the layer came from the cache)."""
    with contextlib.ExitStack() as stack:
        look = None
        if placement.chown and not all(p.isdigit() for p in placement.chown.split(":")):
            # Names are the parent's: resolved there, and the ids key the layer.
            from dockyard.build.cache import step_key
            from dockyard.build.copy_direct import image_view

            look = stack.enter_context(image_view(b, st.image_id))
            uid, gid = _owner(b, look, placement.chown)
            link_key = step_key(link_key, f"{uid}:{gid}")
        return _linked_layer(b, st, placement, link_key, created_by, look)


def _linked_layer(
    b: Builder,
    st: Stage,
    placement: _Placement,
    link_key: str,
    created_by: str,
    look: str | None,
) -> tuple[str, bool]:
    import json
    import shutil

    from dockyard.image.layer_diff import diff_layer
    from dockyard.storage.leases import CONTENT

    layer_image = b.cached(link_key)
    reused = layer_image is not None
    if layer_image is None:
        empty = b.empty_image()
        scratch = tempfile.mkdtemp(dir=_tmp(b), prefix=b.tmp_prefix("link"))
        try:
            placement.write(scratch, look=look)
            with b.images.leases.create() as lease:
                with lease.guard(), b.images.content.writer() as writer:
                    diff_layer(scratch, writer, mtime_clamp=b.opts.source_date_epoch)  # type: ignore[arg-type]
                    size = writer.offset
                    digest = writer.commit()
                    lease.add(CONTENT, digest)
                layer_image = b.new_image(empty, created_by, lambda c: None, (digest, size))
        finally:
            shutil.rmtree(scratch)
        b.remember(link_key, empty, layer_image)
    image = b.images.get(layer_image)
    top = json.loads(b.images.content.read(image.manifest_digest))["layers"][-1]
    layer = (str(top["digest"]), int(top["size"]))
    return b.new_image(st.image_id, created_by, lambda c: None, layer), reused


class _Placement:
    """Where and how a COPY's sources land in a root directory."""

    def __init__(
        self,
        b: Builder,
        dest: str,
        as_dir: bool,
        sources: list[_Source],
        image_patterns: list[str],
        chown: str,
        mode: int | None,
        add: bool,
        exclude: IgnoreMatcher | None,
    ) -> None:
        self.b = b
        self.dest = dest
        self.as_dir = as_dir
        self.sources = sources
        self.image_patterns = image_patterns
        self.chown = chown
        self.mode = mode
        self.add = add
        self.exclude = exclude
        self.src_root: str | None = None

    def from_image(self, src_root: str, extra: list[_Source]) -> None:
        self.src_root = src_root
        self.sources = [s for p in self.image_patterns for s in _image_sources(src_root, p)]
        self.sources += extra

    def write(
        self,
        root: str,
        look: str | None = None,
        dest: str | None = None,
        into_dir: bool | None = None,
        donor: str | None = None,
    ) -> None:
        """Write the sources into `root`. `look` (default `root`) is where the parent
        image is seen: --chown names, whether the destination is a directory. `donor`:
        an earlier result of the same step, whose identical files are hard-linked."""
        uid, gid = _owner(self.b, look or root, self.chown)
        _place(
            self.b,
            root,
            self.dest if dest is None else dest,
            self.as_dir or len(self.sources) > 1,
            self.sources,
            uid,
            gid,
            self.mode,
            add=self.add,
            src_root=self.src_root,
            exclude=self.exclude,
            into_dir=into_dir,
            donor=donor,
        )

    def entries(
        self, s: _Source
    ) -> Iterator[tuple[str, os.stat_result, str, Callable[[], IO[bytes]]]]:
        return _entries(self.b, s, self.src_root)


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
    exclude: IgnoreMatcher | None = None,
    into_dir: bool | None = None,
    donor: str | None = None,
) -> None:
    from dockyard.build.context import looks_like_archive
    from dockyard.build.steps import missing_dirs

    dest_rel = dest.lstrip("/")
    if into_dir is None:
        into_dir = dest_is_dir or any(s.is_dir for s in sources)
        if not into_dir and os.path.isdir(os.path.join(root, dest_rel)):
            into_dir = True  # an existing directory
    target_dir = dest_rel if into_dir else ""
    parent = target_dir if into_dir else os.path.dirname(dest_rel)
    members: list[tuple[tarfile.TarInfo, Callable[[], IO[bytes]] | None]] = []
    members += [(dir_info(r, 0, 0, mtime=time.time()), None) for r in missing_dirs(root, parent)]
    archives: list[Callable[[], IO[bytes]]] = []
    for s in sources:
        base = s.rel.rstrip("/").rsplit("/", 1)[-1]
        for rel, st_, link, opener in _entries(b, s, src_root):
            if s.is_dir:
                sub = rel[len(s.path) :].lstrip("/") if s.path != "." else rel
                if not sub or (exclude is not None and exclude.matches(sub)):
                    continue
                name = _join(target_dir, sub)
            else:
                if exclude is not None and exclude.matches(base):
                    continue
                name = _join(target_dir, base) if into_dir else dest_rel
                if add and s.host_path is None and s.data is None and stat.S_ISREG(st_.st_mode):
                    with opener() as f:
                        if looks_like_archive(f.read(512)):
                            archives.append(opener)
                            continue
            data = opener if stat.S_ISREG(st_.st_mode) else None
            members.append((_info(name, st_, link, uid, gid, mode), data))
    write_tar(root, members, donor)
    if archives:
        from dockyard.image.layers import apply_layer

        into = os.path.join(root, parent)
        real = os.path.realpath(into)
        if real != os.path.realpath(root) and not real.startswith(os.path.realpath(root) + "/"):
            raise BuildError(f"ADD: /{parent} leads outside the image (a symlink)")
        for open_archive in archives:
            with open_archive() as f:
                apply_layer(_decompressed(f), into, same_owner=True)  # type: ignore[arg-type]


def _decompressed(f: IO[bytes]) -> IO[bytes]:
    """bzip2 and xz unwrapped here; the layer code reads plain, gzip and zstd itself."""
    head = f.read(6)
    f.seek(0)
    if head.startswith(b"BZh"):
        import bz2

        return bz2.BZ2File(f)
    if head.startswith(b"\xfd7zXZ\x00"):
        import lzma

        return lzma.LZMAFile(f)
    return f


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def _entries(
    b: Builder, s: _Source, src_root: str | None
) -> Iterator[tuple[str, os.stat_result, str, Callable[[], IO[bytes]]]]:
    if s.host_path is not None:
        path = s.host_path
        size = os.stat(path).st_size
        fake = os.stat_result((stat.S_IFREG | 0o600, 0, 0, 1, 0, 0, size, 0, s.mtime, 0))
        yield s.rel, fake, "", lambda: open(path, "rb")  # noqa: SIM115 - the caller closes it
        return
    if s.data is not None:
        import io

        data = s.data
        fake = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, len(data), 0, 0, 0))
        yield s.rel, fake, "", lambda: io.BytesIO(data)
        return
    if src_root is None:
        for e in b.context.walk(s.path):

            def opener(e: Any = e) -> IO[bytes]:
                return b.context.open_entry(e)

            yield e.relpath, e.stat, e.linkname, opener  # type: ignore[misc]
        return
    top = os.path.join(src_root, s.path) if s.path != "." else src_root
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
