"""process.rlimits: names to resource numbers, checked at create, applied in init."""

from __future__ import annotations

import resource

from dockyard.runtime.errors import RuntimeFailure

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

# The names the spec allows; values from <sys/resource.h> (stable on Linux).
RLIMITS = {
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}

_UNLIMITED = 2**64 - 1


def check(limit: Any, where: str) -> None:
    if not isinstance(limit, dict) or limit.get("type") not in RLIMITS:
        kind = limit.get("type") if isinstance(limit, dict) else limit
        raise RuntimeFailure(f"config.json: {where}.type: unknown rlimit {kind!r}")
    soft, hard = limit.get("soft"), limit.get("hard")
    if not isinstance(soft, int) or not isinstance(hard, int):
        raise RuntimeFailure(f"config.json: {where}: soft and hard must be integers")
    if soft > hard:
        raise RuntimeFailure(f"config.json: {where}: soft limit {soft} is above hard limit {hard}")


def _value(v: int) -> int:
    return resource.RLIM_INFINITY if v >= _UNLIMITED or v < 0 else v


def apply(limits: list[dict[str, Any]]) -> None:
    """setrlimit each; a hard limit above the host's fails with the limit named."""
    for limit in limits:
        number = RLIMITS[limit["type"]]
        soft, hard = _value(limit["soft"]), _value(limit["hard"])
        try:
            resource.setrlimit(number, (soft, hard))
        except (OSError, ValueError) as err:
            current = resource.getrlimit(number)[1]
            raise RuntimeFailure(
                f"cannot set {limit['type']} to {soft}:{hard} ({err}); "
                f"the hard limit here is {current} and raising it needs CAP_SYS_RESOURCE"
            ) from None
