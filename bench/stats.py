"""Medians, percentiles, and the phase1/RQ alternation every measurement uses."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0-100), nearest-rank on the sorted values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def alternate(
    kinds: Sequence[str], reps: int, measure: Callable[[str, int], Any]
) -> dict[str, list[Any]]:
    """Run `measure(kind, rep)` for every kind in every repetition, kinds interleaved and
    their order rotated each time, so drift on a shared machine hits all of them alike."""
    results: dict[str, list[Any]] = {kind: [] for kind in kinds}
    for rep in range(reps):
        shift = rep % len(kinds)
        for kind in [*kinds[shift:], *kinds[:shift]]:
            results[kind].append(measure(kind, rep))
    return results


class Sizer:
    """How many jobs to queue for a timed run: enough for `seconds` at the fastest rate seen
    so far for that kind (with room to spare), starting from a first guess."""

    def __init__(self, seconds: float, first_guess: dict[str, int], floor: int = 20) -> None:
        self.seconds = seconds
        self.sizes = dict(first_guess)
        self.floor = floor

    def size(self, kind: str) -> int:
        return self.sizes[kind]

    def saw(self, kind: str, rate: float) -> None:
        wanted = max(self.floor, int(rate * self.seconds * 2.5) + 10)
        self.sizes[kind] = max(wanted, min(self.sizes[kind], wanted * 2))
