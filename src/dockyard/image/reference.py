"""Image references, parsed and normalized as Docker does (distribution/reference).

`nginx` is `docker.io/library/nginx:latest`; `localhost:5000/app@sha256:…` keeps
its registry, port and digest. The grammar is the one of the distribution
project's reference package; errors are one line naming the reference.
"""

from __future__ import annotations

import re

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?\Z"
)
_PATH = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*\Z")
_ANY_CASE_PATH = re.compile(rf"^{_PATH_COMPONENT.replace('a-z', 'a-zA-Z')}")
_HEX64 = re.compile(r"^[a-f0-9]{64}\Z")


def _q(text: str) -> str:
    """A reference quoted for a one-line message, escaped if it isn't printable."""
    return f'"{text}"' if text.isprintable() else repr(text)


class ReferenceError(ValueError):
    """A reference that can't name an image; the message says which and why."""


class Reference:
    """A normalized image reference: domain/path[:tag][@digest]."""

    __slots__ = ("digest", "domain", "path", "tag")

    def __init__(self, domain: str, path: str, tag: str | None, digest: str | None) -> None:
        self.domain = domain
        self.path = path
        self.tag = tag
        self.digest = digest

    @property
    def name(self) -> str:
        """The repository: `docker.io/library/nginx`."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def __repr__(self) -> str:
        return f"Reference({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reference) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def familiar(self) -> str:
        """What `docker images` shows: `nginx:latest`, `localhost:5000/app:v1`."""
        name = self.name
        if self.domain == DEFAULT_DOMAIN:
            name = self.path.removeprefix(OFFICIAL_PREFIX)
        text = name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_tag(self, tag: str) -> Reference:
        if not re.fullmatch(_TAG, tag):
            raise ReferenceError(f"invalid tag {_q(tag)}: use letters, digits, _ . - (max 128)")
        return Reference(self.domain, self.path, tag, None)


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's rule: the first component is a registry if it has a dot, a colon,
    or is `localhost`, or has an upper-case letter; otherwise docker.io."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse(text: str, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """Parse and normalize; without tag or digest, `default_tag` is added (None: none)."""
    if not text:
        raise ReferenceError("invalid reference format: the image name is empty")
    if _HEX64.match(text):
        raise ReferenceError(
            f"invalid repository name {_q(text)}: it looks like an image ID; "
            "use the ID itself where an ID is accepted"
        )
    name, tag, digest = _split_parts(text)
    domain, path = _split_domain(name)
    if not re.fullmatch(_DOMAIN, domain):
        raise ReferenceError(
            f'invalid reference format {_q(text)}: "{domain}" is not a registry host[:port]'
        )
    if not _PATH.match(path):
        if _ANY_CASE_PATH.match(path) and path.lower() != path:
            raise ReferenceError(f"invalid reference {_q(text)}: repository name must be lowercase")
        raise ReferenceError(
            f"invalid reference format {_q(text)}: use [REGISTRY[:PORT]/]NAME[:TAG][@DIGEST]"
        )
    if len(f"{domain}/{path}") > NAME_TOTAL_MAX:
        raise ReferenceError(f"invalid reference {_q(text)}: repository name is too long")
    if digest:
        _check_digest(text, digest)
    if tag is None and digest is None and default_tag:
        tag = default_tag
    return Reference(domain, path, tag, digest)


def _split_parts(text: str) -> tuple[str, str | None, str | None]:
    match = _REFERENCE.match(text)
    if match:
        return match.group("name"), match.group("tag"), match.group("digest")
    # Not the grammar: find why, for a useful message.
    if any(c.isupper() for c in text.split("@")[0].rsplit(":", 1)[0].split("/", 1)[-1]):
        raise ReferenceError(f"invalid reference {_q(text)}: repository name must be lowercase")
    raise ReferenceError(
        f"invalid reference format {_q(text)}: use [REGISTRY[:PORT]/]NAME[:TAG][@DIGEST]"
    )


def _check_digest(text: str, digest: str) -> None:
    algorithm, _, hex_part = digest.partition(":")
    lengths = {"sha256": 64, "sha512": 128}
    if algorithm in lengths and len(hex_part) != lengths[algorithm]:
        raise ReferenceError(
            f"invalid reference {_q(text)}: "
            f"a {algorithm} digest has {lengths[algorithm]} hex digits"
        )
    if algorithm not in lengths:
        raise ReferenceError(
            f"invalid reference {_q(text)}: unsupported digest algorithm {algorithm}"
        )
