"""Repository names, tags and references as the distribution spec allows them. Pure."""

from __future__ import annotations

import re

from dockyard.oci import digest as _digest
from dockyard.registry.errors import RegistryError

NAME_TOTAL_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")


def check_name(name: str) -> str:
    """`name` when it is a valid repository name; NAME_INVALID otherwise."""
    if len(name) > NAME_TOTAL_MAX:
        raise RegistryError(
            "NAME_INVALID", f"repository name is longer than {NAME_TOTAL_MAX} characters"
        )
    if not _NAME.match(name):
        raise RegistryError("NAME_INVALID", f"invalid repository name {name!r}", {"name": name})
    return name


def is_tag(reference: str) -> bool:
    return bool(_TAG.match(reference))


def is_digest(reference: str) -> bool:
    return ":" in reference


def check_digest(value: str, code: str = "DIGEST_INVALID") -> str:
    """`value` when it is a digest of a supported algorithm; `code` (DIGEST_INVALID) if not."""
    try:
        _digest.parse(value)
    except _digest.DigestError as e:
        raise RegistryError(code, str(e), {"digest": value[:200]}) from None
    return value


def check_reference(reference: str) -> str:
    """A manifest reference: a tag or a digest. TAG_INVALID / DIGEST_INVALID otherwise."""
    if is_digest(reference):
        return check_digest(reference)
    if not is_tag(reference):
        raise RegistryError("TAG_INVALID", f"invalid tag {reference[:200]!r}", {"tag": reference})
    return reference
