"""The functions the benchmark's jobs run."""

from __future__ import annotations


def noop() -> None:
    """Does nothing: what is left of a job's time is the worker's own overhead."""
