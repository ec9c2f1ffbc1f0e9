"""The WSGI server: waitress, bounded so that slow or idle clients cannot deny service.

waitress reads requests in one event loop and closes a connection idle for `channel_timeout`
seconds, but a request that drips in a byte at a time counts as activity and is never closed:
a hundred of them filled its connection limit and nobody was answered. Its periodic
maintenance is extended here to also close a connection whose request (headers and body) has
not fully arrived within ARRIVAL_TIMEOUT seconds, and the connection limit is raised well past
what slow clients can hold within that time. waitress's own error answers (bad framing, a
header or body too large, an unsupported transfer coding) are JSON and 4xx, like the app's.
"""

from __future__ import annotations

import logging
import resource
from typing import Any

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask

from phase1.http.errors import STATUS_CODES, error_body

log = logging.getLogger(__name__)

# Seconds a request has to arrive whole, headers and body (the body is 1 MiB at most).
ARRIVAL_TIMEOUT = 5
# Seconds a keep-alive connection may wait idle between requests.
IDLE_TIMEOUT = 10
# Open connections at most; waitress stops accepting (new clients wait in the backlog) above.
CONNECTION_LIMIT = 1000
# How often (seconds) waitress's maintenance looks for connections to close.
CLEANUP_INTERVAL = 1
# waitress buffers a whole request before the app sees it; it refuses larger bodies itself
# (JSON 413, see JsonErrorTask). The app refuses bodies from 64 KiB up.
MAX_REQUEST_BODY = 1024 * 1024
MAX_REQUEST_HEADERS = 64 * 1024
# File descriptors kept for everything but client connections (Redis, PostgreSQL, logs).
SPARE_FDS = 64

# waitress's statuses that are not the client's fault as such: a transfer coding waitress does
# not implement is a request this server refuses (400), not a failure of the server (501).
CLIENT_STATUS = {501: 400}


class JsonErrorTask(ErrorTask):  # type: ignore[misc]  # waitress ships no type hints
    """waitress's own error answer, as the app's JSON error body, 4xx for a client's fault."""

    def execute(self) -> None:
        error = self.request.error
        status = CLIENT_STATUS.get(int(error.code), int(error.code))
        reason = "Bad Request" if status != error.code else error.reason
        detail = " ".join(str(error.body).split())[:200]
        body = error_body(
            STATUS_CODES.get(status, f"http_{status}"),
            f"{reason.lower()}: {detail}" if detail else reason.lower(),
        )
        self.status = f"{status} {reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class Parser(HTTPRequestParser):  # type: ignore[misc]
    """waitress's request parser, refusing the framings that two parsers read apart.

    With both Content-Length and Transfer-Encoding, waitress reads the chunks while a proxy in
    front may read the length (request smuggling); HTTP/1.0 has no Transfer-Encoding, and
    waitress would read the length where a proxy may read the chunks. Either is a 400."""

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            raise ParsingError("Content-Length and Transfer-Encoding together are ambiguous")
        if self.version == "1.0" and "TRANSFER_ENCODING" in self.headers:
            raise ParsingError("Transfer-Encoding is not HTTP/1.0")


class Channel(HTTPChannel):  # type: ignore[misc]
    """A client connection with the stricter parser, whose errors JsonErrorTask answers."""

    parser_class = Parser
    error_task_class = JsonErrorTask


class BoundedServer(TcpWSGIServer):  # type: ignore[misc]
    """waitress's TCP server, whose maintenance also closes requests that arrive too slowly."""

    channel_class = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arrival_timeout: float = kwargs.pop("arrival_timeout", ARRIVAL_TIMEOUT)
        # Per connection: the request it is receiving and when it was first seen.
        self._arriving: dict[int, tuple[Any, float]] = {}
        self.siblings: list[BoundedServer] = []  # listeners on the host's other addresses
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        for sibling in self.siblings:
            sibling.close()
        super().close()

    def maintenance(self, now: float) -> None:
        """Close idle connections (waitress), and those whose request is still arriving after
        `arrival_timeout` seconds (first seen up to CLEANUP_INTERVAL after it began)."""
        super().maintenance(now)
        arriving: dict[int, tuple[Any, float]] = {}
        for fileno, channel in list(self.active_channels.items()):
            request = channel.request
            if request is None or channel.will_close:
                continue
            seen = self._arriving.get(fileno)
            if seen is None or seen[0] is not request:
                arriving[fileno] = (request, now)
            elif now - seen[1] >= self.arrival_timeout:
                channel.will_close = True
                log.info("closed a connection whose request took over %ss", self.arrival_timeout)
            else:
                arriving[fileno] = seen
        self._arriving = arriving


def connection_limit() -> int:
    """CONNECTION_LIMIT, within this process's file descriptors (raised to fit if allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTION_LIMIT + SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return CONNECTION_LIMIT
    return max(16, min(CONNECTION_LIMIT, soft - SPARE_FDS))


def create_server(app: Any, *, host: str, port: int, threads: int) -> BoundedServer:
    """The server for `app` on host:port (not yet running: call `run()`)."""
    from waitress.adjustments import Adjustments
    from waitress.task import ThreadedTaskDispatcher

    adj = Adjustments(
        host=host,
        port=port,
        threads=threads,
        ident="phase1",
        max_request_body_size=MAX_REQUEST_BODY,
        max_request_header_size=MAX_REQUEST_HEADERS,
        channel_timeout=IDLE_TIMEOUT,
        cleanup_interval=CLEANUP_INTERVAL,
        connection_limit=connection_limit(),
        # poll(), not select(): select() cannot watch descriptors above 1023.
        asyncore_use_poll=True,
        expose_tracebacks=False,
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(threads)
    shared: dict[int, Any] = {}  # one event loop (the first server's run()) serves them all
    servers = [
        BoundedServer(app, shared, True, None, dispatcher=dispatcher, adj=adj, sockinfo=info)
        for info in adj.listen  # a host name may have several addresses (localhost)
    ]
    first = servers[0]
    first.siblings = servers[1:]
    return first
