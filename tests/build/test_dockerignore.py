""".dockerignore: Docker's documented examples and moby patternmatcher/ignorefile tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.build.dockerignore import (
    DockerignoreError,
    IgnoreMatcher,
    find_ignore_file,
    go_clean,
    go_filepath_match,
    load_matcher,
    read_patterns,
)


def m(*lines: str) -> IgnoreMatcher:
    return IgnoreMatcher.from_lines(list(lines))


# --- reading the file (ignorefile.ReadAll) ---------------------------------------------


def test_read_all_moby_table() -> None:
    content = (
        "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! "
    )
    assert read_patterns(content) == [
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "!",
        "!",
    ]
    with pytest.raises(DockerignoreError, match='illegal exclusion pattern: "!"'):
        IgnoreMatcher.from_lines(content)


def test_read_comments_trimming_clean_bom_crlf() -> None:
    text = b"\xef\xbb\xbf# comment\r\n  spaced  \r\n\t\r\n  # not a comment\n./a/../b//c/\n/\n"
    assert read_patterns(text) == ["spaced", "# not a comment", "b/c", "/"]
    assert read_patterns(["/foo/bar", "!/x", "foo/./bar/..", "\u3000x\u3000"]) == [
        "foo/bar",
        "!x",
        "foo",
        "x",
    ]


@pytest.mark.parametrize(
    ("path", "want"),
    [("", "."), ("a//b/./c/", "a/b/c"), ("../a/..", ".."), ("/../a", "/a"), ("//a", "/a")],
)
def test_go_clean(path: str, want: str) -> None:
    assert go_clean(path) == want


# --- Docker's documentation examples -------------------------------------------------------

DOC = m("# comment", "*/temp*", "*/*/temp*", "temp?")


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("somedir/temporary.txt", True),  # */temp*
        ("somedir/temp", True),
        ("somedir/temp/inner/file", True),  # everything below an excluded dir
        ("temporary.txt", False),  # */temp* is one level down only
        ("somedir/subdir/temporary.txt", True),  # */*/temp*
        ("a/b/c/temporary.txt", False),
        ("tempa", True),  # temp?
        ("tempb", True),
        ("temp", False),
        ("tempab", False),
        ("dir/tempa", True),  # by */temp*, not by temp?
        ("# comment", False),
    ],
)
def test_docs_temp_examples(path: str, ignored: bool) -> None:
    assert DOC.matches(path) is ignored


def test_docs_double_star_go() -> None:
    go = m("**/*.go")
    assert go.matches("main.go")  # the root too
    assert go.matches("a/b/c/x.go")
    assert not go.matches("a/b/x.golang")


def test_docs_markdown_exception() -> None:
    md = m("*.md", "!README.md")
    assert md.matches("CHANGELOG.md")
    assert not md.matches("README.md")
    assert not md.matches("docs/guide.md")  # *.md is the root level only


def test_docs_order_matters() -> None:
    secret_last = m("*.md", "!README*.md", "README-secret.md")
    assert secret_last.matches("README-secret.md")
    assert not secret_last.matches("README.md")
    assert not secret_last.matches("README-dev.md")
    assert secret_last.matches("other.md")
    exception_last = m("*.md", "README-secret.md", "!README*.md")
    assert not exception_last.matches("README-secret.md")  # the middle line has no effect
    assert not exception_last.matches("README.md")
    assert exception_last.matches("other.md")


def test_docs_leading_slash_and_clean() -> None:
    for matcher in (m("/foo/bar"), m("foo/bar"), m("foo/./baz/../bar/")):
        assert matcher.matches("foo/bar")
        assert matcher.matches("foo/bar/deep/file")
        assert not matcher.matches("foo/barn")
        assert not matcher.matches("x/foo/bar")


def test_double_star_start_middle_end() -> None:
    start = m("**/cache")
    assert start.matches("cache") and start.matches("a/b/cache") and start.matches("a/cache/x")
    assert not start.matches("a/mycache")
    middle = m("a/**/b")
    for path in ("a/b", "a/x/b", "a/x/y/b", "a/x/b/below"):
        assert middle.matches(path), path
    assert not middle.matches("a/xb") and not middle.matches("c/a/b")
    end = m("build/**")
    assert end.matches("build/x") and end.matches("build/x/y")
    assert not end.matches("build")  # `dir/**` is what is below dir
    assert m("**").matches("anything/at/all")


def test_exception_inside_excluded_dir() -> None:
    matcher = m("docs", "!docs/README.md")
    assert matcher.matches("docs")
    assert matcher.matches("docs/other.md")
    assert not matcher.matches("docs/README.md")
    assert matcher.could_include_below("docs")
    assert not matcher.could_include_below("src")
    # moby's Matches table: a directory exception after `docs/*`
    assert not m("docs/*", "!docs/README.md").matches("docs/README.md")
    assert not m("docs/", "!docs/README.md").matches("docs/README.md")


def test_dir_exception_then_reexclusion() -> None:
    matcher = m("**", "!util/docker/web", "util/docker/web/foo")
    assert matcher.matches("util/docker/web/foo")
    assert matcher.matches("util/docker/web/foo/bar")
    assert not matcher.matches("util/docker/web/bar")
    assert matcher.matches("util/other")


def test_parent_results_semantics() -> None:
    # moby's MatchesUsingParentResults (what BuildKit's walk uses): the trailing `a`
    # was skipped for the directory `a` (already excluded then) and is only tried
    # against `a/x` itself afterwards, so `a/x` stays re-included.
    matcher = m("a", "!a/x", "a")
    assert matcher.matches("a")
    assert not matcher.matches("a/x")
    assert matcher.matches("a/y")


def test_root_is_never_ignored() -> None:
    assert not m("**", "*").matches(".")
    assert not m("*").matches("")


def test_is_dir_does_not_change_the_answer() -> None:
    matcher = m("build/")
    assert matcher.matches("build", is_dir=True) and matcher.matches("build", is_dir=False)


# --- moby patternmatcher's TestMatches table (MatchesUsingParentResults) --------------

MOBY_MATCHES = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
]


@pytest.mark.parametrize(("pattern", "text", "want"), MOBY_MATCHES)
def test_moby_matches_table(pattern: str, text: str, want: bool) -> None:
    matcher = IgnoreMatcher([pattern])
    if text != "/":  # matches() takes context paths: "/" is the context root, never ignored
        assert matcher.matches(text) is want
    # the raw matcher without parent context (moby's "NoContext" run)
    assert matcher.match_info(text, None)[0] is want


@pytest.mark.parametrize(
    ("patterns", "text", "want"),
    [
        (["**", "!util/docker/web"], "util/docker/web/foo", False),
        (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
        (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
        (["!fileutils.go", "*.go"], "fileutils.go", True),
        (["*.go", "!fileutils.go"], "fileutils.go", False),
        (["docs", "!docs/README.md"], "docs/README.md", False),
        ([], "any/path/there", False),
    ],
)
def test_moby_multi_pattern_table(patterns: list[str], text: str, want: bool) -> None:
    assert IgnoreMatcher(patterns).matches(text) is want


# moby's TestMatch (the table taken from Go's filepath.Match tests)
GO_MATCH = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", True),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True),  # noqa: RUF001 - Go's filepath.Match case: a Greek letter  # noqa: RUF001 - Go's test: a Greek letter
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "text", "want"), GO_MATCH)
def test_moby_go_match_table(pattern: str, text: str, want: bool) -> None:
    assert IgnoreMatcher([pattern]).matches(text) is want


@pytest.mark.parametrize(
    "pattern",
    ["[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "!", "*[", "a*\\"],
)
def test_malformed_patterns_rejected(pattern: str) -> None:
    with pytest.raises(DockerignoreError):
        IgnoreMatcher([pattern])


def test_bad_regexp_fails_when_used() -> None:
    # moby regression #52203: passes filepath.Match, fails (every time) as a regexp
    matcher = IgnoreMatcher(["[Local-Only]/"])
    for _ in range(2):
        with pytest.raises(DockerignoreError, match="syntax error in pattern"):
            matcher.matches("x")
    assert go_filepath_match("[c-a]", "b") is False


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("[a-c]x", ["ax", "bx", "cx"], ["dx", "Ax", "x"]),
        ("[^a]x", ["bx", "!x"], ["ax"]),
        ("d[^a]x", ["d/x"], ["dax"]),  # a Go class can match '/', as in moby
        ("[!a]x", ["!x", "ax"], ["bx"]),  # Go regexp: no `!` negation, as in moby
        ("[]x", [], []),
        ("f[[:digit:]]", ["f1"], ["fa"]),
        ("a\\.b", ["a.b"], ["axb"]),
        ("a\\[b", ["a[b"], ["ab"]),
        ("a\\?b", ["a?b"], ["axb"]),
        ("\\*\\*", ["**"], ["ab"]),
        ("*.{js,ts}", ["a.{js,ts}"], ["a.js"]),  # braces are literal
        ("a+b", ["a+b"], ["aab"]),
        ("[*]", ["]", "[]", "^/]"], ["*", "["]),  # moby's regexp is `^[[^/]*]$`
    ],
)
def test_regexp_fidelity(pattern: str, yes: list[str], no: list[str]) -> None:
    if pattern == "[]x":
        with pytest.raises(DockerignoreError):
            IgnoreMatcher([pattern])
        return
    matcher = IgnoreMatcher([pattern])
    for path in yes:
        assert matcher.match_info(path, None)[0], (pattern, path)
    for path in no:
        assert not matcher.match_info(path, None)[0], (pattern, path)


def test_could_include_below() -> None:
    assert not m("build").could_include_below("build")  # no exceptions: prune
    matcher = m("*", "!src/keep/**", "!**/*.go", "!lib*")
    assert matcher.could_include_below("anything")  # `**/*.go` may match below any dir
    narrow = m("*", "!src/keep/x", "!lib")
    assert narrow.could_include_below("src")
    assert narrow.could_include_below("src/keep")
    assert not narrow.could_include_below("docs")
    assert not narrow.could_include_below("src/other")
    assert narrow.could_include_below("lib")


# --- which ignore file --------------------------------------------------------------


def test_dockerfile_specific_ignore_file_precedence(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    dockerfile = tmp_path / "build" / "app.Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    assert find_ignore_file(tmp_path, dockerfile) is None
    (tmp_path / ".dockerignore").write_text("*.log\n")
    assert find_ignore_file(tmp_path, dockerfile) == tmp_path / ".dockerignore"
    specific = tmp_path / "build" / "app.Dockerfile.dockerignore"
    specific.write_text("*.tmp\n")
    assert find_ignore_file(tmp_path, dockerfile) == specific
    matcher = load_matcher(tmp_path, dockerfile)
    assert matcher.matches("x.tmp") and not matcher.matches("x.log")
    # the default Dockerfile name, and a Dockerfile from stdin
    (tmp_path / "Dockerfile.dockerignore").write_text("secret\n")
    assert (
        find_ignore_file(tmp_path, tmp_path / "Dockerfile") == tmp_path / "Dockerfile.dockerignore"
    )
    assert find_ignore_file(tmp_path, "-") == tmp_path / ".dockerignore"
    assert find_ignore_file(tmp_path, None) == tmp_path / ".dockerignore"
    assert not load_matcher(tmp_path / "build", None)


def test_from_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DockerignoreError, match=r"cannot read .*nope") as info:
        IgnoreMatcher.from_file(tmp_path / "nope")
    assert "\n" not in str(info.value)
    (tmp_path / ".dockerignore").write_text("ok\n[bad\n")
    with pytest.raises(DockerignoreError, match=r'syntax error in pattern "\[bad"'):
        IgnoreMatcher.from_file(tmp_path / ".dockerignore")
