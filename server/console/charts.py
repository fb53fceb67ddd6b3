"""Plots as inline SVG, drawn on the server: no chart library, no script, and the page's
Content-Security-Policy needs no exception (presentation attributes only, no ``style``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
Series = dict[str, Sequence[tuple[float, float | None]]]


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    return [start + i * step for i in range(count + 2) if start + i * step <= high + step * 0.999]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}"


def line_chart(
    series: Series,
    title: str,
    y_label: str = "",
    limits: dict[str, float] | None = None,
    chart_id: str = "",
    width: int = 520,
    height: int = 240,
    empty: str = "no data yet",
) -> Markup:
    """A line chart of ``series`` (label -> (round, value) points; None values are gaps) with
    dashed horizontal ``limits`` (label -> value, e.g. privacy budgets). Without a point: the
    ``empty`` line in its place."""
    left, right, top, bottom = 56, 130, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [(x, y) for pts in series.values() for x, y in pts if y is not None and math.isfinite(y)]
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}"'
        + (f' id="{escape(chart_id)}"' if chart_id else "")
        + ">"
        + f'<text x="{left}" y="16" font-size="13" font-weight="bold" fill="#222">{escape(title)}</text>'
    )
    if not points:
        return Markup(
            head
            + f'<text x="{left}" y="{top + plot_h / 2}" font-size="12" fill="#888">{escape(empty)}</text></svg>'
        )
    xs = [x for x, _ in points]
    ys = [y for _, y in points] + list((limits or {}).values())
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    y_ticks = _ticks(min(ys) if min(ys) < 0 else 0.0, max(ys))
    y0, y1 = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [head]
    for t in y_ticks:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e5e5e5"/>'
            f'<text x="{left - 6}" y="{py(t) + 4:.1f}" font-size="11" text-anchor="end" fill="#555">{_label(t)}</text>'
        )
    rounds = sorted(set(int(x) for x in xs))
    step = max(1, math.ceil(len(rounds) / 10))
    for r in rounds[::step]:
        parts.append(
            f'<text x="{px(r):.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle" fill="#555">{r}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 4}" font-size="11" text-anchor="middle" fill="#555">round</text>'
        f'<text x="12" y="{top + plot_h / 2}" font-size="11" text-anchor="middle" fill="#555" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">{escape(y_label)}</text>'
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>'
    )
    legend_y = top + 4
    for i, (label, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        segments: list[list[tuple[float, float]]] = [[]]
        for x, y in sorted(pts):
            if y is None or not math.isfinite(y):
                segments.append([])
            else:
                segments[-1].append((x, y))
        for seg in segments:
            if len(seg) > 1:
                path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in seg)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            for x, y in seg:
                parts.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}">'
                    f"<title>{escape(label)}, round {x:g}: {y:.4g}</title></circle>"
                )
        parts.append(
            f'<rect x="{left + plot_w + 10}" y="{legend_y}" width="10" height="10" fill="{color}"/>'
            f'<text x="{left + plot_w + 24}" y="{legend_y + 9}" font-size="11" fill="#222">{escape(label)}</text>'
        )
        legend_y += 16
        limit = (limits or {}).get(label)
        if limit is not None:
            parts.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{py(limit):.1f}" y2="{py(limit):.1f}" '
                f'stroke="{color}" stroke-dasharray="5 4"><title>{escape(label)} budget {limit:g}</title></line>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
