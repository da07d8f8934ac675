"""Seccomp: real filters loaded in forked children, validation errors, features()."""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.runtime import seccomp, syscalls
from dockyard.runtime.errors import RuntimeFailure
from tests.runtime.forking import fork_child, run_in_child

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading filters needs root or NNP")

# What a Python child needs after the filter is in place to report and exit.
BASICS = [
    "read",
    "write",
    "close",
    "exit",
    "exit_group",
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "madvise",
    "futex",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "getpid",
    "gettid",
    "fstat",
    "newfstatat",
    "lseek",
    "getrandom",
]


def errno_of(call: Callable[[], object]) -> int:
    try:
        call()
    except OSError as e:
        return e.errno or -1
    return 0


def spec_errno(names: list[str], errno_ret: int | None = None, **extra: object) -> dict:
    rule: dict = {"names": names, "action": "SCMP_ACT_ERRNO"}
    if errno_ret is not None:
        rule["errnoRet"] = errno_ret
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule], **extra}


# --- real filters ------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("errno_ret", [None, errno.ENOSYS, 1234])
def test_errno_rule_on_mkdir(tmp_path: Path, errno_ret: int | None) -> None:
    target = tmp_path / "d"

    def child() -> str:
        seccomp.load(spec_errno(["mkdir", "mkdirat"], errno_ret))
        return str(errno_of(lambda: os.mkdir(target)))

    assert int(run_in_child(child)) == (errno.EPERM if errno_ret is None else errno_ret)
    assert not target.exists()


@needs_root
def test_load_does_not_set_no_new_privs() -> None:
    def child() -> str:
        seccomp.load(spec_errno(["mkdir"]))
        return str(syscalls.current().prctl(syscalls.PR_GET_NO_NEW_PRIVS))

    assert run_in_child(child) == "0"


@needs_root
def test_flags_and_architectures(tmp_path: Path) -> None:
    flags = [
        f
        for f in ("SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG")
        if f in seccomp.features()["supportedFlags"]
    ]
    spec = spec_errno(
        ["mkdir", "mkdirat"],
        errno.EROFS,
        architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        flags=flags,
    )

    def child() -> str:
        seccomp.load(spec)
        return str(errno_of(lambda: os.mkdir(tmp_path / "d")))

    assert run_in_child(child) == str(errno.EROFS)


@needs_root
def test_args_match_personality() -> None:
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 77,
                "args": [{"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_EQ"}],
            }
        ],
    }

    def child() -> str:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.personality.argtypes = [ctypes.c_ulong]
        seccomp.load(spec)
        query = libc.personality(0xFFFFFFFF)
        query_errno = ctypes.get_errno()
        current = libc.personality(0)  # PER_LINUX: allowed
        return f"{query} {query_errno} {current}"

    query, query_errno, current = run_in_child(child).split()
    assert (query, query_errno) == ("-1", "77")
    assert int(current) >= 0


@needs_root
def test_masked_eq_and_repeated_index(tmp_path: Path) -> None:
    """MASKED_EQ (value = mask, valueTwo = datum); two conditions on one index are ORed."""
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {
                "names": ["fchmod"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 77,
                "args": [
                    {"index": 1, "value": 0o002, "valueTwo": 0o002, "op": "SCMP_CMP_MASKED_EQ"}
                ],
            },
            {
                "names": ["fchmod"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 78,
                "args": [
                    {"index": 1, "value": 0o600, "op": "SCMP_CMP_EQ"},
                    {"index": 1, "value": 0o604, "op": "SCMP_CMP_EQ"},
                ],
            },
        ],
    }
    path = tmp_path / "f"
    path.write_text("x")

    def child() -> str:
        fd = os.open(path, os.O_RDONLY)
        seccomp.load(spec)
        results = [
            errno_of(functools.partial(os.fchmod, fd, m)) for m in (0o646, 0o600, 0o604, 0o644)
        ]
        return " ".join(map(str, results))

    assert run_in_child(child) == "77 78 78 0"
    assert path.stat().st_mode & 0o777 == 0o644


@needs_root
def test_default_errno_with_allow_list(tmp_path: Path) -> None:
    spec = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EACCES,
        "syscalls": [
            {"names": BASICS, "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            # same as the default: skipped instead of refused by libseccomp
            {"names": ["chdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
        ],
    }
    pid_before = os.getpid

    def child() -> str:
        me = pid_before()
        seccomp.load(spec)
        return " ".join(
            str(x)
            for x in (
                errno_of(lambda: os.mkdir(tmp_path / "d")),
                errno_of(lambda: os.rmdir(tmp_path)),
                errno_of(lambda: os.chdir("/")),
                int(os.getpid() == me),
            )
        )

    assert run_in_child(child) == f"38 {errno.EACCES} {errno.EACCES} 1"


@needs_root
@pytest.mark.parametrize("action", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL"])
def test_kill_dies_with_sigsys(action: str) -> None:
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": action}],
    }

    def child() -> str:
        seccomp.load(spec)
        os.getppid()
        return "survived"

    out, status = fork_child(child)
    assert out == ""
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


@needs_root
def test_log_action_allows(tmp_path: Path) -> None:
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_LOG"}],
    }

    def child() -> str:
        seccomp.load(spec)
        return str(errno_of(lambda: os.mkdir(tmp_path / "d")))

    assert run_in_child(child) == "0"


# --- SCMP_ACT_NOTIFY with a seccomp agent --------------------------------------------

_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif), 80 bytes
_NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp), 24 bytes


@needs_root
def test_notify_sends_fd_and_state_to_listener(tmp_path: Path) -> None:
    import fcntl

    sock_path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    server.settimeout(20)
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock_path,
        "listenerMetadata": "agent-metadata",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}],
    }
    state = {"ociVersion": "1.2.0", "id": "c1", "status": "creating", "pid": 1, "bundle": "/b"}
    target = tmp_path / "d"

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            server.close()
            try:
                seccomp.load(spec, state_json=json.dumps(state).encode())
                out = str(errno_of(lambda: os.mkdir(target)))
            except BaseException as e:
                out = f"error: {e}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    notify_fd = -1
    try:
        conn, _ = server.accept()
        with conn:
            msg, ancdata, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(4))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                notify_fd = int.from_bytes(data[:4], "little")
        assert notify_fd >= 0
        message = json.loads(msg)
        assert message["fds"] == ["seccompFd"]
        assert message["metadata"] == "agent-metadata"
        assert message["pid"] == pid
        assert message["state"] == state
        # Answer the child's mkdir with EXDEV, as an agent would.
        req = bytearray(80)
        fcntl.ioctl(notify_fd, _NOTIF_RECV, req, True)
        notif_id, notif_pid, _flags, nr = struct.unpack_from("<QIIi", req)
        assert notif_pid == pid
        assert nr in (83, 258)  # x86_64 mkdir, mkdirat
        resp = bytearray(struct.pack("<QqiI", notif_id, 0, -errno.EXDEV, 0))
        fcntl.ioctl(notify_fd, _NOTIF_SEND, resp, True)
    finally:
        if notify_fd >= 0:
            os.close(notify_fd)  # unblocks the child (ENOSYS) if we failed midway
        server.close()
        out = os.read(r, 4096).decode()
        os.close(r)
        os.waitpid(pid, 0)
    assert out == str(errno.EXDEV)
    assert not target.exists()


def test_notify_without_listener_fails_before_loading(tmp_path: Path) -> None:
    spec = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": str(tmp_path / "nobody.sock"),
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}],
    }
    seccomp.validate(spec)
    with pytest.raises(RuntimeFailure, match=r"listenerPath: cannot connect to"):
        seccomp.load(spec)  # fails while connecting, before any filter is built


# --- validation ----------------------------------------------------------------------


def good() -> dict:
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["no_such_syscall_anywhere", "openat"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 0, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
            },
        ],
    }


def test_good_spec_validates() -> None:
    seccomp.validate(good())


def test_unknown_syscall_names_are_skipped() -> None:
    seccomp.validate(spec_errno(["definitely_not_a_syscall"]))


BAD: list[tuple[Callable[[dict], None], str]] = [
    (
        lambda s: s.update(defaultAction="SCMP_ACT_FOO"),
        r'defaultAction: unknown action "SCMP_ACT_FOO"',
    ),
    (lambda s: s.pop("defaultAction"), r"linux\.seccomp\.defaultAction is required"),
    (lambda s: s.update(defaultAction="SCMP_ACT_NOTIFY"), r"cannot be the default"),
    (lambda s: s.update(defaultErrnoRet="x"), r"linux\.seccomp\.defaultErrnoRet: 'x'"),
    (
        lambda s: s.update(defaultAction="SCMP_ACT_ALLOW"),
        r"linux\.seccomp\.defaultErrnoRet: only valid with SCMP_ACT_ERRNO",
    ),
    (
        lambda s: s["syscalls"][3].update(action="SCMP_ACT_FOO"),
        r'^linux\.seccomp\.syscalls\[3\]\.action: unknown action "SCMP_ACT_FOO"$',
    ),
    (lambda s: s["syscalls"][1].pop("action"), r"syscalls\[1\]\.action is required"),
    (
        lambda s: s["syscalls"][0].update(errnoRet=1),
        r"syscalls\[0\]\.errnoRet: only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE",
    ),
    (lambda s: s["syscalls"][2].update(errnoRet=70000), r"syscalls\[2\]\.errnoRet: 70000 is out"),
    (lambda s: s["syscalls"][2].update(errnoRet=4095), r"errnoRet: 4095 is out of range 0\.\.4094"),
    (lambda s: s.update(defaultErrnoRet=-1), r"defaultErrnoRet: -1 is out of range"),
    (lambda s: s["syscalls"][0].update(names=[]), r"syscalls\[0\]\.names must be a non-empty"),
    (lambda s: s["syscalls"][0].update(names=["read", 5]), r"syscalls\[0\]\.names\[1\]"),
    (
        lambda s: s["architectures"].append("SCMP_ARCH_Z80"),
        r'architectures\[3\]: unknown architecture "SCMP_ARCH_Z80"',
    ),
    (lambda s: s["flags"].append("SECCOMP_FILTER_FLAG_FOO"), r'flags\[1\]: unknown flag "SECC'),
    (
        lambda s: s["syscalls"][3]["args"][0].update(op="SCMP_CMP_FOO"),
        r'syscalls\[3\]\.args\[0\]\.op: unknown operator "SCMP_CMP_FOO"',
    ),
    (lambda s: s["syscalls"][3]["args"][0].update(index=6), r"args\[0\]\.index: 6 is not"),
    (lambda s: s["syscalls"][3]["args"][0].update(value=-1), r"args\[0\]\.value: -1 is not"),
    (lambda s: s["syscalls"][3]["args"][0].update(valueTwo=1 << 64), r"args\[0\]\.valueTwo"),
    (
        lambda s: s["syscalls"].append({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}),
        r"linux\.seccomp\.listenerPath is required with SCMP_ACT_NOTIFY",
    ),
    (lambda s: s.update(listenerMetadata=5), r"listenerMetadata must be a string"),
    (lambda s: s.update(syscalls={}), r"linux\.seccomp\.syscalls must be a list"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD)
def test_validate_errors(mutate: Callable[[dict], None], message: str) -> None:
    spec = good()
    mutate(spec)
    with pytest.raises(RuntimeFailure, match=message) as info:
        seccomp.validate(spec)
    assert "\n" not in str(info.value)


def test_unsupported_flag_is_refused() -> None:
    unsupported = set(seccomp.FLAGS) - set(seccomp.features()["supportedFlags"])
    if not unsupported:
        pytest.skip("every known flag is supported here")
    flag = sorted(unsupported)[0]
    with pytest.raises(RuntimeFailure, match=rf'flags\[0\]: flag "{flag}" is not supported'):
        seccomp.validate({"defaultAction": "SCMP_ACT_ALLOW", "flags": [flag]})


def test_features_shape() -> None:
    f = seccomp.features()
    assert f["enabled"] is True
    assert set(f["actions"]) == set(seccomp.ACTIONS)
    assert f["operators"] == [
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    ]
    assert {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"} <= set(f["archs"])
    assert set(f["supportedFlags"]) <= set(f["knownFlags"]) == set(seccomp.FLAGS)
    assert "SECCOMP_FILTER_FLAG_TSYNC" in f["supportedFlags"]
    json.dumps(f)


def test_import_is_lazy() -> None:
    """Importing the modules must not load libseccomp nor pull in heavy modules."""
    code = (
        "import sys, dockyard.runtime.syscalls; before = set(sys.modules); "
        "import dockyard.runtime.seccomp as s, dockyard.runtime.capabilities; "
        "assert s._lib is None; "
        "new = set(sys.modules) - before; "
        "assert not new & {'json', 'typing', 'subprocess', 'socket'}, new"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- property: any valid spec validates and loads -----------------------------------

# Syscalls the child does not need between load() and _exit().
HARMLESS = ["mkdir", "rmdir", "chroot", "acct", "swapon", "personality", "fchmod", "uname"]
ACTION = st.sampled_from(
    ["SCMP_ACT_ERRNO", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_KILL"]
)
ARG = st.fixed_dictionaries(
    {
        "index": st.integers(0, 5),
        "value": st.integers(0, (1 << 64) - 1),
        "op": st.sampled_from(list(seccomp.OPERATORS)),
    },
    optional={"valueTwo": st.integers(0, (1 << 64) - 1)},
)


@st.composite
def rules(draw: st.DrawFn) -> dict:
    action = draw(ACTION)
    rule: dict = {
        "names": draw(st.lists(st.sampled_from(HARMLESS), min_size=1, max_size=3, unique=True)),
        "action": action,
    }
    if action in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE") and draw(st.booleans()):
        rule["errnoRet"] = draw(st.integers(0, 4094))
    args = draw(st.lists(ARG, max_size=3))
    if args:
        rule["args"] = args
    return rule


@st.composite
def specs(draw: st.DrawFn) -> dict:
    # One rule per syscall: libseccomp refuses two unconditional rules that disagree.
    drawn = draw(st.lists(rules(), max_size=4))
    seen: set[str] = set()
    calls = []
    for rule in drawn:
        rule["names"] = [n for n in rule["names"] if n not in seen]
        seen.update(rule["names"])
        if rule["names"]:
            calls.append(rule)
    spec: dict = {
        "defaultAction": draw(st.sampled_from(["SCMP_ACT_ALLOW", "SCMP_ACT_LOG"])),
        "syscalls": calls,
    }
    if draw(st.booleans()):
        spec["architectures"] = draw(
            st.lists(
                st.sampled_from(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
                unique=True,
            )
        )
    if draw(st.booleans()):
        spec["flags"] = ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
    return spec


@needs_root
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_valid_specs_validate_and_load(spec: dict) -> None:
    seccomp.validate(spec)

    def child() -> str:
        seccomp.load(spec)
        return "loaded"

    assert run_in_child(child) == "loaded"
