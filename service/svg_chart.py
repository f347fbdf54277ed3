"""Charts as inline SVG, drawn on the server: no script, no external asset, every label escaped.

Two shapes: :func:`stacked_bars` (a time axis, one stack of series per bucket) and :func:`hbars`
(one bar per label). Each bar carries a ``<title>`` (the browser shows it on hover) and the
``<svg>`` says how many bars it drew (``data-bars``), so an empty chart is plain to see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

TEXT = "#bdc1c6"
GRID = "#2c2f33"
COLORS = {
    "processed": "#81c995", "ignored": "#9aa0a6", "unparseable": "#fdd663", "failed": "#f28b82",
    "Linked": "#81c995", "PendingAuth": "#8ab4f8", "Unlinked": "#fdd663",
    "Deauthorized": "#f28b82", "Deleted": "#9aa0a6", "rejected": "#f28b82",
    "superseded": "#fdd663", "pending": "#8ab4f8", "running": "#c58af9", "dead": "#f28b82",
    # the job backlog by how long due: from calm to alarming
    "not yet due": "#8ab4f8", "due < 1 min": "#81c995", "1-5 min": "#fdd663",
    "5-15 min": "#fcad70", "15-60 min": "#f28b82", "over 1 h": "#f28b82",
}
_PALETTE = ("#8ab4f8", "#fdd663", "#f28b82", "#81c995", "#c58af9", "#78d9ec", "#fcad70")


def color(name: str, index: int = 0) -> str:
    return COLORS.get(name, _PALETTE[index % len(_PALETTE)])


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at least ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _svg(label: str, width: int, height: int, bars: int, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{escape(label)}" data-bars="{bars}" '
            f'font-family="system-ui,sans-serif" font-size="11">'
            f"<title>{escape(label)}</title>{body}</svg>")


def _legend(series: Sequence[Series], y: int, totals: bool) -> str:
    parts, x = [], 44
    for index, s in enumerate(series):
        text = f"{s.name} {_number(sum(s.values))}" if totals else s.name
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" '
                     f'fill="{color(s.name, index)}"/><text x="{x + 14}" y="{y}" '
                     f'fill="{TEXT}">{escape(text)}</text>')
        x += 24 + 7 * len(text)
    return "".join(parts)


def stacked_bars(*, label: str, ticks: Sequence[str], series: Sequence[Series],
                 unit: str = "", width: int = 640, height: int = 220) -> str:
    """One stacked bar per bucket; ``ticks[i]`` labels bucket i on the time axis ('' for
    none). Series values are per bucket, in the same order."""
    left, right, top, bottom = 44, 8, 22, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(ticks)
    stacks = [sum(s.values[i] for s in series) for i in range(n)]
    ceiling = nice_ceiling(max(stacks, default=0))
    parts = []
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h - fraction * plot_h
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{GRID}"/><text x="{left - 4}" y="{y + 4:.1f}" fill="{TEXT}" '
                     f'text-anchor="end">{escape(_number(ceiling * fraction))}</text>')
    if unit:
        parts.append(f'<text x="4" y="11" fill="{TEXT}">{escape(unit)}</text>')
    step = plot_w / max(n, 1)
    bar_w = max(1.0, step * 0.8)
    drawn = 0
    for i in range(n):
        x = left + i * step + (step - bar_w) / 2
        base = float(top + plot_h)
        for index, s in enumerate(series):
            value = s.values[i]
            if value <= 0:
                continue
            h = value / ceiling * plot_h
            base -= h
            drawn += 1
            tip = f"{ticks[i] or ''} {s.name}: {_number(value)}".strip()
            parts.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" '
                         f'height="{max(h, 0.5):.1f}" fill="{color(s.name, index)}">'
                         f"<title>{escape(tip)}</title></rect>")
        if ticks[i]:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" fill="{TEXT}" '
                         f'text-anchor="middle">{escape(ticks[i])}</text>')
    parts.append(_legend(series, height - 8, totals=True))
    return _svg(label, width, height, drawn, "".join(parts))


def hbars(*, label: str, rows: Sequence[tuple[str, float]], width: int = 640,
          row_height: int = 22) -> str:
    """One horizontal bar per (label, value)."""
    left, right = 150, 60
    height = max(1, len(rows)) * row_height + 8
    ceiling = nice_ceiling(max((v for _, v in rows), default=0))
    parts, drawn = [], 0
    for i, (name, value) in enumerate(rows):
        y = 4 + i * row_height
        w = value / ceiling * (width - left - right)
        parts.append(f'<text x="{left - 6}" y="{y + 14}" fill="{TEXT}" text-anchor="end">'
                     f"{escape(name)}</text>")
        if value > 0:
            drawn += 1
            parts.append(f'<rect x="{left}" y="{y + 3}" width="{max(w, 1):.1f}" '
                         f'height="{row_height - 8}" fill="{color(name, i)}">'
                         f"<title>{escape(f'{name}: {_number(value)}')}</title></rect>")
        parts.append(f'<text x="{left + max(w, 0) + 6:.1f}" y="{y + 14}" fill="{TEXT}">'
                     f"{escape(_number(value))}</text>")
    return _svg(label, width, height, drawn, "".join(parts))
