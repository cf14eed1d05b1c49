"""A trace as a picture: the spans of one trace (and the traces it links to) as an SVG waterfall.

Pure: spans in (as an OTLP receiver decoded them), SVG text out. ``tests/e2e/test_tracing_process.py``
draws the trace of a real run with it; docs/tracing.md shows the picture it committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape

#: Layout, in SVG units.
WIDTH = 980
LABEL = 390
ROW = 22
TOP = 46
#: Bar colours by service; anything else grey.
COLOURS = {"shop": "#4c78a8", "eventworker": "#f58518"}
KIND_MARK = {"PRODUCER": "→ ", "CONSUMER": "⇢ ", "CLIENT": "", "SERVER": "", "INTERNAL": ""}


@dataclass
class Span:
    """What the picture needs of a span."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    error: bool = False
    links: list[str] = field(default_factory=list)
    """Span ids this span links to."""
    detail: str = ""
    """Shown after the name: the start of a statement."""


def _ordered(spans: Sequence[Span], root: Span) -> list[tuple[int, Span]]:
    """``root`` and its descendants, depth first, children by start time; each with its depth."""
    children: dict[str, list[Span]] = {}
    for span in spans:
        children.setdefault(span.parent_id, []).append(span)
    out: list[tuple[int, Span]] = []
    stack = [(0, root)]
    while stack:
        depth, span = stack.pop()
        out.append((depth, span))
        below = sorted(children.get(span.span_id, []), key=lambda s: s.start_ns, reverse=True)
        stack.extend((depth + 1, child) for child in below)
    return out


def rows(spans: Sequence[Span], trace_id: str) -> list[tuple[int, Span, str]]:
    """The rows of the picture: the trace's tree, then each trace linking to it (an ingest job), each
    row with its depth and a note."""
    ids = {s.span_id for s in spans}
    own = [s for s in spans if s.trace_id == trace_id]
    roots = [s for s in own if s.parent_id not in ids]
    out = [(d, s, "") for root in sorted(roots, key=lambda s: s.start_ns) for d, s in _ordered(own, root)]
    linking = sorted(
        (
            s
            for s in spans
            if s.trace_id != trace_id and any(link in {o.span_id for o in own} for link in s.links)
        ),
        key=lambda s: s.start_ns,
    )
    for span in linking:
        out += [(d, s, "linked trace" if s is span else "") for d, s in _ordered(spans, span)]
    return out


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def svg(spans: Iterable[Span], trace_id: str, title: str) -> str:
    """The waterfall of ``trace_id`` (and the traces that link to it) as an SVG document."""
    listed = rows(list(spans), trace_id)
    if not listed:
        raise ValueError(f"no span of trace {trace_id}")
    start = min(s.start_ns for _, s, _ in listed)
    end = max(s.end_ns for _, s, _ in listed)
    scale = (WIDTH - LABEL - 20) / max(end - start, 1)
    lines = len(listed) + sum(1 for _, _, note in listed if note)
    height = TOP + ROW * lines + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for n in range(5):  # a time axis: 0 to the whole trace, in quarters
        x = LABEL + (WIDTH - LABEL - 20) * n / 4
        parts.append(f'<line x1="{x:.1f}" y1="{TOP - 10}" x2="{x:.1f}" y2="{height - 30}" stroke="#ddd"/>')
        tick = _ms((end - start) * n // 4)
        anchor = "end" if n == 4 else "middle"
        parts.append(f'<text x="{x:.1f}" y="{TOP - 14}" text-anchor="{anchor}" fill="#555">{tick}</text>')
    y = TOP
    for depth, span, note in listed:
        if note:
            parts.append(f'<text x="10" y="{y + 15}" fill="#777" font-style="italic">{escape(note)}:</text>')
            y += ROW
        label = f"{KIND_MARK.get(span.kind, '')}{span.name}"
        if span.detail:  # a statement says more than its first word, which is the span's name
            label = span.detail
        parts.append(
            f'<text x="{10 + depth * 14}" y="{y + 15}"><tspan fill="#777">{escape(span.service)}</tspan> '
            f"{escape(label[:56])}</text>"
        )
        x = LABEL + (span.start_ns - start) * scale
        width = max((span.end_ns - span.start_ns) * scale, 1.5)
        colour = COLOURS.get(span.service, "#9d9d9d")
        stroke = ' stroke="#d62728" stroke-width="2"' if span.error else ""
        parts.append(
            f'<rect x="{x:.1f}" y="{y + 4}" width="{width:.1f}" height="{ROW - 8}" fill="{colour}"{stroke}/>'
        )
        duration = _ms(span.end_ns - span.start_ns)
        parts.append(
            f'<text x="{min(x + width + 4, WIDTH - 70):.1f}" y="{y + 15}" fill="#555">{duration}</text>'
        )
        y += ROW
    parts.append(
        f'<text x="10" y="{height - 12}" fill="#555">blue: the application (shop), orange: eventworker;'
        " → a producer span, ⇢ a job try; the linked trace is the ingest job that stored the events</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
