"""The Dockerfile builder (issue 7). Sits above ``image/`` and ``storage/``.

Module map:

- ``parser``       Dockerfile text → list of :class:`instructions.Instruction`, exactly
                   as BuildKit's parser splits it (directives, continuations, comments,
                   heredocs, JSON vs shell form, flags); ``parse()`` then applies
                   BuildKit's instruction checks.
- ``instructions`` ``Instruction`` and ``Heredoc`` (plain classes), flag parsing and the
                   per-instruction checks (argument counts, allowed flags, ONBUILD).
- ``shell``        BuildKit's shell lexer: quote removal, word splitting, ``$var`` /
                   ``${var…}`` expansion with the Dockerfile's escape token.
- ``expand``       ``expand_instruction(instr, env)``: which arguments of which
                   instruction the builder expands, and how.
- ``errors``       ``DockerfileError`` (``file:line: message``).
- ``dockerignore`` ``.dockerignore`` patterns (written separately).
- ``context``      the build context (written separately).
- ``executor``     ``Builder`` (Docker's classic builder, ``dockyard build``): stages, the
                   stages ``--target`` needs, ARG scoping, ONBUILD triggers, config-only
                   steps (new config + ``empty_layer`` history), ``BuildError``.
- ``steps``        the steps themselves: config changes, RUN (a container run to
                   completion, then its upper dir committed as a layer), WORKDIR,
                   COPY/ADD (context or ``--from`` image, wildcards, --chown/--chmod,
                   local tar extraction; no URLs) written into a created container.
- ``cache``        the step cache in the metadata DB (``build_cache``): lookup, store,
                   the intermediate images ``images`` hides, ``builder prune``.
"""

from __future__ import annotations

from .errors import DockerfileError
from .instructions import Heredoc, Instruction
from .parser import parse

__all__ = ["DockerfileError", "Heredoc", "Instruction", "parse"]
