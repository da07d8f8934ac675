"""Which exceptions are the user's to fix (one line, exit 1) and which are bugs."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


class UsageError(ValueError):
    """A flag or argument the user gave that can't work; the message says how to fix it."""


def describe(err: Exception) -> str | None:
    """The one line to print for a user error, or None for a bug (traceback)."""
    from dockyard.build.context import ContextError
    from dockyard.build.dockerignore import DockerignoreError
    from dockyard.build.errors import DockerfileError
    from dockyard.build.executor import BuildError
    from dockyard.build.export import OutputError
    from dockyard.build.fetch import FetchError
    from dockyard.build.mounts import MountError
    from dockyard.engine.containers import EngineError
    from dockyard.engine.spec import SpecError
    from dockyard.image.changes import ChangeError
    from dockyard.image.reference import ReferenceError
    from dockyard.image.store import ImageError
    from dockyard.runtime.errors import RuntimeFailure
    from dockyard.storage.content import ContentError
    from dockyard.storage.leases import LeaseError

    network_errors = _network_errors()
    registry_errors = _registry_errors()

    user_errors: tuple[type[Exception], ...] = (
        UsageError,
        ReferenceError,
        ChangeError,
        RuntimeFailure,
        EngineError,
        ImageError,
        SpecError,
        ContentError,
        LeaseError,
        DockerfileError,
        BuildError,
        OutputError,
        FetchError,
        MountError,
        ContextError,
        DockerignoreError,
        *network_errors,
        *registry_errors,
    )
    if isinstance(err, user_errors):
        return str(err)
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return None


def _registry_errors() -> tuple[type[Exception], ...]:
    from dockyard.image.platforms import PlatformError
    from dockyard.registry.client_auth import AuthFileError
    from dockyard.registry.client_errors import RegistryError
    from dockyard.registry.config import RegistriesConfError

    return (RegistryError, RegistriesConfError, AuthFileError, PlatformError)


def _network_errors() -> tuple[type[Exception], ...]:
    from dockyard.engine.networking import NetworkOptionError
    from dockyard.network.links import LinkError
    from dockyard.network.nft import NftError
    from dockyard.network.ports import PortSpecError
    from dockyard.network.store import NetworkError

    return (NetworkOptionError, LinkError, NftError, PortSpecError, NetworkError)


def for_each(names: Iterable[str], action: Callable[[str], None]) -> int:
    """Docker's multi-name verbs (`rm a b`, `stop a b`): each error is one line and the
    rest still run; exit status 1 if any failed."""
    import sys

    failed = False
    for name in names:
        try:
            action(name)
        except Exception as err:  # one line per name; anything else is a bug
            message = describe(err)
            if message is None:
                raise
            sys.stderr.write(f"Error response from daemon: {message}\n")
            failed = True
    return 1 if failed else 0
