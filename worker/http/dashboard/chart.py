"""A line chart as inline SVG markup, rendered in Python: no script, no chart library, no build step.

Pure: series of numbers in, a string of SVG out, every text escaped. Colours are SVG
presentation attributes (not ``style``), so the page's Content-Security-Policy need not
allow inline styles for it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Final

#: Line colours, one per series in order (colour-blind-safe, after Okabe and Ito).
PALETTE: Final = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value`` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop above always returns


def points(values: Sequence[float], width: float, height: float, top: float) -> str:
    """``x,y`` pairs for ``values`` spread over ``width``, scaled so ``top`` is at y=0 and 0 at ``height``."""
    if not values:
        return ""
    step = width / max(len(values) - 1, 1)
    return " ".join(f"{i * step:.1f},{height - min(v, top) / top * height:.1f}" for i, v in enumerate(values))


def line_chart(
    series: Mapping[str, Sequence[float]],
    labels: Sequence[str],
    *,
    width: int = 900,
    height: int = 220,
    title: str = "",
) -> str:
    """An SVG line chart: one line per series over the x ``labels`` (every few shown), with a legend."""
    left, bottom, right, top_pad = 48, 24, 12, 8
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    peak = max((max(values, default=0) for values in series.values()), default=0)
    top = nice_ceiling(peak)
    esc = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
        f'<g transform="translate({left},{top_pad})">',
    ]
    for fraction in (0, 0.5, 1):
        y = plot_h - fraction * plot_h
        parts.append(f'<line x1="0" x2="{plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(
            f'<text x="-6" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
            f"{esc(f'{top * fraction:g}')}</text>"
        )
    ticks = max(1, len(labels) // 6)
    step = plot_w / max(len(labels) - 1, 1)
    for i in range(0, len(labels), ticks):
        parts.append(
            f'<text x="{i * step:.1f}" y="{plot_h + 16}" text-anchor="middle" font-size="11" fill="#555">'
            f"{esc(labels[i])}</text>"
        )
    for n, (name, values) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" data-series="{esc(name)}"'
            f' points="{points(values, plot_w, plot_h, top)}"/>'
        )
    parts.append("</g></svg>")
    return "".join(parts)


def legend(names: Sequence[str], totals: Mapping[str, float]) -> str:
    """An HTML list naming each series in its line's colour, with its total."""
    items = [
        f'<li><svg width="14" height="10" aria-hidden="true"><rect width="14" height="10"'
        f' fill="{PALETTE[n % len(PALETTE)]}"/></svg> {html.escape(name)}'
        f" <span class=num>{totals.get(name, 0):,.0f}</span></li>"
        for n, name in enumerate(names)
    ]
    return f'<ul class="legend">{"".join(items)}</ul>'
