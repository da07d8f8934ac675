"""The one error type of the Dockerfile front end."""

from __future__ import annotations


class DockerfileError(Exception):
    """A Dockerfile that BuildKit would reject, located at ``file:line``.

    ``str(err)`` is one line: ``Dockerfile:3: unknown instruction: FOO`` and, when
    the offending source line is known, the line quoted after it.
    """

    def __init__(
        self,
        message: str,
        line: int | None = None,
        end_line: int | None = None,
        source: str | None = None,
        filename: str = "Dockerfile",
    ) -> None:
        self.message = message
        self.line = line
        self.end_line = end_line if end_line is not None else line
        self.source = source
        self.filename = filename
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.filename if self.line is None else f"{self.filename}:{self.line}"
        text = f"{where}: {self.message}"
        if self.source:
            first = self.source.split("\n", 1)[0].strip()
            if first:
                text += f" (in {first!r})"
        return text
