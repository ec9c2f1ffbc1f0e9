"""The console's routes on the app: sessions and CSRF checked, pages rendered (whole, or
only their live part for the page's poller), actions confirmed and done, errors as pages."""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import bottle

from phase1.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)
from phase1.http.console import actions, queries, render, views
from phase1.http.console.security import (
    FLASH_COOKIE,
    SESSION_COOKIE,
    Guard,
    Session,
    cookie_options,
    safe_next,
)
from phase1.http.errors import service_of

if TYPE_CHECKING:
    from phase1.http.app import Phase1App

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
FRAGMENT_HEADER = "HTTP_X_CONSOLE_FRAGMENT"
READ_ONLY = (
    "the console is read-only: set PHASE1_API_TOKEN and log in, "
    "or set PHASE1_CONSOLE_WRITE=1, to act from it"
)
BAD_CSRF = "refused: this form's CSRF token is missing or wrong; reload the page and try again"


class Visit:
    """One request's session (made on the spot when no login is needed) and its cookies."""

    def __init__(self, guard: Guard, session: Session, new_cookie: str | None) -> None:
        self.guard = guard
        self.session = session
        self.new_cookie = new_cookie
        self.flash = unquote(bottle.request.get_cookie(FLASH_COOKIE) or "")[:500]

    def finish(self, out: bottle.HTTPResponse, *, flash: str | None = None) -> bottle.HTTPResponse:
        secure = bottle.request.urlparts.scheme == "https"
        if self.new_cookie is not None:
            out.set_cookie(SESSION_COOKIE, self.new_cookie, **cookie_options(secure))
        if flash is not None:
            out.set_cookie(FLASH_COOKIE, quote(flash[:500]), **cookie_options(secure, 60))
        elif self.flash:
            out.delete_cookie(FLASH_COOKIE, **cookie_options(secure, 0))
        return out


class Console:
    """The console mounted on one app: its guard, its DLQ grouping cache, its handlers."""

    def __init__(self, app: Phase1App) -> None:
        self.app = app
        self.ctx = app.ctx
        self.guard = Guard(app.ctx.settings)
        self.dlq_groups = views.DlqGroups()
        self.last_hour = queries.LastHour()

    # -- plumbing

    def visit(self) -> Visit | bottle.HTTPResponse:
        """The request's session, or the answer for a visitor who must log in first."""
        session = self.guard.session(bottle.request.get_cookie(SESSION_COOKIE))
        if session is not None:
            return Visit(self.guard, session, None)
        if not self.guard.login_required:
            cookie, session = self.guard.new_cookie()
            return Visit(self.guard, session, cookie)
        if bottle.request.environ.get(FRAGMENT_HEADER) or bottle.request.method != "GET":
            return self.error(401, "log in first: this console needs PHASE1_API_TOKEN")
        target = bottle.request.fullpath
        if bottle.request.query_string:
            target += "?" + bottle.request.query_string
        return bottle.HTTPResponse(
            status=303, Location=render.link("/console/login", next=safe_next(target))
        )

    def layout(self, visit: Visit | None, title: str, active: str, content: str) -> str:
        mode = "read-only" if not self.guard.can_write else "actions allowed"
        return render.template(
            "layout",
            title=title,
            active=active,
            nav=render.NAV if visit is not None else (),
            content=content,
            flash=visit.flash if visit else "",
            csrf=visit.session.csrf if visit else "",
            logout=visit is not None and self.guard.login_required,
            mode=mode if visit is not None else "",
        )

    def error(self, status: int, message: str, visit: Visit | None = None) -> bottle.HTTPResponse:
        body = render.template("error", status=status, message=message)
        if bottle.request.environ.get(FRAGMENT_HEADER):
            return render.response(body, status)
        page = self.layout(visit, f"Error {status}", "", body)
        headers = {"Retry-After": "2"} if status == 503 else {}
        return render.response(page, status, headers)

    def failure(self, exc: Exception, visit: Visit | None) -> bottle.HTTPResponse:
        if isinstance(exc, NotFoundError):
            return self.error(404, str(exc), visit)
        if isinstance(exc, InvalidInputError):
            return self.error(400, str(exc), visit)
        if isinstance(exc, UnavailableError):
            log.warning("console answering 503: %s", exc)
            message = f"{service_of(exc)} is unavailable; this page retries by itself"
            return self.error(503, message, visit)
        if isinstance(exc, ConflictError):
            return self.error(409, str(exc), visit)
        log.error("console page failed", exc_info=exc)
        return self.error(500, "internal error; the details are in the server's log", visit)

    def page(
        self, title: str, active: str, name: str, read: Callable[..., dict[str, Any]]
    ) -> Callable[..., bottle.HTTPResponse]:
        """A GET handler: `read(**route args)` gives the values of `<name>.tpl` (the whole
        page) and `<name>_live.tpl` (the part the poller refreshes)."""

        def handler(**kwargs: Any) -> bottle.HTTPResponse:
            visit = self.visit()
            if isinstance(visit, bottle.HTTPResponse):
                return visit
            try:
                values = read(**kwargs)
            except Exception as exc:
                return visit.finish(self.failure(exc, visit))
            values["csrf"] = visit.session.csrf
            values["can_write"] = self.guard.can_write
            live = render.template(f"{name}_live", **values)
            if bottle.request.environ.get(FRAGMENT_HEADER):
                return visit.finish(render.response(live))
            content = render.template(name, live=live, **values)
            return visit.finish(render.response(self.layout(visit, title, active, content)))

        return handler

    def action(
        self,
        verb: str,
        prepare: Callable[[Any], actions.Plan],
        act: Callable[[Any], actions.Outcome],
    ) -> Callable[[], bottle.HTTPResponse]:
        """A POST handler: session, write permission and CSRF token checked; without
        `confirm=yes` it answers the confirmation page, with it it acts and redirects."""

        def handler() -> bottle.HTTPResponse:
            visit = self.visit()
            if isinstance(visit, bottle.HTTPResponse):
                return visit
            if not self.guard.can_write:
                return visit.finish(self.error(403, READ_ONLY, visit))
            form = _form()
            if not self.guard.csrf_matches(visit.session, form.get("csrf")):
                return visit.finish(self.error(403, BAD_CSRF, visit))
            try:
                if form.get("confirm") != "yes":
                    plan = prepare(form)
                    body = render.template("confirm", verb=verb, plan=plan, csrf=visit.session.csrf,
                                           action=bottle.request.fullpath)  # fmt: skip
                    return visit.finish(render.response(self.layout(visit, verb, "", body)))
                outcome = act(form)
            except Exception as exc:
                return visit.finish(self.failure(exc, visit))
            redirect = bottle.HTTPResponse(status=303, Location=outcome.go_to)
            return visit.finish(redirect, flash=outcome.message)

        return handler

    # -- login

    def login_form(self) -> bottle.HTTPResponse:
        if not self.guard.login_required:
            return bottle.HTTPResponse(status=303, Location="/console/")
        body = render.template(
            "login", next=safe_next(bottle.request.query.get("next")), wrong=False
        )
        return render.response(self.layout(None, "Log in", "", body))

    def login(self) -> bottle.HTTPResponse:
        if not self.guard.login_required:
            return bottle.HTTPResponse(status=303, Location="/console/")
        form = _form()
        target = safe_next(form.get("next"))
        if not self.guard.token_matches(form.get("token") or ""):
            body = render.template("login", next=target, wrong=True)
            return render.response(self.layout(None, "Log in", "", body), 401)
        cookie, _ = self.guard.new_cookie()
        out = bottle.HTTPResponse(status=303, Location=target)
        secure = bottle.request.urlparts.scheme == "https"
        out.set_cookie(SESSION_COOKIE, cookie, **cookie_options(secure))
        return _secured(out)

    def logout(self) -> bottle.HTTPResponse:
        visit = self.visit()
        if isinstance(visit, bottle.HTTPResponse):
            return visit
        if not self.guard.csrf_matches(visit.session, _form().get("csrf")):
            return self.error(403, BAD_CSRF, visit)
        out = bottle.HTTPResponse(status=303, Location="/console/login")
        secure = bottle.request.urlparts.scheme == "https"
        out.delete_cookie(SESSION_COOKIE, **cookie_options(secure, 0))
        return _secured(out)

    def static(self, name: str) -> bottle.HTTPResponse:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return self.error(404, "no such file")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        out = render.response(path.read_bytes(), 200, {"Content-Type": f"{kind}; charset=utf-8"})
        out.set_header("Cache-Control", "no-cache")
        return out


def _form() -> Any:
    """The request's form fields, read as UTF-8 (Bottle's own reading is Latin-1)."""
    return bottle.request.forms.decode()


def _secured(out: bottle.HTTPResponse) -> bottle.HTTPResponse:
    for name, value in render.response(b"").headers.items():
        if name != "Content-Type":
            out.set_header(name, value)
    return out


def install(app: Phase1App) -> None:
    """Mount the console's routes under /console/ on `app`."""
    console = Console(app)
    ctx = app.ctx

    def query() -> dict[str, str]:
        return dict(bottle.request.query.items())

    def get(rule: str, handler: Callable[..., Any]) -> None:
        app.route(rule, "GET", handler, name=rule)

    def post(rule: str, handler: Callable[..., Any]) -> None:
        app.route(rule, "POST", handler, name=rule)

    def moved() -> bottle.HTTPResponse:
        return bottle.HTTPResponse(status=301, Location="/console/")

    def overview() -> dict[str, Any]:
        return views.overview(ctx, console.last_hour)

    def job_list() -> dict[str, Any]:
        return views.job_list(ctx, query())

    def job(job_id: str) -> dict[str, Any]:
        return views.job(ctx, job_id)

    def dlq() -> dict[str, Any]:
        return views.dlq(ctx, console.dlq_groups, query())

    def dlq_entry(job_id: str) -> dict[str, Any]:
        return views.dlq_entry(ctx, job_id)

    def plan_list() -> dict[str, Any]:
        return views.plan_list(ctx, query())

    def plan(plan_id: str) -> dict[str, Any]:
        return views.plan(ctx, plan_id)

    def workers() -> dict[str, Any]:
        return views.workers(ctx)

    get("/console", moved)
    get("/console/", console.page("Overview", "Overview", "overview", overview))
    get("/console/jobs", console.page("Jobs", "Jobs", "jobs", job_list))
    get("/console/jobs/<job_id:path>", console.page("Job", "Jobs", "job", job))
    get("/console/dlq", console.page("Dead-letter queue", "DLQ", "dlq", dlq))
    get("/console/dlq/<job_id:path>", console.page("DLQ entry", "DLQ", "dlq_entry", dlq_entry))
    get("/console/plans", console.page("Plans", "Plans", "plans", plan_list))
    get("/console/plans/<plan_id>", console.page("Plan", "Plans", "plan", plan))
    get("/console/workers", console.page("Workers", "Workers", "workers", workers))
    get("/console/login", console.login_form)
    post("/console/login", console.login)
    post("/console/logout", console.logout)
    get("/console/static/<name>", console.static)
    post(
        "/console/actions/requeue",
        console.action(
            "Requeue",
            partial(actions.plan_requeue, ctx),
            partial(actions.requeue, ctx),
        ),
    )
    post(
        "/console/actions/cancel",
        console.action("Cancel", partial(actions.plan_cancel, ctx), partial(actions.cancel, ctx)),
    )
    for verb, resume in (("Pause", False), ("Resume", True)):
        post(
            f"/console/actions/{verb.lower()}",
            console.action(
                verb,
                partial(actions.plan_pause, ctx, resume=resume),
                partial(actions.pause, ctx, resume=resume),
            ),
        )
