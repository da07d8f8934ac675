"""OCI hooks: run each with the container state on stdin, honouring its timeout."""

from __future__ import annotations

from dockyard.runtime.errors import RuntimeFailure

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any


def run(name: str, hooks: list[dict[str, Any]], state_json: bytes) -> None:
    """Run hooks in order; the first failure stops the rest and is raised."""
    import subprocess

    for i, hook in enumerate(hooks):
        args = hook.get("args") or [hook["path"]]
        env = dict(e.split("=", 1) for e in hook.get("env") or [])
        timeout = hook.get("timeout")
        try:
            proc = subprocess.run(
                args,
                executable=hook["path"],
                input=state_json,
                env=env,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(
                f"{name} hook #{i} ({hook['path']}) timed out after {timeout}s"
            ) from None
        except OSError as err:
            raise RuntimeFailure(f"{name} hook #{i} ({hook['path']}): {err.strerror}") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).decode(errors="replace").strip()
            raise RuntimeFailure(
                f"{name} hook #{i} ({hook['path']}) exited {proc.returncode}"
                + (f": {detail}" if detail else "")
            )
