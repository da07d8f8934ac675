"""Platforms (`linux/arm64/v8`): parsing `--platform` and choosing from an index.

Normalized as containerd does: `x86_64` is amd64, `aarch64` arm64, arm64's variant
`v8` is its default and may be left out, `arm` means `arm/v7`. Pure, no I/O.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386"}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


class PlatformError(ValueError):
    """A `--platform` value that names no platform."""


class Platform:
    def __init__(self, os: str, architecture: str, variant: str = "") -> None:
        self.os = os
        self.architecture = architecture
        self.variant = variant

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    def __repr__(self) -> str:
        return f"Platform({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Platform) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def rank(self, candidate: dict[str, Any]) -> int | None:
        """How well an index entry's `platform` fits: 0 best; None when it doesn't."""
        if str(candidate.get("os") or "") != self.os:
            return None
        arch, variant = _normalize(
            str(candidate.get("architecture") or ""), str(candidate.get("variant") or "")
        )
        if arch != self.architecture:
            return None
        default = _DEFAULT_VARIANT.get(arch, "")
        if variant == (self.variant or default):
            return 0
        if not variant and (not self.variant or self.variant == default):
            return 1
        if not self.variant:
            return 2  # any variant will do when none was asked for (arm/v6 on arm)
        return None


def _normalize(arch: str, variant: str) -> tuple[str, str]:
    arch = _ARCH_ALIASES.get(arch.lower(), arch.lower())
    variant = variant.lower()
    if arch == "armhf":
        arch, variant = "arm", variant or "v7"
    if arch == "armel":
        arch, variant = "arm", variant or "v6"
    if arch == "arm64" and variant == "8":
        variant = "v8"
    return arch, variant


def parse(text: str) -> Platform:
    """`linux/amd64`, `linux/arm64/v8`, `arm64` (the OS defaults to linux)."""
    parts = [p.strip() for p in text.strip().split("/")]
    if not text.strip() or len(parts) > 3 or any(not p for p in parts):
        raise PlatformError(
            f'invalid platform "{text}": use os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8'
        )
    if len(parts) == 1:
        parts = ["linux", *parts]
    os_name = parts[0].lower()
    arch, variant = _normalize(parts[1], parts[2] if len(parts) == 3 else "")
    if arch == "arm" and not variant:
        variant = "v7"
    return Platform(os_name, arch, variant)


def host() -> Platform:
    from dockyard.oci.image_spec import host_architecture

    arch = host_architecture()
    return Platform("linux", arch, "v7" if arch == "arm" else "")


def describe(candidate: dict[str, Any]) -> str:
    """`linux/arm/v7` for an index entry's platform."""
    text = f"{candidate.get('os') or '?'}/{candidate.get('architecture') or '?'}"
    return f"{text}/{candidate['variant']}" if candidate.get("variant") else text


def choose(manifests: list[dict[str, Any]], wanted: Platform) -> dict[str, Any] | None:
    """The index entry that fits `wanted` best (the first of equals), or None."""
    best: tuple[int, dict[str, Any]] | None = None
    for entry in manifests:
        platform = entry.get("platform")
        if not isinstance(platform, dict):
            continue
        rank = wanted.rank(platform)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, entry)
    return best[1] if best else None
