"""OCI `linux.seccomp` through libseccomp (ctypes, loaded on first use).

`validate()` runs at `create` time so a bad profile fails before anything
changes. `load()` runs in the container init as the very last step before
execve; everything it needs after the filter is in place (functions, modules,
the message for a seccomp agent) is prepared before `seccomp_load`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import os

from dockyard.runtime.errors import RuntimeFailure

# linux/seccomp.h actions, as libseccomp encodes them.
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_NOTIFY = 0x7FC00000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000

ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_ERRNO": _ACT_ERRNO,
    "SCMP_ACT_TRACE": _ACT_TRACE,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
    "SCMP_ACT_LOG": _ACT_LOG,
    "SCMP_ACT_NOTIFY": _ACT_NOTIFY,
}

# enum scmp_compare
OPERATORS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# OCI architecture name -> libseccomp architecture name (seccomp_arch_resolve_name).
ARCHITECTURES: dict[str, str] = {
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_MIPS": "mips",
    "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32",
    "SCMP_ARCH_MIPSEL": "mipsel",
    "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
    "SCMP_ARCH_PPC": "ppc",
    "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le",
    "SCMP_ARCH_S390": "s390",
    "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_PARISC": "parisc",
    "SCMP_ARCH_PARISC64": "parisc64",
    "SCMP_ARCH_RISCV64": "riscv64",
    "SCMP_ARCH_LOONGARCH64": "loongarch64",
}

# OCI flag -> enum scmp_filter_attr
_ATTR_ACT_BADARCH = 2
_ATTR_CTL_NNP = 3
FLAGS: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": 4,  # SCMP_FLTATR_CTL_TSYNC
    "SECCOMP_FILTER_FLAG_LOG": 6,  # SCMP_FLTATR_CTL_LOG
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 7,  # SCMP_FLTATR_CTL_SSB
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 10,  # SCMP_FLTATR_CTL_WAITKILL (2.6+)
}

_NR_SCMP_ERROR = -1
_NR_SCMP_UNDEF = -2
_MAX_ARGS = 6
_MAX_ERRNO_RET = 4094  # libseccomp refuses errno >= MAX_ERRNO (4095)
_U64 = (1 << 64) - 1
_OCI_VERSION = "1.2.0"


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp"""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    """struct scmp_version"""

    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


class _Lib:
    """libseccomp's functions with their C types, every symbol resolved up front."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2")
        except OSError as e:
            raise RuntimeFailure(f"linux.seccomp: cannot load libseccomp.so.2: {e}") from None
        vp, u32, cint = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
        self.init = lib.seccomp_init
        self.init.argtypes, self.init.restype = [u32], vp
        self.release = lib.seccomp_release
        self.release.argtypes, self.release.restype = [vp], None
        self.arch_add = lib.seccomp_arch_add
        self.arch_add.argtypes, self.arch_add.restype = [vp, u32], cint
        self.arch_resolve_name = lib.seccomp_arch_resolve_name
        self.arch_resolve_name.argtypes, self.arch_resolve_name.restype = [ctypes.c_char_p], u32
        self.arch_native = lib.seccomp_arch_native
        self.arch_native.argtypes, self.arch_native.restype = [], u32
        self.attr_set = lib.seccomp_attr_set
        self.attr_set.argtypes, self.attr_set.restype = [vp, cint, u32], cint
        self.resolve_name = lib.seccomp_syscall_resolve_name
        self.resolve_name.argtypes, self.resolve_name.restype = [ctypes.c_char_p], cint
        self.rule_add_array = lib.seccomp_rule_add_array
        self.rule_add_array.argtypes = [vp, u32, cint, ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
        self.rule_add_array.restype = cint
        self.load = lib.seccomp_load
        self.load.argtypes, self.load.restype = [vp], cint
        self.notify_fd = lib.seccomp_notify_fd
        self.notify_fd.argtypes, self.notify_fd.restype = [vp], cint
        self.api_get = lib.seccomp_api_get
        self.api_get.argtypes, self.api_get.restype = [], ctypes.c_uint
        get_version = lib.seccomp_version
        get_version.argtypes, get_version.restype = [], ctypes.POINTER(_Version)
        v = get_version().contents
        self.version = f"{v.major}.{v.minor}.{v.micro}"
        self.api = int(self.api_get())


_lib: _Lib | None = None


def _get() -> _Lib:
    global _lib
    if _lib is None:
        _lib = _Lib()
    return _lib


def _strerror(rc: int) -> str:
    return os.strerror(-rc) if rc < 0 else f"error {rc}"


# Syscall numbers by name, as libseccomp resolved them in this process (or in the
# process it was forked from: the engine's monitor server warms it up).
_numbers: dict[str, int | None] = {}


def _syscall_number(lib: _Lib, name: str) -> int | None:
    if name in _numbers:
        return _numbers[name]
    nr = int(lib.resolve_name(name.encode()))
    number = _numbers[name] = None if nr in (_NR_SCMP_ERROR, _NR_SCMP_UNDEF) else nr
    return number


def _arch_token(lib: _Lib, name: str) -> int:
    return int(lib.arch_resolve_name(ARCHITECTURES[name].encode()))


def _action(lib: _Lib, name: object, errno_ret: object, where: str, field: str) -> int:
    """The libseccomp action value for an OCI action name and its errnoRet."""
    if not isinstance(name, str) or name not in ACTIONS:
        raise RuntimeFailure(f'{where}.{field}: unknown action "{name}"')
    value = ACTIONS[name]
    ret_field = "defaultErrnoRet" if field == "defaultAction" else "errnoRet"
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        if errno_ret is None:
            errno_ret = _errno.EPERM
        if isinstance(errno_ret, bool) or not isinstance(errno_ret, int):
            raise RuntimeFailure(f"{where}.{ret_field}: {errno_ret!r} is not an integer")
        if not 0 <= errno_ret <= _MAX_ERRNO_RET:
            raise RuntimeFailure(
                f"{where}.{ret_field}: {errno_ret} is out of range 0..{_MAX_ERRNO_RET}"
            )
        return value | errno_ret
    if errno_ret is not None:
        raise RuntimeFailure(
            f"{where}.{ret_field}: only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {name}"
        )
    if name == "SCMP_ACT_KILL_PROCESS" and lib.api < 3:
        raise RuntimeFailure(f"{where}.{field}: {name} needs libseccomp API level 3")
    if name == "SCMP_ACT_LOG" and lib.api < 3:
        raise RuntimeFailure(f"{where}.{field}: {name} needs libseccomp API level 3")
    if name == "SCMP_ACT_NOTIFY" and lib.api < 5:
        raise RuntimeFailure(f"{where}.{field}: {name} is not supported by this kernel/libseccomp")
    return value


def _supported_flags(lib: _Lib) -> list[str]:
    """Flags that libseccomp and the kernel accept (probed on a scratch filter)."""
    ctx = lib.init(_ACT_ALLOW)
    if not ctx:
        return []
    try:
        return [name for name, attr in FLAGS.items() if lib.attr_set(ctx, attr, 1) == 0]
    finally:
        lib.release(ctx)


_Rule = tuple[int, int, list[tuple[int, int, int, int]], str]


def _compile(spec: object) -> tuple[int, list[int], list[int], list[_Rule]]:
    """Check an OCI seccomp object; returns (default, archs, flag attrs, rules).

    Each rule is (action, syscall number, [(index, op, value, valueTwo), ...], where).
    Syscall names unknown to libseccomp are skipped, like runc does.
    """
    where = "linux.seccomp"
    if not isinstance(spec, dict):
        raise RuntimeFailure(f"{where} must be an object, not {type(spec).__name__}")
    lib = _get()
    if "defaultAction" not in spec:
        raise RuntimeFailure(f"{where}.defaultAction is required")
    if spec["defaultAction"] == "SCMP_ACT_NOTIFY":
        raise RuntimeFailure(f"{where}.defaultAction: SCMP_ACT_NOTIFY cannot be the default")
    default = _action(
        lib, spec["defaultAction"], spec.get("defaultErrnoRet"), where, "defaultAction"
    )

    archs: list[int] = []
    arch_list = _list(spec, "architectures")
    if not isinstance(arch_list, list):
        raise RuntimeFailure(f"{where}.architectures must be a list")
    for i, name in enumerate(arch_list):
        if not isinstance(name, str) or name not in ARCHITECTURES:
            raise RuntimeFailure(f'{where}.architectures[{i}]: unknown architecture "{name}"')
        token = _arch_token(lib, name)
        if token == 0:
            raise RuntimeFailure(
                f'{where}.architectures[{i}]: architecture "{name}" is not supported '
                f"by libseccomp {lib.version}"
            )
        archs.append(token)

    attrs: list[int] = []
    flag_list = _list(spec, "flags")
    if not isinstance(flag_list, list):
        raise RuntimeFailure(f"{where}.flags must be a list")
    supported: list[str] | None = None
    for i, name in enumerate(flag_list):
        if not isinstance(name, str) or name not in FLAGS:
            raise RuntimeFailure(f'{where}.flags[{i}]: unknown flag "{name}"')
        if supported is None:
            supported = _supported_flags(lib)
        if name not in supported:
            raise RuntimeFailure(
                f'{where}.flags[{i}]: flag "{name}" is not supported by this kernel '
                f"and libseccomp {lib.version}"
            )
        attrs.append(FLAGS[name])

    notify = False
    rules: list[_Rule] = []
    calls = _list(spec, "syscalls")
    if not isinstance(calls, list):
        raise RuntimeFailure(f"{where}.syscalls must be a list")
    for i, call in enumerate(calls):
        at = f"{where}.syscalls[{i}]"
        if not isinstance(call, dict):
            raise RuntimeFailure(f"{at} must be an object")
        if "action" not in call:
            raise RuntimeFailure(f"{at}.action is required")
        action = _action(lib, call["action"], call.get("errnoRet"), at, "action")
        names = call.get("names")
        if not isinstance(names, list) or not names:
            raise RuntimeFailure(f"{at}.names must be a non-empty list of syscall names")
        if call["action"] == "SCMP_ACT_NOTIFY":
            notify = True
            if "sendmsg" in names:
                raise RuntimeFailure(
                    f"{at}: SCMP_ACT_NOTIFY cannot be used for sendmsg "
                    "(the runtime needs it to hand over the notify fd)"
                )
        args = _args(_list(call, "args"), at)
        for j, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise RuntimeFailure(f"{at}.names[{j}]: {name!r} is not a syscall name")
            nr = _syscall_number(lib, name)
            if nr is None:  # unknown on this arch/kernel: skipped, as runc does
                continue
            if action != default:
                rules.append((action, nr, args, f'{at}.names[{j}] "{name}"'))

    path = spec.get("listenerPath")
    if notify and (not isinstance(path, str) or not path):
        raise RuntimeFailure(f"{where}.listenerPath is required with SCMP_ACT_NOTIFY")
    meta = spec.get("listenerMetadata")
    if meta is not None and not isinstance(meta, str):
        raise RuntimeFailure(f"{where}.listenerMetadata must be a string")
    return default, archs, attrs, rules


def _list(obj: dict, key: str) -> object:
    """A list field: missing or null is empty; anything else is checked by the caller."""
    value = obj.get(key)
    return [] if value is None else value


def _args(raw: object, at: str) -> list[tuple[int, int, int, int]]:
    if not isinstance(raw, list):
        raise RuntimeFailure(f"{at}.args must be a list")
    out: list[tuple[int, int, int, int]] = []
    for k, arg in enumerate(raw):
        here = f"{at}.args[{k}]"
        if not isinstance(arg, dict):
            raise RuntimeFailure(f"{here} must be an object")
        index, op = arg.get("index"), arg.get("op")
        value, value_two = arg.get("value", 0), arg.get("valueTwo", 0)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < _MAX_ARGS:
            raise RuntimeFailure(f"{here}.index: {index!r} is not an argument index 0..5")
        if not isinstance(op, str) or op not in OPERATORS:
            raise RuntimeFailure(f'{here}.op: unknown operator "{op}"')
        for field, v in (("value", value), ("valueTwo", value_two)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _U64:
                raise RuntimeFailure(f"{here}.{field}: {v!r} is not an unsigned 64-bit integer")
        out.append((index, OPERATORS[op], value, value_two))
    return out


def load_library() -> None:
    """Load libseccomp now (before pivot_root puts the host's libraries out of reach)."""
    _get()


def validate(spec: dict) -> None:
    """Check an OCI `linux.seccomp` object; RuntimeFailure names the first bad value."""
    _compile(spec)


def _rule_groups(args: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
    """Conditions added as one rule, or one rule each when an index repeats (as runc)."""
    indexes = [a[0] for a in args]
    if len(set(indexes)) != len(indexes):
        return [[a] for a in args]
    return [args]


def load(spec: dict, state_json: bytes | None = None) -> None:
    """Build the filter and load it into the calling process.

    With SCMP_ACT_NOTIFY rules the notify fd is sent over a unix socket to
    `listenerPath` with SCM_RIGHTS, with runc's message: a container process
    state JSON carrying `listenerMetadata` and `state_json` (the container
    state). The calling process keeps no copy of the fd.
    """
    default, archs, attrs, rules = _compile(spec)
    lib = _get()
    notify = any(rule[0] == _ACT_NOTIFY for rule in rules)
    listener = _Listener(spec, state_json) if notify else None

    ctx = lib.init(default)
    if not ctx:
        if listener is not None:
            listener.close()
        raise RuntimeFailure("linux.seccomp: seccomp_init failed")
    try:
        # The runtime sets no_new_privs itself from process.noNewPrivileges.
        _attr(lib, ctx, _ATTR_CTL_NNP, 0, "SCMP_FLTATR_CTL_NNP")
        for attr in attrs:
            name = next(n for n, a in FLAGS.items() if a == attr)
            _attr(lib, ctx, attr, 1, name)
        for token in archs:
            rc = lib.arch_add(ctx, token)
            if rc < 0 and rc != -_errno.EEXIST:  # EEXIST: the native arch is always in
                raise RuntimeFailure(f"linux.seccomp: adding architecture: {_strerror(rc)}")
        for action, nr, args, where in rules:
            for group in _rule_groups(args):
                arr = (_ArgCmp * max(len(group), 1))()
                for n, (index, op, a, b) in enumerate(group):
                    arr[n] = _ArgCmp(index, op, a, b)
                rc = lib.rule_add_array(ctx, action, nr, len(group), arr)
                if rc < 0:
                    raise RuntimeFailure(f"{where}: adding the rule: {_strerror(rc)}")
        rc = lib.load(ctx)
        if rc < 0:
            raise RuntimeFailure(f"linux.seccomp: loading the filter: {_strerror(rc)}")
        # The filter is in place: only already-resolved calls from here on.
        if listener is not None:
            fd = lib.notify_fd(ctx)
            if fd < 0:
                raise RuntimeFailure(f"linux.seccomp: seccomp_notify_fd: {_strerror(fd)}")
            try:
                listener.send(fd)
            finally:
                _close(fd)
    finally:
        lib.release(ctx)
        if listener is not None:
            listener.close()


def _attr(lib: _Lib, ctx: int, attr: int, value: int, name: str) -> None:
    rc = lib.attr_set(ctx, attr, value)
    if rc < 0:
        raise RuntimeFailure(f"linux.seccomp: setting {name}: {_strerror(rc)}")


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class _Listener:
    """A connection to the seccomp agent at listenerPath, opened before the filter.

    The message is runc's ContainerProcessState JSON; everything `send` needs
    is resolved here so nothing is imported once the filter is in place.
    """

    def __init__(self, spec: dict, state_json: bytes | None) -> None:
        import json
        import socket
        import sys

        state: object = {}
        if state_json:
            try:
                state = json.loads(state_json)
            except ValueError as e:
                raise RuntimeFailure(f"linux.seccomp: container state is not JSON: {e}") from None
        self.data = json.dumps(
            {
                "ociVersion": _OCI_VERSION,
                "fds": ["seccompFd"],
                "pid": os.getpid(),
                "metadata": spec.get("listenerMetadata") or "",
                "state": state,
            }
        ).encode()
        self.level, self.kind, self.byteorder = socket.SOL_SOCKET, socket.SCM_RIGHTS, sys.byteorder
        path = spec["listenerPath"]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise RuntimeFailure(
                f'linux.seccomp.listenerPath: cannot connect to "{path}": {e.strerror}'
            ) from None

    def send(self, fd: int) -> None:
        raw = fd.to_bytes(4, self.byteorder)
        try:
            self.sock.sendmsg([self.data], [(self.level, self.kind, raw)])
        except OSError as e:
            raise RuntimeFailure(
                f"linux.seccomp: sending the notify fd to the listener: {e.strerror}"
            ) from None

    def close(self) -> None:
        self.sock.close()


def features() -> dict:
    """Seccomp support in the shape of `runc features` (linux.seccomp)."""
    try:
        lib = _get()
    except RuntimeFailure:
        return {"enabled": False}
    archs = [name for name in ARCHITECTURES if _arch_token(lib, name) != 0]
    actions = [
        name
        for name in ACTIONS
        if not (name in ("SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG") and lib.api < 3)
        and not (name == "SCMP_ACT_NOTIFY" and lib.api < 5)
    ]
    return {
        "enabled": True,
        "actions": actions,
        "operators": list(OPERATORS),
        "archs": archs,
        "knownFlags": list(FLAGS),
        "supportedFlags": _supported_flags(lib),
        "libseccomp": lib.version,
    }
