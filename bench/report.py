"""Rows of the results table, targets met or missed, and the markdown/JSON output."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One measured figure: phase1 beside plain RQ (and a reference where there is one)."""

    section: str
    measure: str
    unit: str
    phase1: float | None
    rq_worker: float | None = None
    rq_simple: float | None = None
    reference: str = ""
    higher_is_better: bool = True
    target: str = ""
    met: bool | None = None
    distance: str = ""

    def better_than(self, other: float | None) -> float | None:
        """How many times better phase1 is than `other` (above 1: phase1 wins)."""
        if self.phase1 is None or other is None or not self.phase1 or not other:
            return None
        return self.phase1 / other if self.higher_is_better else other / self.phase1


def goal(row: Row, *, at_least: float | None = None, at_most: float | None = None) -> Row:
    """Mark `row` against a target: met, or how far from it."""
    value = row.phase1
    unit = f" {row.unit}" if row.unit else ""
    if at_least is not None:
        row.target = f"≥ {fmt(at_least)}{unit}"
        row.met = value is not None and value >= at_least
        if value and not row.met:
            row.distance = f"×{at_least / value:.1f} short"
    elif at_most is not None:
        row.target = f"≤ {fmt(at_most)}{unit}"
        row.met = value is not None and value <= at_most
        if value and not row.met:
            row.distance = f"×{value / at_most:.1f} over"
    return row


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def markdown(rows: list[Row], notes: list[str], meta: dict[str, Any]) -> str:
    out = [
        f"# phase1 benchmarks ({meta['mode']} run, {meta['at']})",
        "",
        f"Machine: {meta['machine']}. Every figure is the median of {meta['reps']} "
        'repetitions, phase1 and plain RQ alternating in one run. "phase1 ×" columns: how '
        "many times better phase1 is (above 1: phase1 wins).",
        "",
        "| section | measure | unit | phase1 | RQ Worker | RQ SimpleWorker | phase1 × Worker "
        "| phase1 × Simple | reference | target | status |",
        "|---|---|---|--:|--:|--:|--:|--:|---|---|---|",
    ]
    for r in rows:
        status = "" if r.met is None else ("met" if r.met else f"missed ({r.distance})")
        out.append(
            f"| {r.section} | {r.measure} | {r.unit} | {fmt(r.phase1)} | {fmt(r.rq_worker)} "
            f"| {fmt(r.rq_simple)} | {_times(r.better_than(r.rq_worker))} "
            f"| {_times(r.better_than(r.rq_simple))} | {r.reference} | {r.target} | {status} |"
        )
    if notes:
        out += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"


def write(
    rows: list[Row],
    sections: dict[str, Any],
    notes: list[str],
    *,
    quick: bool,
    reps: int,
    outdir: Path,
) -> tuple[str, dict[str, Any]]:
    meta = {
        "mode": "quick" if quick else "full",
        "reps": reps,
        "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}",
    }
    document = {
        "meta": meta,
        "rows": [asdict(r) for r in rows],
        "sections": sections,
        "notes": notes,
    }
    text = markdown(rows, notes, meta)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "latest.md").write_text(text)
    (outdir / "latest.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    return text, document


def _cores() -> int:
    import os

    return os.cpu_count() or 0
