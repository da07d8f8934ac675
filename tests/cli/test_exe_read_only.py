"""CVE-2019-5736 through the engine: a container whose entrypoint is a
`#!/proc/self/exe` script gets the runtime's interpreter as its program, and
that file must be reachable only through a read-only mount.

The container runs the host's own Python (its /usr and /lib bind-mounted in),
so the script can look at its own exe with statvfs: EROFS would come after
ETXTBSY on an open for writing, so an open can't tell the two apart.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from scripts.test_images import BusyboxImage

from tests.cli.dockyard_helper import Dockyard

SCRIPT = """#!/proc/self/exe
import os
flags = os.statvfs("/proc/self/exe").f_flag
print("exe-read-only" if flags & os.ST_RDONLY else "exe-WRITABLE")
"""


def test_proc_self_exe_entrypoint_sees_read_only_interpreter(dy: Dockyard, tmp_path: Path) -> None:
    interp = os.path.realpath(sys.executable)
    before = hashlib.sha256(Path(interp).read_bytes()).hexdigest()
    scripts = tmp_path / "x"
    scripts.mkdir()
    (scripts / "evil").write_text(SCRIPT)
    (scripts / "evil").chmod(0o755)
    # /usr read-write on purpose: the exe's read-only mount must be the runtime's own.
    binds = [
        "-v",
        f"{scripts}:/x",
        "-v",
        "/usr:/usr",
        "-v",
        "/lib64:/lib64:ro",
        "-v",
        "/lib:/lib:ro",
    ]
    out = dy("run", "--rm", *binds, "--entrypoint", "/x/evil", "busybox")
    assert out.stdout.strip() == "exe-read-only", out.stdout + out.stderr
    assert hashlib.sha256(Path(interp).read_bytes()).hexdigest() == before


def test_monitor_server_forks_read_only_inits(tmp_path: Path, busybox_image: BusyboxImage) -> None:
    """The Python API's monitor server forks monitors and inits without a re-exec:
    the same check through it, twice (the second start reuses the server)."""
    import dockyard

    scripts = tmp_path / "x"
    scripts.mkdir()
    (scripts / "evil").write_text(SCRIPT)
    (scripts / "evil").chmod(0o755)
    client = dockyard.Client(str(tmp_path / "root"))
    try:
        client.images.import_tar(str(busybox_image.tar), "busybox")
        volumes = {
            str(scripts): {"bind": "/x", "mode": "ro"},
            "/usr": {"bind": "/usr", "mode": "rw"},
            "/lib64": {"bind": "/lib64", "mode": "ro"},
            "/lib": {"bind": "/lib", "mode": "ro"},
        }
        for _ in range(2):
            out = client.containers.run(
                "busybox", entrypoint="/x/evil", volumes=volumes, remove=True
            )
            assert isinstance(out, bytes) and out.strip() == b"exe-read-only"
        server = client.engine._server
        assert server is not None and server.pid > 0
        server_pid = server.pid
        # The server runs from its read-only bind mount (detached once it left
        # that mount namespace); every monitor and init it forks shares that exe.
        assert os.statvfs(f"/proc/{server_pid}/exe").f_flag & os.ST_RDONLY
    finally:
        client.engine.close()
    assert not os.path.exists(f"/proc/{server_pid}"), "the monitor server outlived close()"
