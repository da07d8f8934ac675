"""Keeping the kernel's cgroup attach lock warm while a container is set up.

Moving a process into a cgroup takes the global cgroup_threadgroup_rwsem for
writing. When that lock has been idle, its first writer waits for an RCU grace
period (4-12 ms on this kind of host); writers that follow within a grace period
don't. runc pays that wait on its critical path. The runtime instead starts a
thread that re-writes its own pid into the cgroup it is already in (a move that
changes nothing) every few milliseconds while it parses and checks the config,
so the real join of the container finds the lock warm.
"""

from __future__ import annotations

import _thread
import os
import time


def _own_procs_file(root: str) -> str | None:
    """cgroup.procs of the cgroup this process is in, in any one hierarchy."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        names = [c.removeprefix("name=") for c in controllers.split(",") if c]
        candidates = [os.path.join(root, n) for n in names] if names else [root, root + "/unified"]
        for base in candidates:
            procs = f"{base}{path.rstrip('/')}/cgroup.procs"
            if os.path.exists(procs):
                return procs
    return None


class AttachLockWarmer:
    """Starts at construction; `stop()` ends it (it also ends by itself after `limit`)."""

    def __init__(self, root: str = "/sys/fs/cgroup", period: float = 0.002, limit: float = 0.5):
        self._stopped = False
        procs = _own_procs_file(root) if limit > 0 else None
        if procs is not None:
            _thread.start_new_thread(self._run, (procs, period, limit))

    def _run(self, procs: str, period: float, limit: float) -> None:
        deadline = time.monotonic() + limit
        pid = str(os.getpid()).encode()
        try:
            fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            while not self._stopped and time.monotonic() < deadline:
                os.write(fd, pid)
                time.sleep(period)
        except OSError:
            pass  # not allowed to move ourselves here: nothing to warm
        finally:
            os.close(fd)

    def stop(self) -> None:
        self._stopped = True
