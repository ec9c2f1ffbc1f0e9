"""Secrets hidden from every message: connection strings read by their structure, not a regex.

A password reaches psycopg or redis-py in more ways than `user:password@`: a query parameter
(`?password=`, `?sentinel_password=`), a libpq `key=value` string (`password='...'`). Each form
is parsed as the client would parse it and every secret value replaced by `***`. What cannot be
parsed unambiguously is hidden whole rather than guessed at.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit

MASK = "***"

# A key whose value is a secret: password, sentinel_password, sslpassword, ssl_password,
# passfile (a path, hidden anyway), token, secret... Matched on the decoded, lower-cased key.
_SECRET_KEY = re.compile(r"pass|secret|token|credential|auth")

# A URL, as libpq tells one from a key=value string: a scheme, then "://".
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

# One libpq `key = value` pair: the value single-quoted (backslash escapes) or up to the next
# blank. An unterminated quote runs to the end, as libpq would read it (and then refuse it).
_LIBPQ_PAIR = re.compile(r"\s*([^\s=]+)\s*=\s*('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*)", re.DOTALL)


def is_secret_key(key: str) -> bool:
    """Whether a connection parameter named `key` holds a secret."""
    return bool(_SECRET_KEY.search(unquote_plus(key).strip().lower()))


def redact_url(url: str) -> str:
    """`url` (a URL or a libpq key=value string) with every secret replaced by `***`."""
    if not url:
        return url
    if not _URL.match(url):
        return _redact_conninfo(url)
    scheme, _, rest = url.partition("://")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced [ in the host: nothing in it can be trusted
        return f"{scheme}://{MASK}"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{userinfo}@{host}"
    # A '@' after the authority as urlsplit reads it means a password holding a '/', '?' or
    # '#' that libpq reads differently (it looks for the '@' up to the first '/'): hidden
    # whole, since no part of it can be told apart from the password.
    if "@" in rest[len(parts.netloc) :]:
        return f"{scheme}://{MASK}"
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&"))
    shown = f"{scheme}://{netloc}{parts.path}"
    shown += f"?{query}" if parts.query else ""
    return shown + (f"#{MASK}" if parts.fragment else "")  # a fragment means nothing to either


def _redact_pair(pair: str) -> str:
    key, equals, _value = pair.partition("=")
    return f"{key}={MASK}" if equals and is_secret_key(key) else pair


def _redact_conninfo(conninfo: str) -> str:
    """A libpq `key=value` string with its secret values hidden; anything after a part that is
    not `key=value` is hidden whole."""
    shown: list[str] = []
    position = 0
    while position < len(conninfo) and conninfo[position:].strip():
        match = _LIBPQ_PAIR.match(conninfo, position)
        if match is None or match.end() == position:
            shown.append(MASK)
            break
        key, value = match.group(1), match.group(2)
        shown.append(f"{key}={MASK if is_secret_key(key) else value}")
        position = match.end()
    return " ".join(shown)
