"""The per-process timer thread that serves running jobs (phase1.engine.timer)."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest
from support import count_thread_starts

from phase1.engine.timer import Timer


def wait_for(predicate: object, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_calls_run_once_or_every_interval_until_cancelled() -> None:
    timer = Timer()
    seen: list[str] = []
    timer.call_later(0.05, lambda: seen.append("once"))
    later = timer.call_later(0.05, lambda: seen.append("cancelled"))
    later.cancel()
    beats = timer.call_every(0.03, lambda: seen.append("beat"))
    assert wait_for(lambda: seen.count("beat") >= 4)
    beats.cancel()
    count = seen.count("beat")
    time.sleep(0.15)
    assert seen.count("once") == 1 and "cancelled" not in seen
    assert seen.count("beat") <= count + 1  # one already begun may finish
    assert timer.pending() == 0


def test_an_earlier_call_added_later_is_not_kept_waiting() -> None:
    timer = Timer()
    seen: list[float] = []
    timer.call_later(5.0, lambda: None)
    added = time.monotonic()
    timer.call_later(0.02, lambda: seen.append(time.monotonic() - added))
    assert wait_for(lambda: seen)
    assert seen[0] < 1.0


def test_one_thread_serves_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the timer: no thread started per job (it cost milliseconds a job)."""
    starts = count_thread_starts(monkeypatch)
    timer = Timer()
    done = threading.Semaphore(0)
    for _ in range(50):
        timer.call_every(1.0, lambda: None).cancel()
        timer.call_later(0.0, done.release)
    assert all(done.acquire(timeout=2) for _ in range(50))
    assert starts == ["phase1-timer"]


def test_a_failing_call_is_logged_and_the_timer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timer = Timer()
    seen: list[str] = []

    def broken() -> None:
        raise RuntimeError("Redis is down")

    with caplog.at_level(logging.ERROR, logger="phase1.engine.timer"):
        timer.call_later(0.0, broken)
        timer.call_later(0.02, lambda: seen.append("after"))
        assert wait_for(lambda: seen)
    assert "a scheduled callback of a job failed" in caplog.text
    assert "Redis is down" in caplog.text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_thread_of_its_own() -> None:
    """A forking worker's horse runs its job's heartbeats on its own timer thread."""
    timer = Timer()
    timer.call_every(0.02, lambda: None)  # the parent's thread is running
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread did not come along
        ok = threading.Event()
        timer.call_later(0.01, ok.set)
        os.write(write, b"1" if ok.wait(2) else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
