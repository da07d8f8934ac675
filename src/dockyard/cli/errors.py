"""Which exceptions are the user's to fix (one line, exit 1) and which are bugs."""

from __future__ import annotations


class UsageError(ValueError):
    """A flag or argument the user gave that can't work; the message says how to fix it."""


def describe(err: Exception) -> str | None:
    """The one line to print for a user error, or None for a bug (traceback)."""
    from dockyard.engine.containers import EngineError
    from dockyard.engine.spec import SpecError
    from dockyard.image.changes import ChangeError
    from dockyard.image.reference import ReferenceError
    from dockyard.image.store import ImageError
    from dockyard.runtime.errors import RuntimeFailure
    from dockyard.storage.content import ContentError

    user_errors = (
        UsageError,
        ReferenceError,
        ChangeError,
        RuntimeFailure,
        EngineError,
        ImageError,
        SpecError,
        ContentError,
    )
    if isinstance(err, user_errors):
        return str(err)
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return None
