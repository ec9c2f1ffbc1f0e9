"""What `phase1 serve` and `phase1 up` say at start-up: an open API is announced, and a
malformed REDIS_URL is refused in one line (never a redis-py traceback, never its secret)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable

import pytest
from http_support import Api, free_port, start_server
from secret_forms import SECRET, redis_forms
from support import PHASE1, Processes, settings_env, wait_until

from phase1.settings import Settings, load_settings

TOKEN_WARNING = "PHASE1_API_TOKEN is not set"
EXPOSED_WARNING = "anyone who can reach it can approve plans"


def served_log(processes: Processes, api: Api) -> str:
    wait_until(lambda: "phase1: serving" in processes.log(0), timeout=30, what="the banner")
    assert api.request("GET", "/healthz").status == 200
    return processes.log(0)


def test_serve_without_a_token_warns_naming_the_variable(
    processes: Processes, settings: Settings
) -> None:
    api = start_server(processes, settings)
    log = served_log(processes, api)
    assert TOKEN_WARNING in log
    assert EXPOSED_WARNING not in log  # 127.0.0.1: only this machine can reach it


def test_serve_without_a_token_on_a_public_address_says_who_can_approve(
    processes: Processes, settings: Settings
) -> None:
    api = start_server(processes, settings, "--host", "0.0.0.0")
    log = served_log(processes, api)
    assert TOKEN_WARNING in log and EXPOSED_WARNING in log


def test_serve_with_a_token_does_not_warn(
    processes: Processes, make_settings: Callable[..., Settings]
) -> None:
    api = start_server(processes, make_settings(api_token="t0ken"), "--host", "0.0.0.0")
    log = served_log(processes, api)
    assert TOKEN_WARNING not in log and EXPOSED_WARNING not in log


@pytest.mark.slow
def test_up_without_a_token_warns_too(processes: Processes, settings: Settings) -> None:
    port = free_port()
    processes.start([PHASE1, "up", "--port", str(port), "--host", "0.0.0.0"], settings)
    log = served_log(processes, Api(port))
    assert TOKEN_WARNING in log and EXPOSED_WARNING in log


def test_readyz_and_metrics_name_no_address_or_secret(
    processes: Processes, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    host_port, db = redis_url.split("://", 1)[1].rsplit("/", 1)
    host, port = host_port.rsplit(":", 1)
    # A working Redis given with a password it does not need (it has none: AUTH fails), and
    # the same with a password in the query: readiness says "unavailable", never where.
    for form in ("userinfo", "query password"):
        url = redis_forms(host, int(port), int(db))[form]
        server = Processes(processes.tmp_path / f"ready-{uuid.uuid4().hex[:6]}")
        server.tmp_path.mkdir()
        try:
            api = start_server(server, make_settings(redis_url=url))
            for path in ("/readyz", "/metrics"):
                body = api.request("GET", path, timeout=15).body.decode()
                for detail in (
                    SECRET,
                    host,
                    f":{port}",
                    "redis://",
                    "postgresql://",
                    "phase1_test",
                ):
                    assert detail not in body, (path, detail, body[:500])
        finally:
            server.stop_all()


MALFORMED_REDIS_URLS = [
    ("scheme", f"http://:{SECRET}@127.0.0.1:6379/0"),
    ("no scheme", f"127.0.0.1:6379?password={SECRET}"),
    ("port not a number", f"redis://:{SECRET}@127.0.0.1:six/0"),
    ("port out of range", f"redis://:{SECRET}@127.0.0.1:99999/0"),
    ("empty port", f"redis://:{SECRET}@127.0.0.1:/0"),
    ("unbalanced bracket", f"redis://:{SECRET}@[::1/0"),
    ("database not a number", f"redis://:{SECRET}@127.0.0.1:6379/zero"),
    ("bad query value", f"redis://127.0.0.1:6379/0?db=x&password={SECRET}"),
    ("unknown query option", f"redis://127.0.0.1:6379/0?bogus=1&password={SECRET}"),
    ("unix without a path", f"unix://:{SECRET}@"),
    ("sentinel without a port", f"redis+sentinel://:{SECRET}@127.0.0.1/mymaster"),
    ("sentinel without a service", f"redis+sentinel://:{SECRET}@127.0.0.1:26379/"),
]


@pytest.mark.parametrize(
    "url", [c[1] for c in MALFORMED_REDIS_URLS], ids=[c[0] for c in MALFORMED_REDIS_URLS]
)
def test_a_malformed_redis_url_is_refused_in_one_line(settings: Settings, url: str) -> None:
    env = {**settings_env(settings), "REDIS_URL": url}
    for command in (["serve", "--port", "0"], ["status", "00000000-0000-4000-8000-000000000000"]):
        done = subprocess.run(
            [PHASE1, *command], env=env, capture_output=True, text=True, timeout=60
        )
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith("error: invalid setting REDIS_URL: ")
        assert SECRET not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr


ACCEPTED_REDIS_URLS = [
    "redis://localhost:6379/0",
    "redis://",
    f"redis://user:{SECRET}@redis.internal:6380/2",
    f"rediss://:{SECRET}@redis.internal:6380/0?ssl_cert_reqs=none",
    f"unix:///run/redis/redis.sock?db=1&password={SECRET}",
    f"redis+sentinel://:{SECRET}@10.0.0.1:26379,10.0.0.2:26379/mymaster/0",
    "redis+sentinel://sentinel.internal:26379/mymaster",
]


@pytest.mark.parametrize("url", ACCEPTED_REDIS_URLS)
def test_every_documented_redis_scheme_is_accepted(url: str) -> None:
    assert load_settings(redis_url=url).redis_url == url
