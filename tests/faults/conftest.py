"""Fixtures of the fault suite: Redis servers of its own, and the recovery table it prints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from faults.faultkit import OwnRedis

RECOVERIES: list[tuple[str, str, str, str]] = []


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., OwnRedis]]:
    """Start redis-servers of the test's own (`own_redis(aof=True)`); all killed afterwards."""
    started: list[OwnRedis] = []

    def start(**options: Any) -> OwnRedis:
        server = OwnRedis(tmp_path, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def record() -> Callable[[str, str, str, float | None], None]:
    """Note a scenario for the table printed at the end: what was injected, the end state
    seen, and how long recovery took."""

    def add(scenario: str, injected: str, end_state: str, seconds: float | None) -> None:
        shown = "-" if seconds is None else f"{seconds:.1f} s"
        RECOVERIES.append((scenario, injected, end_state, shown))

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RECOVERIES:
        return
    terminalreporter.section("fault scenarios")
    terminalreporter.write_line("| scenario | injected | end state | recovery |")
    terminalreporter.write_line("|---|---|---|---|")
    for row in RECOVERIES:
        terminalreporter.write_line("| " + " | ".join(row) + " |")
