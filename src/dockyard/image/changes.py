"""`--change` instructions of `import` and `commit`: Dockerfile lines applied to a config.

Only the instructions Docker accepts there (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR). The builder's full Dockerfile
parser will take this over when it exists.
"""

from __future__ import annotations

import json
import shlex

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

ALLOWED = (
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
)


class ChangeError(ValueError):
    """A --change line that can't be applied; the message quotes it."""


def _command(arg: str) -> list[str]:
    """JSON (exec) form, or shell form run by /bin/sh -c, as Docker does."""
    if arg.startswith("["):
        try:
            value = json.loads(arg)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", arg]


def _pairs(arg: str, line: str) -> list[tuple[str, str]]:
    """`K=V K2="v 2"` or the legacy one-pair form `K V`."""
    words = shlex.split(arg)
    if not words:
        raise ChangeError(f'--change "{line}": needs at least one KEY=VALUE')
    if "=" not in words[0]:
        key, _, value = arg.strip().partition(" ")
        if not value.strip():
            raise ChangeError(f'--change "{line}": use KEY=VALUE')
        return [(key, value.strip())]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ChangeError(f'--change "{line}": "{word}" is not KEY=VALUE')
        pairs.append((key, value))
    return pairs


def apply_changes(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """A new container config (the image config's `config`) with the changes applied."""
    result = json.loads(json.dumps(config))
    for line in changes:
        instruction, _, arg = line.strip().partition(" ")
        name = instruction.upper()
        arg = arg.strip()
        if name not in ALLOWED:
            raise ChangeError(
                f'--change "{line}": {instruction or "(empty)"} is not allowed here; '
                f"use one of {', '.join(ALLOWED)}"
            )
        if not arg:
            raise ChangeError(f'--change "{line}": {name} needs an argument')
        if name == "CMD":
            result["Cmd"] = _command(arg)
        elif name == "ENTRYPOINT":
            result["Entrypoint"] = _command(arg)
        elif name == "ENV":
            env = [e for e in result.get("Env") or []]
            for key, value in _pairs(arg, line):
                env = [e for e in env if e.split("=", 1)[0] != key] + [f"{key}={value}"]
            result["Env"] = env
        elif name == "LABEL":
            labels = dict(result.get("Labels") or {})
            labels.update(_pairs(arg, line))
            result["Labels"] = labels
        elif name == "EXPOSE":
            ports = dict(result.get("ExposedPorts") or {})
            for port in arg.split():
                number, _, proto = port.partition("/")
                if not number.isdigit() or proto not in ("", "tcp", "udp", "sctp"):
                    raise ChangeError(f'--change "{line}": "{port}" is not PORT[/tcp|udp|sctp]')
                ports[f"{number}/{proto or 'tcp'}"] = {}
            result["ExposedPorts"] = ports
        elif name == "VOLUME":
            paths = json.loads(arg) if arg.startswith("[") else arg.split()
            volumes = dict(result.get("Volumes") or {})
            volumes.update({p: {} for p in paths})
            result["Volumes"] = volumes
        elif name == "USER":
            result["User"] = arg
        elif name == "WORKDIR":
            result["WorkingDir"] = arg
        elif name == "STOPSIGNAL":
            result["StopSignal"] = arg
        elif name == "ONBUILD":
            result["OnBuild"] = [*(result.get("OnBuild") or []), arg]
    return result
