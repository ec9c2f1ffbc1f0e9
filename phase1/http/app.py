"""The Bottle app factory: routes, JSON errors, bearer auth and request metrics on one app."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import bottle

from phase1.context import Phase1, build
from phase1.http import console, errors, openapi, routes
from phase1.http.deadline import GuardedPhase1, Watchdog
from phase1.http.metrics import Metrics
from phase1.settings import Settings
from phase1.telemetry import tracing

StartResponse = Callable[..., Any]
_ROUTE_PARAM = re.compile(r"<(\w+)(?::[^>]*)?>")


class Phase1App(bottle.Bottle):  # type: ignore[misc]  # bottle ships no type hints
    """A Bottle app holding its phase1 context, metrics and OpenAPI document."""

    def __init__(self, ctx: Phase1, *, owns_ctx: bool) -> None:
        super().__init__()
        self.ctx = ctx
        self.owns_ctx = owns_ctx
        self.watchdog = ctx.watchdog if isinstance(ctx, GuardedPhase1) else None
        self.metrics = Metrics(ctx)
        self.openapi_json = openapi.render(ctx.settings)

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not tracing.enabled():
            return self._serve(environ, start_response)
        return self._serve_traced(environ, start_response)

    def _serve_traced(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """Issue 24: the request as an OpenTelemetry server span (HTTP semantic conventions),
        continuing the caller's W3C `traceparent`."""
        method = environ.get("REQUEST_METHOD", "")
        seen: list[str] = []

        def record_status(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen.append(status)
            return start_response(status, headers, exc_info)

        carrier = {
            "traceparent": environ.get("HTTP_TRACEPARENT"),
            "tracestate": environ.get("HTTP_TRACESTATE"),
        }
        attributes = {
            "http.request.method": method,
            "url.path": environ.get("PATH_INFO", ""),
            "url.scheme": environ.get("wsgi.url_scheme", "http"),
            "server.address": environ.get("SERVER_NAME"),
            "server.port": int(environ.get("SERVER_PORT") or 0) or None,
            "client.address": environ.get("REMOTE_ADDR"),
            "user_agent.original": environ.get("HTTP_USER_AGENT"),
        }
        with tracing.span(method, kind="server", attributes=attributes, parent=carrier) as span:
            try:
                return self._serve(environ, record_status)
            finally:
                route = environ.get("bottle.route")
                code = int(seen[0][:3]) if seen else 500
                if span is not None:
                    if route is not None:
                        template = _ROUTE_PARAM.sub(r"{\1}", route.rule)  # <id:path> -> {id}
                        span.update_name(f"{method} {template}")
                        span.set_attribute("http.route", template)
                    span.set_attribute("http.response.status_code", code)
                    if code >= 500:
                        from opentelemetry.trace import Status, StatusCode

                        span.set_attribute("error.type", str(code))
                        span.set_status(Status(StatusCode.ERROR))

    def _serve(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        seen: list[str] = []

        def record_status(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen.append(status)
            return start_response(status, headers, exc_info)

        try:
            if self.watchdog is None:
                return super().wsgi(environ, record_status)  # type: ignore[no-any-return]
            with self.watchdog.request():
                return super().wsgi(environ, record_status)  # type: ignore[no-any-return]
        finally:
            route = environ.get("bottle.route")
            self.metrics.observe(
                environ.get("REQUEST_METHOD", ""),
                route.name or route.rule if route is not None else "unmatched",
                seen[0][:3] if seen else "500",
                time.perf_counter() - started,
            )

    def close(self) -> None:
        super().close()
        if self.owns_ctx:
            self.ctx.close()


def bearer_auth(token: str) -> Callable[[], None]:
    """A before-request hook: `/api/` routes need `Authorization: Bearer <token>`.

    Both sides are hashed before the constant-time comparison, so not even the token's
    length shows in the timing."""
    expected = hashlib.sha256(token.encode()).digest()

    def check() -> None:
        environ = bottle.request.environ
        if not environ.get("PATH_INFO", "").startswith("/api/"):
            return
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        digest = hashlib.sha256(given.strip().encode("utf-8", "replace")).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, expected):
            raise errors.error_response(
                401,
                "unauthorized",
                "this route needs the header Authorization: Bearer <PHASE1_API_TOKEN>",
                {"WWW-Authenticate": 'Bearer realm="phase1"'},
            )

    return check


def create_app(settings: Settings, *, ctx: Phase1 | None = None, threads: int = 8) -> Phase1App:
    """The HTTP app (debug off, JSON errors only); serve it with a WSGI server (waitress).

    `settings` must name Redis and PostgreSQL (resolved); the app builds its own connections
    with the short HTTP timeouts, sized for `threads` concurrent requests and watched by a
    per-request deadline, unless `ctx` is given. Close the app to close what it built.
    """
    own = ctx is None
    if ctx is None:
        watchdog = Watchdog()
        base = build(settings, pool_size=max(2, threads), http=True, check=watchdog.check)
        ctx = GuardedPhase1(
            settings=base.settings, redis=base.redis, pool=base.pool, watchdog=watchdog
        )
        watchdog.start()
    app = Phase1App(ctx, owns_ctx=own)
    app.config["catchall"] = True  # an escaped exception becomes a JSON 500, never a traceback
    app.default_error_handler = errors.bottle_error
    app.uninstall(True)  # Bottle's JSON and template plugins: routes answer encoded JSON
    app.install(errors.catch_errors)
    if settings.api_token is not None:
        app.add_hook("before_request", bearer_auth(settings.api_token.get_secret_value()))
    routes.install(app)
    console.install(app)
    return app
