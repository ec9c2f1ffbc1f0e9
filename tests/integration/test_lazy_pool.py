"""The PostgreSQL pool opens at first use, once, whichever threads race for it (real PostgreSQL)."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from phase1.context import build
from phase1.errors import UnavailableError
from phase1.settings import Settings


def test_threads_racing_to_the_first_use_share_one_pool(settings: Settings) -> None:
    ctx = build(settings)
    lazy: Any = ctx.pool
    assert not lazy.opened
    start = threading.Barrier(8)
    seen: list[int] = []

    def first_use() -> None:
        start.wait()
        with ctx.read() as conn:
            assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        seen.append(id(lazy.get()))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    try:
        assert len(seen) == 8 and len(set(seen)) == 1
        assert lazy.opened and lazy.get_stats()["pool_size"] >= 1
    finally:
        ctx.close()
    with pytest.raises(UnavailableError, match="closed"), ctx.read():
        pass


def test_closing_an_unused_pool_opens_nothing(settings: Settings) -> None:
    ctx = build(settings)
    lazy: Any = ctx.pool
    ctx.close()
    assert not lazy.opened
    with pytest.raises(UnavailableError, match="closed"), ctx.transaction():
        pass
    assert not lazy.opened


def test_a_server_opens_its_pool_at_once(settings: Settings) -> None:
    ctx = build(settings, http=True)
    try:
        lazy: Any = ctx.pool
        assert lazy.opened
        lazy.wait(timeout=5)  # its first connection is made before any request needs it
    finally:
        ctx.close()


def test_a_copy_of_an_unopened_pool_opens_nothing_by_itself(settings: Settings) -> None:
    ctx = build(settings)
    try:
        copied: Any = copy.copy(ctx.pool)
        assert not copied.opened and not ctx.pool.opened  # type: ignore[attr-defined]
    finally:
        ctx.close()
