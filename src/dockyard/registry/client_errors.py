"""The registry client's errors: each one line that names the registry and the cause."""

from __future__ import annotations


class RegistryError(Exception):
    """A registry could not do what was asked; the message says which and why.

    `status` is the HTTP status (if one came), `code` the first distribution error
    code (`MANIFEST_UNKNOWN`), `text` the registry's own words ("manifest unknown:
    manifest unknown"), so a caller can say it again in its own terms.
    """

    def __init__(
        self, message: str, status: int | None = None, code: str = "", text: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.text = text


class RegistryUnreachable(RegistryError):
    """No HTTP conversation could be had: refused, unresolvable, TLS failure, timeout."""


class RegistryUnauthorized(RegistryError):
    """401/403: credentials missing, wrong, or not enough for the repository."""


class RegistryNotFound(RegistryError):
    """404: the repository, manifest or blob isn't there."""


class RegistryProtocolError(RegistryError):
    """The registry answered something the distribution spec doesn't allow."""


class BlobError(RegistryError):
    """A blob's data was wrong or incomplete (digest or size mismatch, cut short)."""
