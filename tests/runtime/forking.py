"""Run a function in a forked child (to change its privileges, filters or
namespaces without touching the test process) and get its output back."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable


def fork_child(fn: Callable[[], str]) -> tuple[str, int]:
    """(what fn returned or its error, the child's wait status)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGSYS tests dump no core
            try:
                out = fn()
            except BaseException as e:
                out, code = f"error: {type(e).__name__}: {e}", 1
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks).decode(), status


def run_in_child(fn: Callable[[], str]) -> str:
    """fn's result; the test fails if the child failed."""
    out, status = fork_child(fn)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (out, status)
    return out
