"""Parsing `-v/--volume`, `--mount` and `--tmpfs` the way Docker does.

Pure: text in, `MountSpec` out, no file system access. Error messages are
Docker's (moby's volume/mounts/linux_parser.go and docker/cli's opts/mount.go),
so a script that greps for them keeps working.
"""

from __future__ import annotations

import posixpath
import re

from dockyard.engine.spec import SpecError

RW_MODES = {"rw", "ro"}
LABEL_MODES = {"z", "Z"}
PROPAGATION_MODES = {"private", "rprivate", "shared", "rshared", "slave", "rslave"}
COPY_MODES = {"nocopy"}
CONSISTENCY_MODES = {"consistent", "cached", "delegated"}
VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")


class MountSpecError(SpecError):
    """A -v/--mount/--tmpfs value that can't make a mount; one line saying why."""


class MountSpec:
    """One mount asked for on the command line (or by the image's VOLUME).

    A plain class with a dataclass's init, eq and repr (dataclasses costs
    milliseconds of CLI start-up to import).
    """

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass with eq

    def __init__(
        self,
        type: str,  # "bind", "volume" or "tmpfs"
        target: str,
        source: str = "",  # host path (bind), volume name ("" = anonymous), unused for tmpfs
        readonly: bool = False,
        propagation: str = "",  # bind propagation; "" = Docker's default (rprivate)
        nocopy: bool = False,  # volume: don't fill a new volume from the image
        create_source: bool = False,  # bind from -v: make a missing host directory
        tmpfs_options: list[str] | None = None,
        volume_labels: dict[str, str] | None = None,
        volume_options: dict[str, str] | None = None,
    ) -> None:
        self.type = type
        self.target = target
        self.source = source
        self.readonly = readonly
        self.propagation = propagation
        self.nocopy = nocopy
        self.create_source = create_source
        self.tmpfs_options: list[str] = [] if tmpfs_options is None else tmpfs_options
        self.volume_labels: dict[str, str] = {} if volume_labels is None else volume_labels
        self.volume_options: dict[str, str] = {} if volume_options is None else volume_options

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return vars(self) == vars(other)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"MountSpec({fields})"


def _config_error(kind: str, message: str) -> str:
    return f'invalid mount config for type "{kind}": {message}'


def validate(spec: MountSpec) -> None:
    """moby's validateMountConfig: the checks that need no file system."""
    if not spec.target:
        raise MountSpecError(_config_error(spec.type, "field Target must not be empty"))
    if not spec.target.startswith("/"):
        raise MountSpecError(
            _config_error(
                spec.type, f"invalid mount path: '{spec.target}' mount path must be absolute"
            )
        )
    if posixpath.normpath(spec.target) == "/":
        raise MountSpecError(
            _config_error(spec.type, "invalid specification: destination can't be '/'")
        )
    if spec.type == "bind":
        if not spec.source:
            raise MountSpecError(_config_error("bind", "field Source must not be empty"))
        if not spec.source.startswith("/"):
            raise MountSpecError(
                _config_error(
                    "bind", f"invalid mount path: '{spec.source}' mount path must be absolute"
                )
            )
    elif spec.type == "volume":
        if spec.source and not VOLUME_NAME.fullmatch(spec.source):
            raise MountSpecError(_config_error("volume", f"{volume_name_error(spec.source)}"))
    elif spec.type == "tmpfs":
        if spec.source:
            raise MountSpecError(_config_error("tmpfs", "field Source must be empty"))
    else:
        raise MountSpecError(f"mount type unknown: {spec.type!r}: use bind, volume or tmpfs")


def volume_name_error(name: str) -> str:
    return (
        f'"{name}" includes invalid characters for a local volume name, only '
        '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
        "directory, use absolute path"
    )


def _valid_mode(mode: str) -> bool:
    if not mode:
        return True
    counts = {"rw": 0, "label": 0, "propagation": 0, "copy": 0, "consistency": 0}
    for part in mode.split(","):
        for kind, group in (
            ("rw", RW_MODES),
            ("label", LABEL_MODES),
            ("propagation", PROPAGATION_MODES),
            ("copy", COPY_MODES),
            ("consistency", CONSISTENCY_MODES),
        ):
            if part in group:
                counts[kind] += 1
                break
        else:
            return False
    return all(n <= 1 for n in counts.values())


def parse_volume(raw: str) -> MountSpec:
    """`-v [SOURCE:]TARGET[:MODE]`: a bind (absolute source), a named or an anonymous volume."""
    invalid = f"invalid volume specification: '{raw}'"
    parts = raw.split(":", 3)
    if not parts[0]:
        raise MountSpecError(invalid)
    mode = ""
    if len(parts) == 1:
        source, target = "", parts[0]
    elif len(parts) == 2:
        if parts[1] and _valid_mode(parts[1]):  # /foo:rw: a mode needs a source
            raise MountSpecError(invalid)
        source, target = parts
    elif len(parts) == 3:
        source, target, mode = parts
    else:
        raise MountSpecError(invalid)
    if not _valid_mode(mode):
        raise MountSpecError(f"{invalid}: invalid mode: {mode}")
    modes = set(mode.split(",")) if mode else set()
    kind = "bind" if source.startswith("/") else "volume"
    if kind == "bind" and "nocopy" in modes:
        raise MountSpecError(f"{invalid}: invalid mode: {mode}")
    spec = MountSpec(
        type=kind,
        target=target,
        source=source,
        readonly="ro" in modes,
        propagation=next(iter(modes & PROPAGATION_MODES), ""),
        nocopy="nocopy" in modes,
        create_source=kind == "bind",
    )
    try:
        validate(spec)
    except MountSpecError as err:
        raise MountSpecError(f"{invalid}: {err}") from None
    return spec


def _bool(key: str, value: str | None, raw: str) -> bool:
    if value is None:
        return True
    lowered = value.lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false"):
        return False
    raise MountSpecError(f'invalid --mount "{raw}": invalid value for {key}: {value}')


def _tmpfs_mode(value: str, raw: str) -> str:
    try:
        return f"mode={int(value, 8):o}"
    except ValueError:
        raise MountSpecError(
            f'invalid --mount "{raw}": invalid value for tmpfs-mode: {value}'
        ) from None


def _tmpfs_size(value: str, raw: str) -> str:
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = value.strip().lower()
    unit = text[-1] if text and text[-1] in units else "b"
    number = text[:-1] if text and text[-1] in units else text
    try:
        size = int(float(number) * units[unit])
    except ValueError:
        size = -1
    if size < 0:
        raise MountSpecError(f'invalid --mount "{raw}": invalid value for tmpfs-size: {value}')
    return f"size={size}"


def parse_mount(raw: str) -> MountSpec:
    """`--mount type=bind|volume|tmpfs,source=…,target=…,readonly,…` (docker/cli's keys)."""
    import csv

    fields = next(csv.reader([raw]), [])
    kind = "volume"
    spec = MountSpec(type="volume", target="")
    tmpfs: list[str] = []
    for field in fields:
        key, sep, value = field.partition("=")
        key = key.strip().lower()
        val: str | None = value if sep else None
        if key in ("readonly", "ro"):
            spec.readonly = _bool(key, val, raw)
            continue
        if key == "volume-nocopy":
            spec.nocopy = _bool(key, val, raw)
            continue
        if key == "bind-nonrecursive":
            continue
        if val is None:
            raise MountSpecError(
                f'invalid argument "{raw}" for "--mount" flag: '
                f"invalid field '{field}' must be a key=value pair"
            )
        if key == "type":
            kind = val
        elif key in ("source", "src"):
            spec.source = val
        elif key in ("target", "destination", "dst"):
            spec.target = val
        elif key == "bind-propagation":
            if val not in PROPAGATION_MODES:
                raise MountSpecError(f'invalid --mount "{raw}": invalid bind-propagation: {val}')
            spec.propagation = val
        elif key == "consistency":
            continue
        elif key == "volume-label":
            k, _, v = val.partition("=")
            spec.volume_labels[k] = v
        elif key == "volume-opt":
            k, _, v = val.partition("=")
            spec.volume_options[k] = v
        elif key == "volume-driver":
            if val != "local":
                raise MountSpecError(
                    f'invalid --mount "{raw}": only the "local" volume driver exists'
                )
        elif key == "tmpfs-size":
            tmpfs.append(_tmpfs_size(val, raw))
        elif key == "tmpfs-mode":
            tmpfs.append(_tmpfs_mode(val, raw))
        else:
            raise MountSpecError(
                f'invalid argument "{raw}" for "--mount" flag: '
                f"unexpected key '{key}' in '{field}'"
            )
    spec.type = kind
    if kind not in ("bind", "volume", "tmpfs"):
        raise MountSpecError(f'invalid argument "{raw}" for "--mount" flag: invalid type: {kind}')
    if not spec.target:
        raise MountSpecError(f'invalid argument "{raw}" for "--mount" flag: target is required')
    if kind != "bind" and spec.propagation:
        raise MountSpecError(_config_error(kind, "field BindOptions must not be specified"))
    if kind != "volume" and (spec.nocopy or spec.volume_labels or spec.volume_options):
        raise MountSpecError(_config_error(kind, "field VolumeOptions must not be specified"))
    if kind != "tmpfs" and tmpfs:
        raise MountSpecError(_config_error(kind, "field TmpfsOptions must not be specified"))
    if kind == "tmpfs":
        spec.tmpfs_options = ["noexec", "nosuid", "nodev", *tmpfs]
        if spec.readonly:
            spec.tmpfs_options.append("ro")
    validate(spec)
    return spec


def parse_tmpfs(raw: str) -> MountSpec:
    """`--tmpfs PATH[:OPTIONS]`: Docker's defaults noexec,nosuid,nodev, then the options."""
    target, _, options = raw.partition(":")
    spec = MountSpec(type="tmpfs", target=target)
    spec.tmpfs_options = ["noexec", "nosuid", "nodev", *(o for o in options.split(",") if o)]
    try:
        validate(spec)
    except MountSpecError as err:
        raise MountSpecError(f"invalid --tmpfs '{raw}': {err}") from None
    spec.readonly = "ro" in spec.tmpfs_options
    return spec


def merge_tmpfs_options(options: list[str]) -> list[str]:
    """moby's MergeTmpfsOptions: later options win over earlier ones of the same kind."""
    opposite = {
        "ro": "rw",
        "rw": "ro",
        "exec": "noexec",
        "noexec": "exec",
        "suid": "nosuid",
        "nosuid": "suid",
        "dev": "nodev",
        "nodev": "dev",
        "atime": "noatime",
        "noatime": "atime",
    }
    result: list[str] = []
    for opt in options:
        key = opt.partition("=")[0]
        if "=" in opt:
            result = [o for o in result if o.partition("=")[0] != key]
        else:
            result = [o for o in result if o not in (opt, opposite.get(opt))]
        result.append(opt)
    return result


def check_duplicates(specs: list[MountSpec]) -> None:
    """Two mounts on one container path: Docker's "Duplicate mount point"."""
    seen: set[str] = set()
    for spec in specs:
        target = posixpath.normpath(spec.target)
        if target in seen:
            raise MountSpecError(f"Duplicate mount point: {target}")
        seen.add(target)
