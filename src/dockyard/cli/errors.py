"""Which exceptions are the user's to fix (one line, exit 1) and which are bugs."""

from __future__ import annotations


def describe(err: Exception) -> str | None:
    """The one line to print for a user error, or None for a bug (traceback)."""
    from dockyard.image.changes import ChangeError
    from dockyard.image.reference import ReferenceError
    from dockyard.runtime.errors import RuntimeFailure

    if isinstance(err, ReferenceError | ChangeError | RuntimeFailure):
        return str(err)
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return None
