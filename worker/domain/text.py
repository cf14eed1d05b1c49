"""Small pieces of wording the command line and the status views share. Pure: no I/O."""

from __future__ import annotations

from typing import Any


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 event``, ``2 events``, ``1,234 events``; ``nouns`` when adding an s will not do."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def describe_errors(errors: Any) -> str:
    """A dead letter's validation errors as a person reads them: ``type: Field required; source: ...``.

    ``errors`` is what the ``dead_letters.errors`` column holds: a list of ``{"loc", "msg", "type"}``;
    an error about the whole input has an empty ``loc`` and reads as ``<event>``.
    """
    if not isinstance(errors, list):
        return "" if errors is None else str(errors)
    return "; ".join(
        f"{error.get('loc') or '<event>'}: {error.get('msg')}" if isinstance(error, dict) else str(error)
        for error in errors
    )


def one_line(text: str, limit: int) -> str:
    """``text`` on one line (line breaks shown as ``\\n``), cut to ``limit`` characters with an ellipsis."""
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
