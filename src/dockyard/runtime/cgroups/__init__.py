"""cgroups for the OCI runtime: v1, v2 and hybrid hosts behind one `CgroupManager`.

`open_manager(parse_cgroups_path(spec_path, id))` is all the runtime needs; the
v1/v2 modules load only when a manager is opened.
"""

from __future__ import annotations

from dockyard.runtime.cgroups.base import (
    DEFAULT_ROOT,
    CgroupManager,
    detect_mode,
    expand_slice,
    open_manager,
    parse_cgroups_path,
)

__all__ = [
    "DEFAULT_ROOT",
    "CgroupManager",
    "detect_mode",
    "expand_slice",
    "open_manager",
    "parse_cgroups_path",
]
