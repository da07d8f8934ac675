"""The distribution spec's errors: codes, HTTP statuses and the JSON error body.

Shared by the registry server and client: a server raises `RegistryError(code, …)`
and answers with `error_body([err])`; a client turns a response body back into
errors with `parse_error_body`. The body is the spec's:

    {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry",
                 "detail": {...}}]}
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

# code -> (HTTP status, default message), as the reference registry has them.
CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_INVALID": (400, "blob upload invalid"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_BLOB_UNKNOWN": (400, "manifest references a blob unknown to the registry"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (405, "the operation is unsupported"),
    "TOOMANYREQUESTS": (429, "too many requests"),
    "RANGE_INVALID": (416, "invalid content range"),
    "PAGINATION_NUMBER_INVALID": (400, "invalid number of results requested"),
    "UNKNOWN": (500, "unknown error"),
    "UNAVAILABLE": (503, "service unavailable"),
}


class RegistryError(Exception):
    """One spec error: `code` (a key of CODES), HTTP `status`, `message`, optional `detail`.

    `headers` are extra response headers (a `WWW-Authenticate` challenge, the
    `Range` of an upload refused with 416, …).
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        detail: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        default_status, default_message = CODES.get(code, (500, code.lower()))
        self.code = code
        self.message = message or default_message
        self.detail = detail
        self.status = status or default_status
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return entry


def error_body(errors: list[RegistryError]) -> bytes:
    """The JSON body that carries `errors`."""
    return json.dumps({"errors": [e.to_dict() for e in errors]}).encode()


def parse_error_body(body: bytes, status: int) -> list[RegistryError]:
    """The errors of a registry's error response; one UNKNOWN error when it has none."""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        doc = None
    found: list[RegistryError] = []
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        for entry in doc["errors"]:
            if isinstance(entry, dict) and isinstance(entry.get("code"), str):
                message = entry.get("message")
                found.append(
                    RegistryError(
                        entry["code"],
                        message if isinstance(message, str) else None,
                        entry.get("detail"),
                        status,
                    )
                )
    if not found:
        text = body[:200].decode(errors="replace").strip() if body else ""
        found.append(RegistryError("UNKNOWN", text or f"HTTP status {status}", None, status))
    return found
