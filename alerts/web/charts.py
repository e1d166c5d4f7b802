"""Server-rendered SVG charts for the operator page (no front-end build, no JavaScript)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from html import escape


def minute_series(timeline: Mapping[str, Mapping[str, int]], end: datetime, hours: int, key: str) -> list[int]:
    """One value per minute, oldest first, zero where nothing happened."""
    start = end.replace(second=0, microsecond=0) - timedelta(hours=hours) + timedelta(minutes=1)
    return [
        int(timeline.get((start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M"), {}).get(key, 0))
        for i in range(hours * 60)
    ]


def line_chart(
    series: Sequence[tuple[str, str, Sequence[int]]], title: str, width: int = 720, height: int = 180
) -> str:
    """A polyline per (label, colour, values) series sharing one y axis; accessible title and summary."""
    pad_left, pad_bottom, pad_top = 44, 22, 10
    plot_w, plot_h = width - pad_left - 8, height - pad_bottom - pad_top
    peak = max([max(values, default=0) for _, _, values in series] + [1])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{pad_left}" y1="{pad_top + plot_h}" x2="{width - 8}" y2="{pad_top + plot_h}" stroke="#9aa5b1"/>',
        f'<text x="{pad_left - 6}" y="{pad_top + 8}" text-anchor="end" font-size="11" fill="#3e4c59">{peak}</text>',
        f'<text x="{pad_left - 6}" y="{pad_top + plot_h}" text-anchor="end" font-size="11" fill="#3e4c59">0</text>',
        f'<text x="{pad_left}" y="{height - 4}" font-size="11" fill="#3e4c59">24 h ago</text>',
        f'<text x="{width - 8}" y="{height - 4}" text-anchor="end" font-size="11" fill="#3e4c59">now</text>',
    ]
    for index, (label, colour, values) in enumerate(series):
        count = max(len(values) - 1, 1)
        points = " ".join(
            f"{pad_left + plot_w * i / count:.1f},{pad_top + plot_h - plot_h * v / peak:.1f}"
            for i, v in enumerate(values)
        )
        parts.append(f'<polyline fill="none" stroke="{escape(colour)}" stroke-width="1.5" points="{points}"/>')
        parts.append(
            f'<text x="{pad_left + 8 + index * 150}" y="{pad_top + 12}" font-size="12" fill="{escape(colour)}">'
            f"{escape(label)}: {sum(values)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
