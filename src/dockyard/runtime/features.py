"""What `dockyard-runtime features` reports (the runtime-spec features document)."""

from __future__ import annotations

from dockyard.oci.runtime_spec import HOOK_NAMES, NAMESPACE_TYPES, OCI_VERSION

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any


def features() -> dict[str, Any]:
    from dockyard.runtime import capabilities, mounts, seccomp

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOK_NAMES),
        "mountOptions": sorted([*mounts.FLAGS, *mounts.PROPAGATION]),
        "linux": {
            "namespaces": [n for n in NAMESPACE_TYPES if n != "time"],
            "capabilities": list(capabilities.CAPABILITIES),
            "cgroup": {
                "v1": True,
                "v2": True,
                "systemd": False,
                "systemdUser": False,
                "rdma": False,
            },
            "seccomp": seccomp.features(),
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"io.github.dockyard.runtime.version": "0.1.0"},
    }
