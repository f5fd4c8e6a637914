"""Small server-rendered SVG charts for the dashboard: no script, nothing loaded from elsewhere."""
from __future__ import annotations

import math
from datetime import timedelta

from markupsafe import Markup

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 86, 12, 12, 30
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


def _nice_ceiling(value: float, steps=(1, 2, 5, 10)) -> float:
    """A step × a power of ten, at least `value` (an axis maximum a person can read)."""
    if value <= 0:
        return steps[0]
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in steps if step * power >= value)


def seconds_in_words(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _frame(title: str, y_max: float, y_label, start, minutes: int) -> list[str]:
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{title}</title>"]
    for fraction in (0, 0.5, 1):
        y = TOP + PLOT_H - fraction * PLOT_H
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{y_label(fraction * y_max)}</text>")
    for hours_ago in (24, 18, 12, 6, 0):
        minute = minutes - hours_ago * 60
        x = LEFT + minute / minutes * PLOT_W
        at = start + timedelta(minutes=min(minute, minutes - 1))
        anchor = "start" if hours_ago == 24 else "end" if hours_ago == 0 else "middle"
        label = "now" if hours_ago == 0 else at.strftime("%H:%M")
        parts.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP + PLOT_H}" y2="{TOP + PLOT_H + 4}"/>')
        parts.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">{label}</text>')
    return parts


def _bar(css: str, minute: int, minutes: int, value: float, y_max: float, width_share: float = 1.0) -> str:
    per_minute = PLOT_W / minutes
    width = max(per_minute, 3.0) * width_share
    x = LEFT + minute * per_minute + (max(per_minute, 3.0) - width) / 2
    height = max(value / y_max * PLOT_H, 1.5)
    return (f'<rect class="{css}" x="{x:.2f}" y="{TOP + PLOT_H - height:.2f}" '
            f'width="{width:.2f}" height="{height:.2f}"/>')


def traffic_charts(traffic, minutes: int) -> dict:
    """The two charts (events per minute; processing lag) and the figures they summarise."""
    # Even maxima for counts, so the middle grid line is a whole number of events.
    events_max = _nice_ceiling(max([*traffic.received.values(), *traffic.processed.values(), 2]), (2, 4, 10, 20))
    events = _frame("Events received and processed per minute, last 24 hours (UTC)", events_max,
                    lambda v: f"{v:g}", traffic.start, minutes)
    for minute, count in sorted(traffic.received.items()):
        events.append(_bar("received", minute, minutes, count, events_max))
    for minute, count in sorted(traffic.processed.items()):
        events.append(_bar("processed", minute, minutes, count, events_max, width_share=0.5))
    events.append("</svg>")

    lag_max = _nice_ceiling(max([*traffic.lag_max.values(), 0.001]))
    lag = _frame("Processing lag per minute (received to processed), last 24 hours (UTC)", lag_max,
                 seconds_in_words, traffic.start, minutes)
    for minute, seconds in sorted(traffic.lag_max.items()):
        lag.append(_bar("lag-max", minute, minutes, seconds, lag_max))
    for minute, seconds in sorted(traffic.lag_avg.items()):
        lag.append(_bar("lag-avg", minute, minutes, seconds, lag_max, width_share=0.5))
    lag.append("</svg>")

    processed = sum(traffic.processed.values())
    mean_lag = (sum(traffic.lag_avg[m] * traffic.processed[m] for m in traffic.processed) / processed
                if processed else None)
    return {
        "events_svg": Markup("".join(events)),
        "lag_svg": Markup("".join(lag)),
        "received_total": sum(traffic.received.values()),
        "processed_total": processed,
        "mean_lag": seconds_in_words(mean_lag) if mean_lag is not None else "no events processed",
        "max_lag": seconds_in_words(max(traffic.lag_max.values())) if traffic.lag_max else "no events processed",
    }
