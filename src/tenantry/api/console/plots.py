"""Plots as inline SVG made on the server: no script, no build step, nothing fetched from elsewhere.

A bar chart of one series over time (a tool's calls or units per hour), a horizontal bar chart of
counts by name (refusals by reason), and a meter (a quota window's used/limit). Every bar carries a
`<title>` (what a pointer shows, and what a screen reader or a test reads), and every chart its total
in `data-total`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Final

from tenantry.api.console.html import esc

WIDTH: Final = 520
HEIGHT: Final = 150
_LEFT, _BOTTOM, _TOP = 40, 20, 8
_COLOURS: Final = {"calls": "#2457c5", "units": "#7a5af8", "refusals": "#b42318"}


# The same period starts label the bars of every chart of a page (and of the next page).
_label = functools.lru_cache(maxsize=4096)(esc)


def _nice_max(value: int) -> int:
    """The axis' top: the smallest of 1, 2, 5 x 10^n at or above `value`."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if step * top >= value:
                return step * top
        top *= 10


def series_chart(name: str, measure: str, points: Sequence[tuple[str, int]], *, unit: str) -> str:
    """Bars of `points` ((period start, count), oldest first): `measure` of `name` per `unit`."""
    total = sum(count for _, count in points)
    top = _nice_max(max((count for _, count in points), default=0) or 1)
    plot_w, plot_h = WIDTH - _LEFT - 4, HEIGHT - _BOTTOM - _TOP
    slot = plot_w / max(len(points), 1)
    colour = _COLOURS.get(measure, "#2457c5")
    # A 7-day hourly page draws thousands of bars: what every bar shares is made once.
    one, many, width, floor = esc(measure.removesuffix("s")), esc(measure), f"{max(slot - 1, 1):.1f}", _TOP + plot_h
    bars = []
    for index, (start, count) in enumerate(points):
        if not count:
            continue
        height = max(plot_h * count / top, 1.0)
        bars.append(
            f'<rect x="{_LEFT + index * slot:.1f}" y="{floor - height:.1f}" width="{width}" height="{height:.1f}" '
            f'fill="{colour}"><title>{_label(start)}: {count} {one if count == 1 else many}</title></rect>'
        )
    first = points[0][0][:16].replace("T", " ") if points else ""
    last = points[-1][0][:16].replace("T", " ") if points else ""
    axis = (
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{WIDTH - 4}" y2="{_TOP + plot_h}" stroke="#98a2b3"/>'
        f'<text x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end">{top}</text>'
        f'<text x="{_LEFT - 4}" y="{_TOP + plot_h}" text-anchor="end">0</text>'
        f'<text x="{_LEFT}" y="{HEIGHT - 4}">{esc(first)}</text>'
        f'<text x="{WIDTH - 4}" y="{HEIGHT - 4}" text-anchor="end">{esc(last)}</text>'
    )
    label = f"{measure} per {unit} of {name}: {total} in all"
    return (
        f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{esc(label)}" '
        f'data-name="{esc(name)}" data-measure="{esc(measure)}" data-total="{total}">'
        f"<title>{esc(label)}</title>{axis}{''.join(bars)}</svg>"
    )


def counts_chart(title: str, counts: Mapping[str, int], *, measure: str = "refusals") -> str:
    """Horizontal bars, one per name, largest first."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    total = sum(counts.values())
    row_h, label_w = 22, 180
    height = max(len(ordered), 1) * row_h + 6
    top = max((count for _, count in ordered), default=0) or 1
    colour = _COLOURS.get(measure, "#2457c5")
    rows = []
    for index, (name, count) in enumerate(ordered):
        y = 3 + index * row_h
        width = max((WIDTH - label_w - 60) * count / top, 1.0)
        rows.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{esc(name[:40])}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row_h - 6}" fill="{colour}">'
            f"<title>{esc(name)}: {count} {esc(measure)}</title></rect>"
            f'<text x="{label_w + width + 4:.1f}" y="{y + 14}">{count}</text>'
        )
    if not rows:
        return f'<p class="muted" data-measure="{esc(measure)}" data-total="0">No {esc(measure)} in this range.</p>'
    return (
        f'<svg class="plot" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{esc(title)}: {total}" '
        f'data-measure="{esc(measure)}" data-total="{total}"><title>{esc(title)}: {total}</title>{"".join(rows)}</svg>'
    )


def meter(used: int | None, limit: int | None) -> str:
    """A quota's use as a bar (no limit: the count alone)."""
    if limit is None:
        return f'{esc(used if used is not None else "-")} <span class="muted">(no limit)</span>'
    shown = used or 0
    width = 200
    filled = min(width * shown / limit, width) if limit else width
    colour = "#b42318" if shown >= limit else "#067647"
    return (
        f'<svg class="meter" viewBox="0 0 {width} 14" role="img" aria-label="{shown} of {limit}">'
        f'<rect x="0" y="0" width="{width}" height="14" fill="#eaecf0"/>'
        f'<rect x="0" y="0" width="{filled:.1f}" height="14" fill="{colour}"/>'
        f"<title>{shown} of {limit}</title></svg> {shown} / {limit}"
    )
