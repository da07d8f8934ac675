"""OCI content digests (`<algorithm>:<hex>`): parse, validate and compute. Pure, no I/O.

Only the algorithms the OCI image spec registers are accepted, with their encoded
part in lowercase hex of the exact length (`sha256` 64 digits, `sha512` 128).
`hashlib` is imported on first use so that parsing a digest costs no start-up time.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from hashlib import _Hash

ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
"""Supported algorithms and the length of their hex encoding."""

_HEX = frozenset("0123456789abcdef")
_SHOWN = 80  # longest piece of a bad digest quoted back in an error message


class DigestError(ValueError):
    """A digest string that is not `<algorithm>:<lowercase hex>` of a supported algorithm."""


def _quote(digest: str) -> str:
    """`digest` as a one-line, bounded repr for error messages."""
    if len(digest) > _SHOWN:
        return repr(digest[:_SHOWN]) + f"... ({len(digest)} characters)"
    return repr(digest)


def _known() -> str:
    return ", ".join(ALGORITHMS)


def check_algorithm(algorithm: str) -> int:
    """The hex length of `algorithm`; DigestError when it is not supported."""
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise DigestError(
            f"unsupported digest algorithm {_quote(algorithm)} (supported: {_known()})"
        )
    return length


def parse(digest: str) -> tuple[str, str]:
    """Split `digest` into (algorithm, lowercase hex); DigestError says what is wrong."""
    if not isinstance(digest, str):
        raise DigestError(f"invalid digest {digest!r}: not a string")
    algorithm, colon, encoded = digest.partition(":")
    if not colon:
        raise DigestError(
            f"invalid digest {_quote(digest)}: missing ':' (expected <algorithm>:<hex>,"
            " e.g. sha256:<64 hex digits>)"
        )
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise DigestError(
            f"invalid digest {_quote(digest)}: unknown algorithm {_quote(algorithm)}"
            f" (supported: {_known()})"
        )
    if len(encoded) != length:
        raise DigestError(
            f"invalid digest {_quote(digest)}: {algorithm} needs {length} hex digits,"
            f" got {len(encoded)}"
        )
    if not _HEX.issuperset(encoded):
        if _HEX.issuperset(encoded.lower()):
            raise DigestError(f"invalid digest {_quote(digest)}: hex digits must be lowercase")
        raise DigestError(f"invalid digest {_quote(digest)}: not hex (only 0-9 and a-f allowed)")
    return algorithm, encoded


def is_valid(digest: str) -> bool:
    """True when `parse(digest)` would succeed."""
    try:
        parse(digest)
    except DigestError:
        return False
    return True


def new_hasher(algorithm: str) -> _Hash:
    """A fresh hashlib object for `algorithm`; DigestError when it is not supported."""
    check_algorithm(algorithm)
    import hashlib

    return hashlib.new(algorithm)


def from_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """The digest of `data`, e.g. `sha256:e3b0c442...`."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"
