"""dockyard.oci.digest: parsing, validation and hashing of OCI digests."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.oci import digest as dg
from dockyard.oci.digest import ALGORITHMS, DigestError

algorithms = st.sampled_from(sorted(ALGORITHMS))


@given(data=st.binary(max_size=4096), algorithm=algorithms)
def test_from_bytes_round_trips_through_parse(data: bytes, algorithm: str) -> None:
    d = dg.from_bytes(data, algorithm)
    alg, hex_ = dg.parse(d)
    assert alg == algorithm
    assert hex_ == hashlib.new(algorithm, data).hexdigest()
    assert len(hex_) == ALGORITHMS[algorithm]
    assert d == f"{alg}:{hex_}"
    assert dg.is_valid(d)


@given(st.text())
def test_parse_never_fails_otherwise(s: str) -> None:
    try:
        alg, hex_ = dg.parse(s)
    except DigestError as e:
        assert "\n" not in str(e)
        assert len(str(e)) < 400
    else:
        assert f"{alg}:{hex_}" == s


@given(algorithm=algorithms, body=st.text(alphabet="0123456789abcdefABCDEFxyz:\n ", max_size=140))
def test_parse_near_misses(algorithm: str, body: str) -> None:
    s = f"{algorithm}:{body}"
    valid = len(body) == ALGORITHMS[algorithm] and set(body) <= set("0123456789abcdef")
    assert dg.is_valid(s) == valid


@given(st.binary(max_size=200))
def test_parse_of_decoded_bytes(raw: bytes) -> None:
    s = raw.decode("utf-8", errors="surrogateescape")
    try:
        dg.parse(s)
    except DigestError:
        pass


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("sha256", "missing ':'"),
        ("", "missing ':'"),
        ("md5:" + "0" * 32, "unknown algorithm"),
        ("sha256:" + "a" * 63, "needs 64 hex digits, got 63"),
        ("sha512:" + "a" * 64, "needs 128 hex digits, got 64"),
        ("sha256:" + "z" * 64, "not hex"),
        ("sha256:" + "A" * 64, "lowercase"),
        ("sha256:" + "a" * 62 + "\n\n", "not hex"),
    ],
)
def test_error_messages(bad: str, reason: str) -> None:
    with pytest.raises(DigestError) as info:
        dg.parse(bad)
    msg = str(info.value)
    assert reason in msg
    assert repr(bad)[:40] in msg
    assert "\n" not in msg


def test_long_bad_digest_is_truncated_in_message() -> None:
    with pytest.raises(DigestError) as info:
        dg.parse("x" * 10_000)
    assert len(str(info.value)) < 300 and "10000 characters" in str(info.value)


def test_known_values() -> None:
    assert dg.from_bytes(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert dg.from_bytes(b"abc", "sha512").startswith("sha512:ddaf35a193617aba")
    assert isinstance(DigestError("x"), ValueError)


def test_unknown_algorithm_for_hashing() -> None:
    with pytest.raises(DigestError, match="unsupported digest algorithm 'md5'"):
        dg.new_hasher("md5")
    with pytest.raises(DigestError):
        dg.from_bytes(b"", "sha1")


def test_parse_is_pure_and_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dockyard.oci.digest as d; d.parse('sha256:' + 'a' * 64); "
        "print('hashlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
