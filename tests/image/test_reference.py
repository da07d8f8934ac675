"""Image references: Docker's normalization, table-driven and property-based."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.image.reference import ReferenceError, parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("nginx", "docker.io/library/nginx:latest", "nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx:1.25", "nginx:1.25"),
        ("library/nginx", "docker.io/library/nginx:latest", "nginx:latest"),
        ("docker.io/nginx", "docker.io/library/nginx:latest", "nginx:latest"),
        ("index.docker.io/library/nginx", "docker.io/library/nginx:latest", "nginx:latest"),
        ("user/app", "docker.io/user/app:latest", "user/app:latest"),
        ("quay.io/org/app:v1", "quay.io/org/app:v1", "quay.io/org/app:v1"),
        ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
        ("localhost:5000/app", "localhost:5000/app:latest", "localhost:5000/app:latest"),
        ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t"),
        ("[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000/app:latest"),
        (f"nginx@{D}", f"docker.io/library/nginx@{D}", f"nginx@{D}"),
        (f"nginx:1@{D}", f"docker.io/library/nginx:1@{D}", f"nginx:1@{D}"),
        ("a_b-c__d/e.f", "docker.io/a_b-c__d/e.f:latest", "a_b-c__d/e.f:latest"),
        ("Registry.Example/app", "Registry.Example/app:latest", "Registry.Example/app:latest"),
    ],
)
def test_normalizes_like_docker(text: str, full: str, familiar: str) -> None:
    ref = parse(text)
    assert str(ref) == full
    assert ref.familiar() == familiar
    assert parse(full) == ref


def test_parts() -> None:
    ref = parse("localhost:5000/team/app:v2")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "team/app", "v2", None)
    assert ref.name == "localhost:5000/team/app"
    assert parse("app", default_tag=None).tag is None
    assert str(parse("app").with_tag("x")) == "docker.io/library/app:x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Nginx", "lowercase"),
        ("user/App", "lowercase"),
        ("nginx:", "invalid reference format"),
        ("nginx::1", "invalid reference format"),
        ("-nginx", "invalid reference format"),
        ("nginx@sha256:abc", "invalid reference format"),
        ("nginx@sha256:" + "a" * 63 + "g", "invalid reference format"),
        ("nginx@md5:" + "a" * 32, "unsupported digest"),
        ("a" * 64, "image ID"),
        ("nginx:" + "t" * 129, "invalid reference format"),
        ("a/" + "b" * 260, "too long"),
        ("app/", "invalid reference format"),
        ("app//x", "invalid reference format"),
        ("a_b.c/f", "not a registry"),
    ],
)
def test_bad_references_say_why(text: str, message: str) -> None:
    with pytest.raises(ReferenceError, match=message):
        parse(text)


_component = st.from_regex(r"[a-z0-9]{1,5}(?:[_-][a-z0-9]{1,5}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True)
_domain = st.sampled_from(["", "localhost/", "localhost:5000/", "quay.io/", "r.example:443/"])


@given(_domain, st.lists(_component, min_size=1, max_size=3), st.none() | _tag)
def test_valid_references_round_trip(domain: str, path: list[str], tag: str | None) -> None:
    text = domain + "/".join(path) + (f":{tag}" if tag else "")
    ref = parse(text)
    assert parse(str(ref)) == ref
    assert parse(ref.familiar()) == ref
    assert ref.tag == (tag or "latest")


@given(st.text(max_size=80))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        ref = parse(text)
    except ReferenceError as err:
        assert "\n" not in str(err)
    else:
        assert parse(str(ref)) == ref
