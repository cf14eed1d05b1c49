"""Reference pages generated from the code at build time, so they cannot drift from it.

Two MyST directives, each rendering a Markdown table from the declarations themselves:

- ``{eventworker-settings}``: every setting of :class:`worker.config.Settings`, its variable, type,
  default and description (the same source as ``settings.env.example``);
- ``{eventworker-metrics}``: every metric a worker exports, from the registry of a fresh
  :class:`worker.runtime.metrics.Metrics`: name as scraped, type, labels and help text.

The CLI reference comes from the click commands through ``sphinx-click``; each command's examples
(its epilog, see :func:`worker.commands.base.examples`) become a shell code block there, copied as
written. ``tests/docs`` renders the same tables to check them against the code and against
``settings.env.example``.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

#: A Prometheus counter is scraped with this suffix; its declaration names it without.
_COUNTER_SUFFIX = "_total"


def _type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``int``, ``float or unset``, ``list of str``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        name = " or ".join(_type_name(a) for a in parts)
        return f"{name} or unset" if len(parts) < len(typing.get_args(annotation)) else name
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if isinstance(annotation, type):
        names = {"str": "text", "bool": "true/false", "SecretStr": "secret text"}
        return names.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _cell(text: str) -> str:
    """``text`` on one line, fit for a Markdown table cell: ``|`` and ``<`` escaped (``<host>`` is no tag)."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def settings_rows() -> list[tuple[str, str, str, str]]:
    """(variable, type, default, description) of every setting, in declaration order."""
    from worker.config import Settings, env_name, example_value

    rows = []
    for name, field in Settings.model_fields.items():
        default = example_value(field)
        rows.append(
            (
                env_name(name),
                _type_name(field.annotation),
                f"`{default}`" if default else "unset",
                _cell(field.description or ""),
            )
        )
    return rows


def settings_markdown() -> str:
    """The settings table, as Markdown."""
    lines = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{var}` | {kind} | {default} | {text} |" for var, kind, default, text in settings_rows()]
    return "\n".join(lines) + "\n"


def metrics_rows() -> list[tuple[str, str, str, str]]:
    """(name as scraped, type, labels, help) of every metric a worker's registry declares."""
    from worker.runtime.metrics import Metrics

    metrics = Metrics()
    rows = []
    try:
        for collector in metrics.registry._collector_to_names:  # the registry's own list of what it serves
            families = collector.describe() if hasattr(collector, "describe") else collector.collect()
            labels = getattr(collector, "_labelnames", None) or getattr(collector, "labelnames", ())
            for family in families:
                name = family.name + (_COUNTER_SUFFIX if family.type == "counter" else "")
                found = labels or getattr(family, "_labelnames", ())  # a collector's family names its own
                shown = ", ".join(f"`{label}`" for label in found)
                rows.append((name, family.type, shown, _cell(family.documentation)))
    finally:
        metrics.close()
    return sorted(rows)


def metrics_markdown() -> str:
    """The metrics table, as Markdown."""
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    lines += [f"| `{name}` | {kind} | {labels} | {text} |" for name, kind, labels, text in metrics_rows()]
    return "\n".join(lines) + "\n"


class _Table(SphinxDirective):
    """Renders the Markdown a function returns, parsed as the page's own Markdown."""

    render: typing.ClassVar[typing.Callable[[], str]]

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(type(self).render().splitlines(), self.content_offset, container)
        return list(container.children)


class SettingsTable(_Table):
    render = staticmethod(settings_markdown)


class MetricsTable(_Table):
    render = staticmethod(metrics_markdown)


#: How a command's epilog begins when it lists examples (:func:`worker.commands.base.examples`).
_EXAMPLES = "\b\nExamples:\n"


def _examples_as_code(app: Sphinx, ctx: Any, lines: list[str]) -> None:
    """sphinx-click renders an epilog as a line block, with smart quotes and dashes (``--help`` as an
    en dash); the examples are commands to copy, so they become a literal shell block."""
    epilog = ctx.command.epilog or ""
    if not epilog.startswith(_EXAMPLES):
        return
    commands = [line.strip() for line in epilog.removeprefix(_EXAMPLES).splitlines() if line.strip()]
    lines[:] = [".. rubric:: Examples", "", ".. code-block:: shell", "", *(f"    {c}" for c in commands), ""]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("eventworker-settings", SettingsTable)
    app.add_directive("eventworker-metrics", MetricsTable)
    app.connect("sphinx-click-process-epilog", _examples_as_code)
    return {"parallel_read_safe": True, "version": "1"}
