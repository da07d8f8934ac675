"""Flag values several verbs parse the same way: KEY=VALUE lists and --format."""

from __future__ import annotations

from dockyard.cli.errors import UsageError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any


def key_values(values: list[str], flag: str) -> dict[str, str]:
    """`--label a=b --opt c=` → {"a": "b", "c": ""}; a missing key is the user's error."""
    result = {}
    for value in values:
        key, _, val = value.partition("=")
        if not key:
            raise UsageError(f'invalid argument "{value}" for "{flag}" flag: give KEY=VALUE')
        result[key] = val
    return result


def render_format(template: str, data: Any) -> str:
    """A --format value (`json` meaning `{{json .}}`) applied to `data`."""
    from dockyard.cli.gotemplate import TemplateError, render

    if template == "json":
        template = "{{json .}}"
    try:
        return render(template, data)
    except TemplateError as err:
        raise UsageError(str(err)) from None
