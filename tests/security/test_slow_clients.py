"""Slow and idle clients cannot deny service: the real `phase1 serve` keeps answering.

An attacker holds hundreds of connections (four times waitress's default limit of 100): some
send their headers a byte a second, some their body, some sit idle after a request. The
server closes each in its bound, the attacker opens new ones to keep the count, and a normal
client is answered within 1 s throughout.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest
from http_support import Api, start_server
from support import Processes

from phase1.http.server import ARRIVAL_TIMEOUT, IDLE_TIMEOUT
from phase1.settings import Settings

HEADER_DRIPPERS = 200
BODY_DRIPPERS = 100
IDLE = 100
HELD = HEADER_DRIPPERS + BODY_DRIPPERS + IDLE
BOUND = 1.0  # seconds: the normal client's answer, every time (the bound)
SLACK = 4.0  # seconds past a server bound before a connection must be closed (a busy machine)

HEADER_START = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
BODY_START = (
    b"PATCH /api/marketplace/analysis/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\n"
    b"Host: x\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
)
IDLE_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Held:
    sock: socket.socket
    kind: str  # "header", "body" or "idle"
    opened: float
    idle_since: float | None = None  # an idle one: when its answer was read


@dataclass
class Attacker:
    """One thread holding the slow and idle connections, reopening those the server closes."""

    port: int
    held: dict[int, Held] = field(default_factory=dict)
    closed_after: dict[str, list[float]] = field(default_factory=dict)
    most_open: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def open(self, kind: str) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setblocking(False)
        first = {"header": HEADER_START, "body": BODY_START, "idle": IDLE_REQUEST}[kind]
        sock.sendall(first)
        self.held[sock.fileno()] = Held(sock, kind, time.monotonic())
        self.selector.register(sock, selectors.EVENT_READ)

    def start(self) -> None:
        for kind, count in (("header", HEADER_DRIPPERS), ("body", BODY_DRIPPERS), ("idle", IDLE)):
            for _ in range(count):
                self.open(kind)
        self.most_open = len(self.held)
        self.thread.start()

    def _run(self) -> None:
        next_drip = time.monotonic() + 1
        try:
            while not self.stop.is_set():
                for key, _ in self.selector.select(timeout=0.1):
                    self._readable(self.held[key.fd])
                if time.monotonic() >= next_drip:
                    next_drip += 1
                    self._drip()
                self.most_open = max(self.most_open, len(self.held))
        except Exception as exc:  # reported by the test, not lost in a thread
            self.errors.append(repr(exc))

    def _readable(self, held: Held) -> None:
        try:
            data = held.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data and held.kind == "idle" and held.idle_since is None:
            held.idle_since = time.monotonic()  # the answer came: idle from now on
            return
        if data:
            return
        since = held.idle_since if held.kind == "idle" else held.opened
        self.closed_after.setdefault(held.kind, []).append(time.monotonic() - (since or 0))
        self._forget(held)
        self.open(held.kind)  # keep the count up, as an attacker would

    def _drip(self) -> None:
        for held in list(self.held.values()):
            if held.kind == "idle":
                continue
            try:
                held.sock.send(b"a")
            except BlockingIOError:
                pass
            except OSError:  # closed by the server: _readable sees it too
                pass

    def _forget(self, held: Held) -> None:
        self.selector.unregister(held.sock)
        self.held.pop(held.sock.fileno(), None)
        held.sock.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for held in list(self.held.values()):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(held.sock)
            held.sock.close()
        self.held.clear()
        self.selector.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_slow_and_idle_clients_do_not_stop_a_normal_client(
    processes: Processes, settings: Settings
) -> None:
    api = start_server(processes, settings)
    attacker = Attacker(api.port)
    latencies: list[float] = []
    try:
        attacker.start()
        # Long enough for every kind to be closed and reopened at least once.
        until = time.monotonic() + max(ARRIVAL_TIMEOUT, IDLE_TIMEOUT) + SLACK + 2
        while time.monotonic() < until:
            latencies.append(normal_request(api))
            time.sleep(0.1)  # a client's pace, not a synchronisation
        assert not attacker.errors, attacker.errors
        held_at_end = len(attacker.held)
    finally:
        attacker.close()

    worst = max(latencies)
    print(
        f"\nheld {attacker.most_open} connections ({held_at_end} at the end); "
        f"{len(latencies)} normal requests, worst {worst * 1000:.0f} ms; closed after "
        + ", ".join(
            f"{kind} {min(times):.1f}-{max(times):.1f} s ({len(times)})"
            for kind, times in sorted(attacker.closed_after.items())
        )
    )
    assert attacker.most_open >= HELD
    assert worst < BOUND, sorted(latencies)[-5:]
    # Each kind of connection was closed by the server, within its bound.
    for kind, bound in (
        ("header", ARRIVAL_TIMEOUT),
        ("body", ARRIVAL_TIMEOUT),
        ("idle", IDLE_TIMEOUT),
    ):
        times = attacker.closed_after.get(kind, [])
        assert times, f"no {kind} connection was closed by the server"
        assert max(times) < bound + SLACK, (kind, max(times))


def normal_request(api: Api) -> float:
    """One GET /healthz on a new connection; its latency (a failure counts as the timeout)."""
    started = time.monotonic()
    try:
        answer = api.request("GET", "/healthz", timeout=5)
    except OSError:
        return time.monotonic() - started
    assert answer.status == 200, answer.body
    return answer.elapsed
