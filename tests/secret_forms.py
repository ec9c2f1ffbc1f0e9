"""Every form in which psycopg or redis-py accept a password, each holding SECRET."""

from __future__ import annotations

import getpass
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict

SECRET = "Sx9-hunter2-secret"


def redis_forms(host: str, port: int, db: int = 0) -> dict[str, str]:
    """REDIS_URL forms redis-py accepts, each with the password SECRET."""
    return {
        "userinfo": f"redis://:{SECRET}@{host}:{port}/{db}",
        "user and password": f"redis://someone:{SECRET}@{host}:{port}/{db}",
        "query password": f"redis://{host}:{port}/{db}?password={SECRET}",
        "tls query password": f"rediss://{host}:{port}/{db}?password={SECRET}",
        "unix socket query password": f"unix:///nonexistent/phase1.sock?db={db}&password={SECRET}",
    }


SENTINEL_FORM = f"redis+sentinel://:{SECRET}@127.0.0.1:26379,127.0.0.1:26380/mymaster/0"


def postgres_forms(database_url: str, *, port: int | None = None) -> dict[str, str]:
    """DATABASE_URL forms psycopg accepts for the server and database of `database_url` (or the
    same host on `port`), each with the password SECRET (trust auth ignores it)."""
    params = {k: str(v) for k, v in conninfo_to_dict(database_url).items() if v is not None}
    host = params.get("host", "127.0.0.1")
    if port is not None:
        host = "127.0.0.1"
    pg_port = str(port if port is not None else params.get("port", "5432"))
    dbname = params.get("dbname", "postgres")
    user = params.get("user") or getpass.getuser()
    where = f"host={quote(host, safe='')}&port={pg_port}"
    return {
        "userinfo": f"postgresql://{user}:{SECRET}@/{dbname}?{where}",
        "query password": f"postgresql:///{dbname}?{where}&user={user}&password={SECRET}",
        "libpq key=value": (
            f"host={host} port={pg_port} dbname={dbname} user={user} password={SECRET}"
        ),
        "libpq quoted": (
            f"host={host} port={pg_port} dbname={dbname} user={user} password='{SECRET} x'"
        ),
    }
