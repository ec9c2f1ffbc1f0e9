"""Settings: the only reader of the environment (and of `.env`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from phase1.errors import ConfigError
from phase1.keys import EVENT_TYPES as TYPES
from phase1.redact import redact_url
from phase1.redisconn import parse_sentinel_url

__all__ = ["Settings", "env_name", "load_settings", "redact_url"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_DATABASE_URL = "postgresql://localhost:5432/phase1"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything phase1 can be configured with, validated once at start-up.

    `redis_url`/`database_url` left unset mean "the default address, or the embedded
    servers when nothing answers there" (see `phase1.embedded.resolve`).
    """

    model_config = SettingsConfigDict(
        env_prefix="PHASE1_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    queue: str = Field(default="phase1-tasks", min_length=1, max_length=100, pattern=r"^[\w.-]+$")
    max_retries: int = Field(default=3, ge=0, le=100)
    retry_intervals: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [1.0, 5.0, 30.0]
    )
    job_timeout: int = Field(default=10, ge=1, le=86_400)
    shutdown_timeout: float = Field(default=30, gt=0, le=86_400)
    approval_mode: Literal["queue", "sync"] = "queue"
    # Log lines as readable text, or one JSON object per line (phase1.telemetry.logs).
    log_format: Literal["text", "json"] = "text"
    api_token: SecretStr | None = None
    # Without an API token the web console is read-only, unless this lets it act.
    console_write: bool = False
    # A plain default (pydantic copies it per instance): `default_factory=list` made pydantic
    # read the builtin's signature, compiling tokenize's regexes (~10 ms of every start).
    webhook_urls: Annotated[list[str], NoDecode] = Field(default=[])
    webhook_secret: SecretStr | None = None
    webhook_events: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["job:completed", "job:failed"]
    )
    # How long DLQ entries live; 0 keeps them until an operator acts (the default).
    dlq_retention: int = Field(default=0, ge=0)
    # Events kept in the Redis stream (approximate cap, XADD MAXLEN ~).
    event_stream_maxlen: int = Field(default=100_000, ge=100)
    # Seconds without a heartbeat after which an `active` job counts as orphaned.
    orphan_after: float = Field(default=15, gt=0, le=3600)
    # Where the embedded Redis and PostgreSQL keep their data.
    home: Path = Path(".phase1")
    # Seconds a webhook receiver gets to answer one delivery try (connect, send, response).
    webhook_timeout: float = Field(default=5, gt=0, le=60)
    # Tries per webhook delivery in all (the first one included), then it is given up.
    webhook_max_tries: int = Field(default=5, ge=1, le=50)
    # Seconds before each retry of a delivery; the last one repeats.
    webhook_retry_intervals: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [1.0, 5.0, 30.0, 60.0]
    )
    # Seconds between a worker's reconciler runs (re-enqueue what PostgreSQL holds and Redis
    # lost) and RQ's own registry maintenance.
    reconcile_interval: float = Field(default=30, gt=0, le=86_400)
    # Rows younger than this are left alone by the reconciler (an approval between its commit
    # and its enqueue).
    reconcile_grace: float = Field(default=5, ge=0, le=3600)

    @field_validator("retry_intervals", "webhook_retry_intervals", mode="before")
    @classmethod
    def _parse_intervals(cls, value: Any) -> Any:
        parts = _split_csv(value)
        if isinstance(parts, list):
            for part in parts:
                try:
                    number = float(part)
                except (TypeError, ValueError):
                    raise ValueError(f"{part!r} is not a number of seconds") from None
                if number < 0:
                    raise ValueError(f"{part!r} is negative")
        return parts

    @field_validator("webhook_urls", "webhook_events", mode="before")
    @classmethod
    def _parse_lists(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("webhook_urls")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{redact_url(url)!r} is not an http(s) URL")
        return urls

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, url: str | None) -> str | None:
        if url is not None:
            check_redis_url(url)
        return url

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        if "://" in url:
            check_database_url(url)  # psycopg is not loaded for a URL (workers start faster)
            return url
        from psycopg.conninfo import conninfo_to_dict  # psycopg only for such a string

        try:  # libpq's own parser; its message may quote the value, so it is not shown
            conninfo_to_dict(url)
        except Exception:
            raise ValueError(
                "is neither a postgresql:// URL nor a libpq key=value string"
            ) from None
        return url

    @model_validator(mode="after")
    def _check_intervals_present(self) -> Settings:
        if self.max_retries > 0 and not self.retry_intervals:
            raise ValueError("PHASE1_RETRY_INTERVALS must list at least one interval")
        return self

    @field_validator("webhook_events")
    @classmethod
    def _check_event_types(cls, types: list[str]) -> list[str]:
        for name in types:
            if name not in TYPES:
                raise ValueError(f"{name!r} is not an event type (one of {', '.join(TYPES)})")
        return types

    @model_validator(mode="after")
    def _check_webhooks_signed(self) -> Settings:
        # Receivers must be able to trust what they get: no unsigned deliveries.
        if self.webhook_urls and not self.webhook_secret:
            raise ValueError("PHASE1_WEBHOOK_SECRET must be set when PHASE1_WEBHOOK_URLS is")
        if self.webhook_max_tries > 1 and not self.webhook_retry_intervals:
            raise ValueError("PHASE1_WEBHOOK_RETRY_INTERVALS must list at least one interval")
        return self

    def retry_schedule(self) -> list[float]:
        """The wait before each retry, one entry per retry; the last interval repeats."""
        if self.max_retries == 0:
            return []
        intervals = list(self.retry_intervals[: self.max_retries])
        intervals += [intervals[-1]] * (self.max_retries - len(intervals))
        return intervals

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    @property
    def db_statement_timeout_ms(self) -> int:
        """Below the job timeout, so PostgreSQL gives up before RQ kills the attempt."""
        return max(200, int(self.job_timeout * 1000 * 0.7))

    @property
    def db_lock_timeout_ms(self) -> int:
        return max(100, int(self.job_timeout * 1000 * 0.5))


ENV_NAMES = {"redis_url": "REDIS_URL", "database_url": "DATABASE_URL"}


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return ENV_NAMES.get(field, f"PHASE1_{field.upper()}")


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the environment once; a bad value raises ConfigError naming it."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        name = env_name(field.lower()) if field and field not in ENV_NAMES.values() else field
        message = first["msg"].removeprefix("Value error, ")
        shown = _shown_input(name, first.get("input"))
        where = f"{name}: " if name else ""
        raise ConfigError(f"invalid setting {where}{message}{shown}") from None


# Settings whose value is a secret, or may hold one (a password inside a URL).
SECRET_SETTINGS = frozenset({"PHASE1_API_TOKEN", "PHASE1_WEBHOOK_SECRET"})
URL_SETTINGS = frozenset({"REDIS_URL", "DATABASE_URL", "PHASE1_WEBHOOK_URLS"})


def _shown_input(name: str, given: Any) -> str:
    """` (got ...)` for a refused value: URLs with their secrets hidden, secrets never."""
    if not name or name in SECRET_SETTINGS or not isinstance(given, str | int | float):
        return ""
    if name in URL_SETTINGS and isinstance(given, str):
        given = ",".join(redact_url(part) for part in given.split(","))
    return f" (got {given!r})"


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
REDIS_SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)
REDIS_URL_FORM = "redis://[[user]:password@]host[:port][/db]"


def check_redis_url(url: str) -> None:
    """Refuse a REDIS_URL that redis-py would refuse, misread, or fail on at first use.

    Each ValueError says what is wrong without quoting the URL (it may hold a password)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
    try:
        parts = urlsplit(url)
        port = None if scheme == "unix" or scheme in SENTINEL_SCHEMES else parts.port
    except ValueError:  # an unbalanced [ in the host, a port that is not a number
        raise ValueError(f"has a malformed host or port (expected {REDIS_URL_FORM})") from None
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(url)  # phase1.redisconn's reading, as it will connect
    elif scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs the socket's path, as in unix:///run/redis.sock")
    else:
        if port is None and parts.netloc.rsplit("@", 1)[-1].endswith(":"):
            raise ValueError(f"has an empty port (expected {REDIS_URL_FORM})")
        db = unquote(parts.path).strip("/")
        if db and not db.isdigit():
            raise ValueError("names a database that is not a number (the path is /<db>)")
    if scheme not in SENTINEL_SCHEMES:
        from redis.connection import ConnectionPool  # redis-py's own reading, as it will use it

        try:
            ConnectionPool.from_url(url).make_connection()
        except (TypeError, ValueError):
            raise ValueError(
                f"has an option redis-py does not accept (expected {REDIS_URL_FORM})"
            ) from None


def check_database_url(url: str) -> None:
    """Refuse a postgresql:// URL whose authority libpq and a URL parser would read apart.

    Each ValueError says what is wrong without quoting the URL (it may hold a password)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError("must start with postgresql:// (or be a libpq key=value string)")
    # libpq looks for the credentials' '@' up to the first '/'; a '?' or '#' before it would
    # make it read a password where other parsers read a host.
    authority = rest.split("/", 1)[0]
    if "@" in authority and any(mark in authority for mark in "?#"):
        raise ValueError("has a '?' or '#' in its user or password: percent-encode them")
    for host in authority.rsplit("@", 1)[-1].split(","):
        port = host.rsplit("]", 1)[-1].rpartition(":")[2] if ":" in host else ""
        if ":" in host.rsplit("]", 1)[-1] and not (port.isdigit() and int(port) <= 65535):
            raise ValueError("has a port that is not a number from 0 to 65535")
