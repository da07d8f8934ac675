"""Device rules on cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program, as runc's devicefilter.

v2 has no devices.allow; the kernel asks an eBPF program attached to the cgroup
instead. `build_program` turns OCI rules into instructions (pure, testable);
`apply_device_rules` loads it and swaps it in for any program attached before.

Semantics follow v1's list: the cgroup starts allowing everything (as a new v1
cgroup inherits its parent's "a *:* rwm"), a type "a" rule resets to allow-all or
deny-all, and among the later rules the last one that matches a request decides.
"""

from __future__ import annotations

import os
import struct

from dockyard.runtime.errors import RuntimeFailure

# linux/bpf.h
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2

# opcodes (class | op | source)
LDX_MEM_W = 0x61
ALU32_AND_K = 0x54
ALU32_RSH_K = 0x74
ALU32_MOV_K = 0xB4
ALU32_MOV_X = 0xBC
JMP_JNE_K = 0x55
JMP_JNE_X = 0x5D
JMP_JEQ_K = 0x15
JMP_EXIT = 0x95

R0, R1, R2, R3, R4, R5 = range(6)
_ACCESS = {"r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE, "m": BPF_DEVCG_ACC_MKNOD}
_ALL = BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE | BPF_DEVCG_ACC_MKNOD
LICENSE = b"Apache\0"

Insn = tuple[int, int, int, int, int]  # code, dst, src, off, imm
Rule = tuple[bool, str, int | None, int | None, int]  # allow, type, major, minor, access


def normalize(rule: dict[str, object]) -> Rule:
    kind = str(rule.get("type") or "a")
    if kind not in ("a", "b", "c"):
        raise RuntimeFailure(f"cgroup: invalid device type {kind!r}")
    numbers: list[int | None] = []
    for key in ("major", "minor"):
        value = rule.get(key)
        if value is None or value == -1:
            numbers.append(None)
        elif isinstance(value, int) and 0 <= value < 1 << 31:
            numbers.append(value)
        else:
            raise RuntimeFailure(f"cgroup: invalid device {key} {value!r}")
    access = 0
    for ch in str(rule.get("access") or "rwm"):
        if ch not in _ACCESS:
            raise RuntimeFailure(f"cgroup: invalid device access {rule.get('access')!r}")
        access |= _ACCESS[ch]
    return bool(rule.get("allow")), kind, numbers[0], numbers[1], access


def effective_rules(rules: list[dict[str, object]]) -> tuple[bool, list[Rule]]:
    """(default allow, rules after the last "a" reset, latest first)."""
    default_allow = True
    tail: list[Rule] = []
    for raw in rules:
        rule = normalize(raw)
        if rule[1] == "a":
            default_allow, tail = rule[0], []
        else:
            tail.append(rule)
    tail.reverse()
    return default_allow, tail


def _block(rule: Rule) -> list[Insn]:
    allow, kind, major, minor, access = rule
    dev = BPF_DEVCG_DEV_CHAR if kind == "c" else BPF_DEVCG_DEV_BLOCK
    # off = -1 marks "skip to the next block"; fixed up once the block's length is known.
    out: list[Insn] = [(JMP_JNE_K, R2, 0, -1, dev)]
    if access != _ALL:
        out.append((ALU32_MOV_X, R1, R3, 0, 0))
        out.append((ALU32_AND_K, R1, 0, 0, access))
        if allow:
            # Allow only when every requested bit is granted.
            out.append((JMP_JNE_X, R1, R3, -1, 0))
        else:
            # Deny as soon as any requested bit is listed.
            out.append((JMP_JEQ_K, R1, 0, -1, 0))
    if major is not None:
        out.append((JMP_JNE_K, R4, 0, -1, major))
    if minor is not None:
        out.append((JMP_JNE_K, R5, 0, -1, minor))
    out.append((ALU32_MOV_K, R0, 0, 0, int(allow)))
    out.append((JMP_EXIT, 0, 0, 0, 0))
    end = len(out)
    return [
        (c, d, s, end - i - 1 if off == -1 else off, imm)
        for i, (c, d, s, off, imm) in enumerate(out)
    ]


def build_program(rules: list[dict[str, object]]) -> list[Insn]:
    """Instructions for struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor}."""
    default_allow, tail = effective_rules(rules)
    insns: list[Insn] = [
        (LDX_MEM_W, R2, R1, 0, 0),  # access_type: device type in the low 16 bits
        (ALU32_AND_K, R2, 0, 0, 0xFFFF),
        (LDX_MEM_W, R3, R1, 0, 0),  # ... and access bits in the high 16
        (ALU32_RSH_K, R3, 0, 0, 16),
        (LDX_MEM_W, R4, R1, 4, 0),
        (LDX_MEM_W, R5, R1, 8, 0),
    ]
    for rule in tail:
        insns.extend(_block(rule))
    insns.append((ALU32_MOV_K, R0, 0, 0, int(default_allow)))
    insns.append((JMP_EXIT, 0, 0, 0, 0))
    return insns


def encode(insns: list[Insn]) -> bytes:
    """struct bpf_insn, little-endian (dst in the low nibble of the register byte)."""
    return b"".join(struct.pack("<BBhi", c, (s << 4) | d, off, imm) for c, d, s, off, imm in insns)


def _bpf(cmd: int, attr: bytearray) -> int:
    from dockyard.runtime import syscalls

    return syscalls.current().bpf(cmd, attr)


def load_program(code: bytes) -> int:
    """BPF_PROG_LOAD; returns the program's fd."""
    import ctypes

    insns = ctypes.create_string_buffer(code, len(code))
    license_buf = ctypes.create_string_buffer(LICENSE, len(LICENSE))
    log = ctypes.create_string_buffer(1 << 16)
    attr = bytearray(72)
    struct.pack_into(
        "<IIQQIIQ",
        attr,
        0,
        BPF_PROG_TYPE_CGROUP_DEVICE,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_buf),
        1,
        len(log),
        ctypes.addressof(log),
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        detail = log.value.decode(errors="replace").strip().splitlines()
        hint = f" ({detail[-1]})" if detail else ""
        raise RuntimeFailure(f"cgroup: cannot load device filter: {e.strerror}{hint}") from None


def attached_programs(cgroup_fd: int) -> list[int]:
    """Ids of the device programs on this cgroup (BPF_PROG_QUERY)."""
    import ctypes

    ids = (ctypes.c_uint32 * 64)()
    attr = bytearray(32)
    struct.pack_into(
        "<IIIIQI", attr, 0, cgroup_fd, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), 64
    )
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[: min(count, 64)])


def apply_device_rules(cgroup_dir: str, rules: list[dict[str, object]]) -> None:
    """Attach a filter for `rules`, then detach what was there before (never a gap)."""
    prog_fd = load_program(encode(build_program(rules)))
    try:
        cgroup_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        os.close(prog_fd)
        raise RuntimeFailure(f"cgroup: cannot open {cgroup_dir}: {e.strerror}") from None
    try:
        old = attached_programs(cgroup_fd)
        attr = bytearray(
            struct.pack("<IIII", cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
        )
        _bpf(BPF_PROG_ATTACH, attr)
        for prog_id in old:
            old_fd = _bpf(BPF_PROG_GET_FD_BY_ID, bytearray(struct.pack("<III", prog_id, 0, 0)))
            try:
                _bpf(
                    BPF_PROG_DETACH,
                    bytearray(struct.pack("<IIII", cgroup_fd, old_fd, BPF_CGROUP_DEVICE, 0)),
                )
            finally:
                os.close(old_fd)
    except OSError as e:
        raise RuntimeFailure(
            f"cgroup: cannot attach device filter to {cgroup_dir}: {e.strerror}"
        ) from None
    finally:
        os.close(cgroup_fd)
        os.close(prog_fd)
