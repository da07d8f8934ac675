"""`run`/`create` pull a missing image first, as Docker does (`--pull missing`)."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    import argparse

    from dockyard.engine.containers import Engine


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pull", choices=("missing", "always", "never"), default="missing")
    p.add_argument("--platform")


def ensure_image(args: argparse.Namespace, eng: Engine) -> None:
    """Pull `args.image` when the policy asks for it; the image store is left as is
    (and the error is the pull's one line) when the pull fails."""
    from dockyard.image import reference as refs
    from dockyard.image.store import ImageNotFound

    policy = getattr(args, "pull", "missing")
    if policy == "never":
        return
    wanted = refs.parse(args.image)  # (with the default tag: no "Using default tag" line)
    if policy == "missing":
        try:
            eng.images.get(args.image)
            return
        except ImageNotFound:
            pass
        sys.stderr.write(f"Unable to find image '{wanted.familiar()}' locally\n")
    from dockyard.image import platforms
    from dockyard.image.pull import pull
    from dockyard.registry import config
    from dockyard.registry.progress import for_stream

    platform = platforms.parse(args.platform) if getattr(args, "platform", None) else None
    conf = config.load(None, eng.images.root)
    pull(eng.images, str(wanted), platform, conf, for_stream(sys.stderr, False))
