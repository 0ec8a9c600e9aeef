"""Small charts drawn server-side as inline SVG (no chart library, no script).

Colours come from the stylesheet through class names, so the charts follow the page theme
and the Content Security Policy needs no inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

#: Upper edges (seconds) of the latency histogram's buckets; the last bucket is open.
LATENCY_EDGES: tuple[float, ...] = (30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


def _axis_step(peak: float, ticks: int) -> float:
    """A round step (1, 2 or 5 times a power of ten) so ``ticks`` steps cover ``peak``."""
    if peak <= 0:
        return 1.0
    raw = peak / ticks
    exponent = math.floor(math.log10(raw))
    for multiple in (1, 2, 5, 10):
        step = multiple * 10.0 ** exponent
        if step >= raw:
            return max(step, 1.0) if float(peak).is_integer() else step
    return 10.0 ** (exponent + 1)


def _label(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def bar_chart(values: Sequence[float], labels: Sequence[str], *, title: str,
              width: int = 640, height: int = 200, label_every: int = 1) -> Markup:
    """A vertical bar chart with a y axis, as an ``<svg>`` element.

    Parameters
    ----------
    values
        Bar heights.
    labels
        One label per bar (shown every ``label_every`` bars).
    title
        Accessible title of the chart.
    width, height
        Size of the drawing in SVG units (it scales with the page).
    """
    left, right, top, bottom = 40, 8, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    step = _axis_step(max(values, default=0), 4)
    peak = step * 4
    n = max(len(values), 1)
    slot = plot_w / n
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for tick in range(5):
        value = step * tick
        y = top + plot_h - plot_h * tick / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{value:g}</text>')
    for index, value in enumerate(values):
        bar_h = plot_h * (value / peak) if peak else 0
        x = left + index * slot + slot * 0.15
        y = top + plot_h - bar_h
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" '
                     f'height="{bar_h:.1f}"><title>{escape(labels[index])}: '
                     f'{value:g}</title></rect>')
        if index % label_every == 0:
            parts.append(f'<text class="axis" x="{x + slot * 0.35:.1f}" y="{height - 8}" '
                         f'text-anchor="middle">{escape(labels[index])}</text>')
    parts.append(f'<line class="baseline" x1="{left}" x2="{width - right}" '
                 f'y1="{top + plot_h}" y2="{top + plot_h}"/></svg>')
    return Markup("".join(parts))


def latency_histogram(values: Sequence[float], *, title: str, width: int = 640,
                      height: int = 200) -> Markup:
    """Counts of ``values`` (seconds) in the :data:`LATENCY_EDGES` buckets, as a bar chart."""
    counts = [0] * (len(LATENCY_EDGES) + 1)
    for value in values:
        index = next((i for i, edge in enumerate(LATENCY_EDGES) if value <= edge),
                     len(LATENCY_EDGES))
        counts[index] += 1
    labels = [f"≤{_label(edge)}" for edge in LATENCY_EDGES] + [f">{_label(LATENCY_EDGES[-1])}"]
    return bar_chart(counts, labels, title=title, width=width, height=height)


def share_bar(items: Sequence[tuple[str, int, str]], *, title: str, width: int = 640,
              height: int = 18) -> Markup:
    """One horizontal bar split by share, e.g. studies by state.

    Parameters
    ----------
    items
        ``(label, count, css class)`` per segment; empty segments are left out.
    """
    total = sum(count for _, count, _ in items)
    parts = [f'<svg class="share" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
             f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    if total == 0:
        parts.append(f'<rect class="empty" x="0" y="0" width="{width}" height="{height}"/>')
    x = 0.0
    for label, count, css in items:
        if count <= 0 or total == 0:
            continue
        segment = width * count / total
        parts.append(f'<rect class="{escape(css)}" x="{x:.2f}" y="0" width="{segment:.2f}" '
                     f'height="{height}"><title>{escape(label)}: {count}</title></rect>')
        x += segment
    parts.append("</svg>")
    return Markup("".join(parts))


__all__ = ["LATENCY_EDGES", "bar_chart", "latency_histogram", "share_bar"]
