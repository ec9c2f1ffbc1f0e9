"""The overview's charts, drawn on the server as SVG: nothing to load, nothing to run.

Only presentation attributes (no `style`), so the pages' Content-Security-Policy holds; each
chart has a title and a description for screen readers, and scales to the page's width.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from phase1.http.console.queries import Minute

WIDTH, HEIGHT = 600, 170
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 40


def _nice_max(value: float) -> float:
    """The axis's top: the smallest of 1, 2, 5 × 10^n at or above `value`."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale


def _fmt(value: float) -> str:
    return f"{value:g}" if value >= 1 or value == 0 else f"{value:.2g}"


def _line(points: Sequence[tuple[float, float | None]], colour: str, dash: str = "") -> str:
    """A polyline per run of known values (a minute with no value breaks the line)."""
    runs: list[list[str]] = [[]]
    for x, y in points:
        if y is None:
            runs.append([])
        else:
            runs[-1].append(f"{x:.1f},{y:.1f}")
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    out = []
    for run in runs:
        if len(run) == 1:
            cx, cy = run[0].split(",")
            out.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
        elif run:
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dashed} '
                f'points="{" ".join(run)}"/>'
            )
    return "".join(out)


def _frame(top: float, unit: str, minutes: Sequence[Minute]) -> list[str]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = []
    for frac in (0, 0.5, 1):
        y = TOP + plot_h * (1 - frac)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#c8ccd2" stroke-width="1"/>'
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#444">{escape(_fmt(top * frac))}{unit}</text>'
        )
    if minutes:
        for index in (0, 30, len(minutes) - 1):
            x = LEFT + plot_w * index / max(1, len(minutes) - 1)
            label = minutes[index].at.strftime("%H:%M")
            anchor = "start" if index == 0 else "end" if index == len(minutes) - 1 else "middle"
            parts.append(
                f'<text x="{x:.1f}" y="{TOP + plot_h + 14}" text-anchor="{anchor}" '
                f'font-size="11" fill="#444">{label}</text>'
            )
    return parts


def _legend(items: Sequence[tuple[str, str]]) -> str:
    x, out = LEFT, []
    for label, colour in items:
        out.append(
            f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{HEIGHT - 5}" font-size="11" fill="#222">'
            f"{escape(label)}</text>"
        )
        x += 24 + 7 * len(label)
    return "".join(out)


def _svg(ident: str, title: str, desc: str, body: list[str]) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{ident}-t {ident}-d" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(desc)}</desc>'
        + "".join(body)
        + "</svg>"
    )


def _x(index: int, count: int) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * index / max(1, count - 1)


def _y(value: float, top: float) -> float:
    plot_h = HEIGHT - TOP - BOTTOM
    return TOP + plot_h * (1 - value / top)


SERIES = (("completed", "#1a7f37"), ("failed", "#c62828"), ("retried", "#b26a00"))


def outcomes(minutes: Sequence[Minute]) -> str:
    """Jobs completed, failed and retried per minute over the last hour."""
    totals = {name: sum(getattr(m, name) for m in minutes) for name, _ in SERIES}
    top = _nice_max(max([1, *(getattr(m, n) for m in minutes for n, _ in SERIES)]))
    body = _frame(top, "", minutes)
    for name, colour in SERIES:
        points = [(_x(i, len(minutes)), _y(getattr(m, name), top)) for i, m in enumerate(minutes)]
        body.append(_line(points, colour, "4 2" if name == "retried" else ""))
    body.append(_legend([(f"{n} ({totals[n]})", c) for n, c in SERIES]))
    desc = (
        f"In the last hour: {totals['completed']} jobs completed, {totals['failed']} failed "
        f"for good, {totals['retried']} attempts failed and were retried."
    )
    return _svg("outcomes", "Jobs per minute, last hour", desc, body)


def latency(minutes: Sequence[Minute]) -> str:
    """Approve→completed latency per minute (p50 and p95) over the last hour, in seconds."""
    known = [v for m in minutes for v in (m.p50, m.p95) if v is not None]
    top = _nice_max(max([0.001, *known]))
    body = _frame(top, "s", minutes)
    for name, colour in (("p50", "#1f5fbf"), ("p95", "#7b2cbf")):
        points: list[tuple[float, float | None]] = []
        for i, m in enumerate(minutes):
            value = getattr(m, name)
            points.append((_x(i, len(minutes)), None if value is None else _y(value, top)))
        body.append(_line(points, colour, "4 2" if name == "p95" else ""))
    body.append(_legend([("p50", "#1f5fbf"), ("p95", "#7b2cbf")]))
    if known:
        worst = max(m.p95 for m in minutes if m.p95 is not None)
        desc = f"Approve to completed, last hour: the slowest minute's p95 was {worst:.3g} s."
    else:
        desc = "No job completed in the last hour."
    return _svg("latency", "Approve→completed latency, last hour", desc, body)
