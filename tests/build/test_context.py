"""The build context walk (directory and tar) and its content digest."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from dockyard.build.context import (
    ContextError,
    DirContext,
    Entry,
    HashCache,
    TarContext,
    content_digest,
    looks_like_archive,
    open_context,
    walk_context,
)
from dockyard.build.dockerignore import IgnoreMatcher


def make_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def names(entries: object) -> list[str]:
    return [e.relpath for e in entries]  # type: ignore[attr-defined]


TREE = {
    "Dockerfile": "FROM scratch\n",
    ".dockerignore": "",
    "a.txt": "a",
    "a/b": "b",
    "a/c/d.go": "d",
    "docs/README.md": "r",
    "docs/guide.md": "g",
    "node_modules/x/index.js": "x",
    "node_modules/x/keep.go": "k",
}


def test_walk_order_is_go_walkdir_order(tmp_path: Path) -> None:
    make_tree(tmp_path, TREE)
    assert names(walk_context(tmp_path)) == [
        ".dockerignore",
        "Dockerfile",
        "a",
        "a/b",
        "a/c",
        "a/c/d.go",
        "a.txt",  # after a/… : names are sorted per directory, depth first
        "docs",
        "docs/README.md",
        "docs/guide.md",
        "node_modules",
        "node_modules/x",
        "node_modules/x/index.js",
        "node_modules/x/keep.go",
    ]
    entry = next(iter(walk_context(tmp_path)))
    relpath, st = entry
    assert relpath == ".dockerignore" and st.st_size == 0


def test_walk_excludes_and_reincludes(tmp_path: Path) -> None:
    make_tree(tmp_path, TREE)
    matcher = IgnoreMatcher.from_lines(["docs", "!docs/README.md", "*.txt", "Dockerfile"])
    assert names(walk_context(tmp_path, matcher)) == [
        ".dockerignore",
        "a",
        "a/b",
        "a/c",
        "a/c/d.go",
        "docs",  # excluded itself, but yielded before its re-included file
        "docs/README.md",
        "node_modules",
        "node_modules/x",
        "node_modules/x/index.js",
        "node_modules/x/keep.go",
    ]
    # the Dockerfile still reaches the builder
    assert DirContext(tmp_path, matcher).read_file("Dockerfile") == b"FROM scratch\n"


def test_walk_prunes_excluded_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path, TREE)
    listed: list[str] = []
    original = DirContext._children

    def spy(self: DirContext, rel: str, tolerant: bool) -> list[Entry]:
        listed.append(rel)
        return original(self, rel, tolerant)

    monkeypatch.setattr(DirContext, "_children", spy)
    pruned = IgnoreMatcher.from_lines(["node_modules", "!docs/README.md"])
    assert "node_modules/x/keep.go" not in names(walk_context(tmp_path, pruned))
    assert "node_modules" not in listed and "node_modules/x" not in listed
    listed.clear()
    kept = IgnoreMatcher.from_lines(["node_modules", "!**/*.go"])
    got = names(walk_context(tmp_path, kept))
    assert "node_modules" in listed  # an exception may match below: walked
    assert got[-3:] == ["node_modules", "node_modules/x", "node_modules/x/keep.go"]
    assert "node_modules/x/index.js" not in got


def test_walk_excluded_dir_without_reinclusions_is_not_yielded(tmp_path: Path) -> None:
    make_tree(tmp_path, TREE)
    matcher = IgnoreMatcher.from_lines(["docs", "!docs/nothing-here"])
    assert not [n for n in names(walk_context(tmp_path, matcher)) if n.startswith("docs")]


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    make_tree(tmp_path, {"real/file": "x"})
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "dangling").symlink_to("/nonexistent/target")
    outside = tmp_path.parent / (tmp_path.name + "-outside")
    outside.mkdir()
    (outside / "secret").write_text("s")
    (tmp_path / "out").symlink_to(outside)
    entries = {e.relpath: e for e in walk_context(tmp_path)}
    assert sorted(entries) == ["dangling", "link", "out", "real", "real/file"]
    assert entries["link"].linkname == "real"
    assert entries["dangling"].linkname == "/nonexistent/target"
    assert not entries["out"].is_dir()


def test_resolve_follows_symlinks_inside_the_context(tmp_path: Path) -> None:
    make_tree(tmp_path, {"d1/one": "1", "d1/sub/two": "2"})
    outside = tmp_path.parent / (tmp_path.name + "-outside")
    outside.mkdir(exist_ok=True)
    (outside / "secret").write_text("s")
    (tmp_path / "linkdir").symlink_to("d1")
    (tmp_path / "abs").symlink_to("/d1/one")  # absolute: from the context's root
    (tmp_path / "d1" / "up").symlink_to("../../../..")  # `..` stops at the root
    (tmp_path / "out").symlink_to(outside)
    (tmp_path / "loop").symlink_to("loop")
    ctx = DirContext(tmp_path)
    assert ctx.resolve("linkdir/sub/two") == "d1/sub/two"
    assert ctx.resolve("linkdir") == "d1" and ctx.resolve("linkdir", follow_last=False) == "linkdir"
    assert ctx.resolve("abs") == "d1/one"
    assert ctx.resolve("d1/up/d1/one") == "d1/one" and ctx.resolve("d1/up") == "."
    assert ctx.resolve("out/secret") == outside.as_posix().lstrip("/") + "/secret"
    assert ctx.resolve("missing/x") == "missing/x"
    with pytest.raises(ContextError, match="too many levels"):
        ctx.resolve("loop")
    # the walk resolves the way to its start the same way, so no link leads out
    assert names(ctx.walk("linkdir/one")) == ["d1/one"]
    with pytest.raises(ContextError, match="not found"):
        list(ctx.walk("out/secret"))
    tar = TarContext(io.BytesIO(make_tar(TAR_MEMBERS, "w")))
    assert tar.resolve("current/main.go") == "src/main.go"
    assert names(tar.walk("current/main.go")) == ["src/main.go"]


def test_walk_start_subpath_and_errors(tmp_path: Path) -> None:
    make_tree(tmp_path, TREE)
    matcher = IgnoreMatcher.from_lines(["a/c"])
    assert names(DirContext(tmp_path, matcher).walk("a")) == ["a", "a/b"]
    assert names(DirContext(tmp_path, matcher).walk("./a/b")) == ["a/b"]
    assert names(DirContext(tmp_path, matcher).walk("a/c")) == []
    with pytest.raises(ContextError, match="nope: not found in the build context"):
        list(DirContext(tmp_path).walk("nope"))
    with pytest.raises(ContextError, match="outside the build context"):
        list(DirContext(tmp_path).walk("../x"))
    with pytest.raises(ContextError, match="not a directory"):
        DirContext(tmp_path / "a.txt")


# --- tar contexts ---------------------------------------------------------------------


def make_tar(members: list[tuple[str, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif name.endswith("@link"):
                info.name = name[:-5]
                info.type = tarfile.SYMTYPE
                info.linkname = data.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR_MEMBERS: list[tuple[str, bytes | None]] = [
    ("./Dockerfile", b"FROM scratch\n"),
    ("./src/", None),
    ("./src/main.go", b"package main\n"),
    ("./deep/implied/file.txt", b"x"),  # parents only implied
    ("./docs/a.md", b"a"),
    ("./current@link", b"src"),
]


class Unseekable(io.BytesIO):
    """A pipe-like stream: the context must spool it to read it twice."""

    def seekable(self) -> bool:
        return False


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_context_walk(mode: str) -> None:
    data = make_tar(TAR_MEMBERS, mode)
    assert looks_like_archive(data[:1024])
    matcher = IgnoreMatcher.from_lines(["docs", "Dockerfile"])
    with TarContext((Unseekable(data)), matcher) as ctx:
        assert names(ctx.walk()) == [
            "current",
            "deep",
            "deep/implied",
            "deep/implied/file.txt",
            "src",
            "src/main.go",
        ]
        assert ctx.read_file("Dockerfile") == b"FROM scratch\n"  # excluded, still readable
        assert ctx.read_file("current/main.go") == b"package main\n"
        entries = {e.relpath: e for e in ctx.walk()}
        assert entries["current"].linkname == "src"
        assert entries["deep"].is_dir()


def test_tar_context_from_file_and_zstd(tmp_path: Path) -> None:
    import zstandard

    plain = make_tar(TAR_MEMBERS)
    (tmp_path / "ctx.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(plain))
    (tmp_path / "ctx.tar").write_bytes(plain)
    with open_context(tmp_path / "ctx.tar.zst") as zctx, open_context(tmp_path / "ctx.tar") as ctx:
        assert isinstance(zctx, TarContext) and isinstance(ctx, TarContext)
        assert names(zctx.walk()) == names(ctx.walk())
        assert content_digest(zctx) == content_digest(ctx)


def test_tar_context_errors(tmp_path: Path) -> None:
    assert not looks_like_archive(b"FROM scratch\n")
    with pytest.raises(ContextError, match="not a valid tar archive"):
        TarContext(io.BytesIO(b"FROM scratch\n" * 100))
    with pytest.raises(ContextError, match="outside the build context"):
        TarContext(io.BytesIO(make_tar([("../escape", b"x")])))
    with pytest.raises(ContextError, match="cannot open build context"):
        TarContext(tmp_path / "missing.tar")


def test_tar_and_dir_digests_agree(tmp_path: Path) -> None:
    make_tree(tmp_path / "ctx", {"src/main.go": "package main\n", "b.txt": "b"})
    for path in (tmp_path / "ctx", tmp_path / "ctx" / "src"):
        path.chmod(0o755)
    for path in ((tmp_path / "ctx" / "b.txt"), (tmp_path / "ctx" / "src" / "main.go")):
        path.chmod(0o644)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in ("b.txt", "src", "src/main.go"):
            tar.add(tmp_path / "ctx" / rel, arcname=rel, recursive=False)
    with TarContext(io.BytesIO(buf.getvalue())) as tctx:
        assert content_digest(tctx, "src", "b.txt") == content_digest(
            tmp_path / "ctx", "src", "b.txt"
        )


# --- content digest -------------------------------------------------------------------


def test_digest_ignores_times_tracks_content_and_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dockyard.build import context

    monkeypatch.setattr(context, "_RACY_NS", 0)  # cache the files written just now too
    make_tree(tmp_path, TREE)
    cache = HashCache()
    first = content_digest(tmp_path, cache=cache)
    assert len(cache) == len(TREE)
    os.utime(tmp_path / "a" / "b", ns=(1, 1))
    os.utime(tmp_path / "a", ns=(2, 2))
    assert content_digest(tmp_path, cache=cache) == first  # touch: same digest
    assert content_digest(tmp_path, cache=HashCache()) == first  # and cold
    (tmp_path / "a" / "b").write_text("B")
    changed = content_digest(tmp_path, cache=cache)
    assert changed != first
    (tmp_path / "a" / "b").write_text("b")
    assert content_digest(tmp_path, cache=cache) == first
    (tmp_path / "a" / "b").chmod(0o600)
    assert content_digest(tmp_path, cache=cache) != first
    (tmp_path / "a" / "b").chmod(0o644)
    assert content_digest(tmp_path, cache=cache) == first
    if os.geteuid() == 0:
        os.chown(tmp_path / "a" / "b", 1234, 1234)
        assert content_digest(tmp_path, cache=cache) != first


def test_digest_of_paths_symlinks_and_matcher(tmp_path: Path) -> None:
    make_tree(tmp_path, TREE)
    base = content_digest(tmp_path, "a")
    (tmp_path / "docs" / "guide.md").write_text("changed")
    assert content_digest(tmp_path, "a") == base  # other paths don't count
    assert content_digest(tmp_path, "a", "docs") != content_digest(tmp_path, "docs", "a")
    (tmp_path / "a" / "ln").symlink_to("b")
    with_link = content_digest(tmp_path, "a")
    assert with_link != base
    (tmp_path / "a" / "ln").unlink()
    (tmp_path / "a" / "ln").symlink_to("c")
    assert content_digest(tmp_path, "a") != with_link  # the link target counts
    ctx = DirContext(tmp_path, IgnoreMatcher.from_lines(["a/c"]))
    filtered = content_digest(ctx, "a")
    (tmp_path / "a" / "c" / "d.go").write_text("ignored change")
    assert content_digest(ctx, "a") == filtered  # excluded content doesn't count
    with pytest.raises(ContextError, match="excluded from the build context"):
        content_digest(ctx, "a/c")
    with pytest.raises(ContextError, match="not found"):
        content_digest(ctx, "missing")
    assert content_digest(ctx).startswith("sha256:")


def test_tar_read_file_resolution_and_duplicates() -> None:
    data = make_tar(
        [
            ("dir/Dockerfile", b"old"),
            ("dir/Dockerfile", b"new"),  # the last member of a name wins
            ("up@link", b"../../dir"),  # '..' stops at the context root
            ("loop@link", b"loop"),
        ]
    )
    with TarContext(io.BytesIO(data)) as ctx:
        assert ctx.read_file("dir/Dockerfile") == b"new"
        assert ctx.read_file("up/Dockerfile") == b"new"
        assert ctx.names() == ["dir", "dir/Dockerfile", "loop", "up"]
        with pytest.raises(ContextError, match="too many levels of symbolic links"):
            ctx.read_file("loop")
        with pytest.raises(ContextError, match="not a regular file"):
            ctx.read_file("dir")


def test_stdin_context(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Stdin:
        buffer = Unseekable(make_tar(TAR_MEMBERS, "w:gz"))

    monkeypatch.setattr("sys.stdin", Stdin)
    with open_context("-") as ctx:
        assert isinstance(ctx, TarContext)
        assert "src/main.go" in names(ctx.walk())
    assert isinstance(open_context(tmp_path), DirContext)


def test_hash_cache_persists_but_not_racy_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Digests outlive the process (a rebuild hashes only what changed); a file changed
    in the last seconds is hashed again, since its times could stay put on a change."""
    from dockyard.build import context

    root = tmp_path / "ctx"
    root.mkdir()
    (root / "f").write_text("one")
    ctx = DirContext(root)
    entry = next(iter(ctx.walk("f")))
    fresh = HashCache()
    ctx.file_sha256(entry, fresh)
    assert len(fresh) == 0  # just written: racy, not kept
    monkeypatch.setattr(context, "_RACY_NS", 0)
    digest = ctx.file_sha256(entry, fresh)
    saved = tmp_path / "digests"
    fresh.save(str(saved))
    again = HashCache()
    again.load(str(saved))
    assert again.get(context._stat_key(entry.stat)) == digest
    (root / "f").write_text("two")  # same size, new ctime: another key
    changed = next(iter(ctx.walk("f")))
    assert again.get(context._stat_key(changed.stat)) is None
    saved.write_bytes(b"not marshal")
    broken = HashCache()
    broken.load(str(saved))
    assert len(broken) == 0
