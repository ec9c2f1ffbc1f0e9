"""Unit tests need no server: they run on fakeredis and plain objects. A unit test that asks
for a real Redis or PostgreSQL fails here, naming the tier it belongs in."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    pytest.fail("a unit test asked for a real Redis: it belongs in tests/integration")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    pytest.fail("a unit test asked for a real PostgreSQL: it belongs in tests/integration")
