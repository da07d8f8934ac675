"""dockyard: a container platform in Python.

`dockyard.Client()` is the Python API (docker-py's shape); it is imported on
first use so that `import dockyard` stays free for the CLI's start-up.
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from dockyard.client import Client, ContainerError

__all__ = ["Client", "ContainerError", "__version__"]


def __getattr__(name: str) -> object:
    if name in ("Client", "ContainerError"):
        from dockyard import client

        return getattr(client, name)
    raise AttributeError(f"module 'dockyard' has no attribute {name!r}")
