"""The web console in a real browser (Debian's headless Chromium, driven by selenium) against
a real `phase1 serve` and a real worker: a job that fails for good is found in the DLQ,
inspected, requeued once its plan is fixed and seen completing live; login and logout; an
action without its CSRF token refused; an escaped title stays text; the pages fit 400 px.

Screenshots of every page go to the test's tmp dir; with PHASE1_SCREENSHOTS_TO_DOCS=1 the
overview, a job's timeline and the DLQ are also copied into docs/ for the README."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from http_support import Api, start_server
from psycopg.types.json import Jsonb
from support import Processes, inject_fault

from phase1.context import Phase1
from phase1.domain import plans
from phase1.jobs import approval
from phase1.schemas import SAMPLE_ANALYSIS
from phase1.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "browser tests need /usr/bin/chromium and /usr/bin/chromedriver "
        "(apt-get install chromium chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

TOKEN = "console-browser-token"
XSS = "<script>alert(1)</script>"
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER), log_output=os.devnull)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll `check` until it returns something true (a loaded 2-core machine: generous)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the live part was being replaced while we read it
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def text_of(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def shot(driver: WebDriver, tmp_path: Path, name: str, *, docs: bool = False) -> None:
    path = tmp_path / f"console-{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    if docs and os.environ.get("PHASE1_SCREENSHOTS_TO_DOCS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copy(path, DOCS / path.name)


def set_analysis(settings: Settings, plan_id: object, analysis: object) -> None:
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE marketplace_plans SET analysis = %s WHERE id = %s",
            (Jsonb(analysis), str(plan_id)),
        )


def log_in(driver: WebDriver, api: Api, path: str = "/console/") -> None:
    driver.get(api.base + path)
    wait_for(lambda: "/console/login" in driver.current_url, "the login form")
    field = driver.find_element(By.ID, "token")
    field.send_keys(TOKEN)
    field.send_keys(Keys.ENTER)  # from the keyboard
    wait_for(lambda: driver.current_url.endswith(path), f"{path} after login")


def click(driver: WebDriver, by: str, value: str) -> None:
    """Click an element, found again if the page's live part was replaced meanwhile."""

    def attempt() -> bool:
        driver.find_element(by, value).click()
        return True

    wait_for(attempt, f"a click on {value}")


def confirm(driver: WebDriver, button: str) -> None:
    click(driver, By.ID, button)
    wait_for(lambda: driver.find_elements(By.ID, "confirm"), "the confirmation page")
    click(driver, By.ID, "confirm")


def no_alert(driver: WebDriver) -> bool:
    try:
        _ = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


@pytest.fixture
def console(make_settings: Callable[..., Settings], processes: Processes) -> tuple[Settings, Api]:
    settings = make_settings(api_token=TOKEN)
    return settings, start_server(processes, settings)


def test_dlq_inspect_fix_requeue_and_watch_it_complete(
    console: tuple[Settings, Api],
    ctx: Phase1,
    processes: Processes,
    browser: WebDriver,
    tmp_path: Path,
) -> None:
    settings, api = console
    ctx = Phase1(settings=settings, redis=ctx.redis, pool=ctx.pool)
    with ctx.transaction() as conn:
        broken = plans.create_plan(conn, "Broken analysis", SAMPLE_ANALYSIS).id
        escaped = plans.create_plan(conn, XSS, SAMPLE_ANALYSIS).id
    job_id = approval.approve(ctx, broken).job_id
    set_analysis(settings, broken, {})  # an invalid analysis: a permanent error, no retry
    approval.approve(ctx, escaped)

    log_in(browser, api)
    processes.worker(settings)
    # The overview follows the worker live: the DLQ count moves to 1 without a reload.
    browser.execute_script("window.__notReloaded = true;")
    wait_for(lambda: text_of(browser, "#dlq-size") == "1", "the DLQ count on the overview")
    wait_for(lambda: text_of(browser, "#worker-count") == "1", "the worker on the overview")
    assert browser.execute_script("return window.__notReloaded === true;")
    shot(browser, tmp_path, "overview", docs=True)

    browser.get(api.base + "/console/dlq")
    assert "permanent" in text_of(browser, "#reasons")
    shot(browser, tmp_path, "dlq", docs=True)
    click(browser, By.LINK_TEXT, job_id)
    wait_for(lambda: browser.find_elements(By.ID, "entry-reason"), "the DLQ entry")
    assert text_of(browser, "#entry-reason") == "permanent"
    assert "invalid analysis" in text_of(browser, "#entry-error")
    shot(browser, tmp_path, "dlq-entry")

    set_analysis(settings, broken, SAMPLE_ANALYSIS)  # the plan fixed
    confirm(browser, "requeue")
    wait_for(lambda: f"/console/jobs/{job_id}" in browser.current_url, "the job's page")
    assert "Requeued job" in text_of(browser, "#flash")
    browser.execute_script("window.__notReloaded = true;")
    wait_for(lambda: text_of(browser, "#job-status") == "completed", "the job completing live")
    assert browser.execute_script("return window.__notReloaded === true;")
    timeline = text_of(browser, "#timeline")
    assert "failed" in timeline and "completed" in timeline  # attempt 1 failed, 2 completed
    assert "job:requeued" in text_of(browser, "#events")
    shot(browser, tmp_path, "job", docs=True)

    # An escaped title stays text: shown as written, never run.
    browser.get(api.base + "/console/plans")
    wait_for(lambda: XSS in text_of(browser, "#plans"), "the plan's title as text")
    assert no_alert(browser)
    browser.get(api.base + f"/console/plans/{escaped}")
    assert text_of(browser, "#plan-heading") == XSS and no_alert(browser)
    shot(browser, tmp_path, "plan")
    browser.get(api.base + "/console/workers")
    wait_for(lambda: browser.find_elements(By.ID, "workers"), "the workers table")
    shot(browser, tmp_path, "workers")
    browser.get(api.base + "/console/jobs")
    shot(browser, tmp_path, "jobs")


def test_login_logout_csrf_keyboard_and_narrow_screens(
    console: tuple[Settings, Api], browser: WebDriver, tmp_path: Path
) -> None:
    settings, api = console
    browser.get(api.base + "/console/dlq")
    assert "/console/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys("not the token", Keys.ENTER)
    wait_for(lambda: browser.find_elements(By.ID, "login-error"), "the wrong-token message")
    shot(browser, tmp_path, "login")
    browser.find_element(By.ID, "token").send_keys(TOKEN, Keys.ENTER)
    wait_for(lambda: browser.current_url.endswith("/console/dlq"), "the DLQ after login")
    cookie = browser.get_cookie("phase1_console")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # A request without the CSRF token is refused, even with the session cookie.
    status = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch('/console/actions/pause', {method: 'POST', credentials: 'same-origin',
              headers: {'Content-Type': 'application/x-www-form-urlencoded'},
              body: 'queue=' + encodeURIComponent(arguments[0]) + '&confirm=yes'})
          .then(r => done(r.status), e => done(String(e)));""",
        settings.queue,
    )
    assert status == 403

    # From the keyboard: the first Tab reaches the skip link, Enter moves to the content.
    browser.get(api.base + "/console/")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("class") == "skip"
    # At 400 px wide, no page scrolls sideways (wide tables scroll in their own box).
    browser.set_window_size(400, 900)
    for path in (
        "/console/",
        "/console/jobs",
        "/console/dlq",
        "/console/plans",
        "/console/workers",
    ):
        browser.get(api.base + path)
        width = browser.execute_script("return document.documentElement.scrollWidth;")
        inner = browser.execute_script("return window.innerWidth;")
        assert width <= inner, (path, width, inner)
    shot(browser, tmp_path, "overview-400px")
    browser.set_window_size(1280, 1000)

    browser.get(api.base + "/console/")
    browser.find_element(By.ID, "logout").click()
    wait_for(lambda: "/console/login" in browser.current_url, "the login form after logout")
    browser.get(api.base + "/console/workers")
    assert "/console/login" in browser.current_url


def test_cancel_a_retrying_job(
    make_settings: Callable[..., Settings],
    processes: Processes,
    browser: WebDriver,
    tmp_path: Path,
) -> None:
    pytest.importorskip("phase1.jobs.cancel", reason="cancel comes with its own branch")
    settings = make_settings(api_token=TOKEN, retry_intervals=[30.0])
    api = start_server(processes, settings)
    from phase1.context import build

    ctx = build(settings)
    try:
        with ctx.transaction() as conn:
            plan_id = plans.create_plan(conn, "Keeps failing", SAMPLE_ANALYSIS).id
        assert settings.database_url
        inject_fault(settings.database_url, plan_id, fail_times=100)
        job_id = approval.approve(ctx, plan_id).job_id
    finally:
        ctx.close()
    processes.worker(settings)
    log_in(browser, api, f"/console/jobs/{job_id}")
    wait_for(lambda: text_of(browser, "#job-status") == "retrying", "the job retrying")
    browser.find_element(By.ID, "cancel-reason").send_keys("operator gave up")
    confirm(browser, "cancel")
    wait_for(lambda: "Cancelled job" in text_of(browser, "#flash"), "the cancel outcome")
    wait_for(lambda: text_of(browser, "#job-status") == "failed", "the job failed (cancelled)")
    shot(browser, tmp_path, "cancelled")


def test_pause_and_resume_the_queue(
    console: tuple[Settings, Api], browser: WebDriver, tmp_path: Path
) -> None:
    pytest.importorskip("phase1.jobs.pause", reason="pause comes with its own branch")
    _, api = console
    log_in(browser, api)
    confirm(browser, "pause")
    wait_for(lambda: "Paused queue" in text_of(browser, "#flash"), "the pause outcome")
    wait_for(lambda: text_of(browser, "#paused-state") == "paused", "the queue shown paused")
    shot(browser, tmp_path, "paused")
    confirm(browser, "resume")
    wait_for(lambda: "Resumed queue" in text_of(browser, "#flash"), "the resume outcome")
    wait_for(lambda: text_of(browser, "#paused-state") == "running", "the queue shown running")
