"""The console's guard: sessions, CSRF tokens, who may act, and the headers every page sends.

Sessions are signed cookies (HttpOnly, SameSite=Strict, path /console): with
PHASE1_API_TOKEN the signing key derives from the token and a session starts only at the
login form; without one, the key is the process's own and every visitor gets a read-only
session (one that may act when PHASE1_CONSOLE_WRITE=1). Every action carries a CSRF token
bound to its session.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from phase1.settings import Settings

SESSION_COOKIE = "phase1_console"
FLASH_COOKIE = "phase1_console_flash"
COOKIE_PATH = "/console"
# A session lasts this long from its login (or first visit, without a token).
SESSION_SECONDS = 12 * 3600

# Nothing from outside: scripts, styles and images from this server only, no inline script,
# no framing, forms only back to this server.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Session:
    """A verified session: its id (the nonce the cookie carries) and its CSRF token."""

    nonce: str
    csrf: str


class Guard:
    """Signs and checks the console's sessions and CSRF tokens for one app."""

    def __init__(self, settings: Settings) -> None:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self.token_digest = hashlib.sha256(token.encode()).digest() if token else None
        self.login_required = token is not None
        # With a token, sessions outlive a restart; without one, a restart ends them.
        base = token.encode() if token else os.urandom(32)
        self._key = hashlib.sha256(b"phase1-console|" + base).digest()
        self.can_write = token is not None or settings.console_write

    def _sign(self, purpose: str, nonce: str) -> str:
        return hmac.new(self._key, f"{purpose}|{nonce}".encode(), hashlib.sha256).hexdigest()

    def new_cookie(self) -> tuple[str, Session]:
        """A fresh session's cookie value and the session."""
        nonce = f"{int(time.time())}-{secrets.token_hex(16)}"
        return f"{nonce}.{self._sign('session', nonce)}", self._session(nonce)

    def _session(self, nonce: str) -> Session:
        return Session(nonce=nonce, csrf=self._sign("csrf", nonce))

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie proves, or None (missing, forged or expired)."""
        if not cookie or "." not in cookie or len(cookie) > 200:
            return None
        nonce, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign("session", nonce).encode()):
            return None
        issued = nonce.partition("-")[0]
        if not issued.isdigit() or time.time() - int(issued) > SESSION_SECONDS:
            return None
        return self._session(nonce)

    def token_matches(self, given: str) -> bool:
        """Whether `given` is the API token (hashed first: constant time, length hidden)."""
        if self.token_digest is None:
            return False
        digest = hashlib.sha256(given.encode("utf-8", "replace")).digest()
        return hmac.compare_digest(digest, self.token_digest)

    @staticmethod
    def csrf_matches(session: Session, given: Any) -> bool:
        if not isinstance(given, str) or not given:
            return False
        return hmac.compare_digest(given.encode("utf-8", "replace"), session.csrf.encode())


def cookie_options(secure: bool, max_age: int = SESSION_SECONDS) -> dict[str, Any]:
    """Attributes of the console's cookies: HttpOnly, SameSite=Strict, under /console."""
    return {
        "path": COOKIE_PATH,
        "httponly": True,
        "samesite": "strict",
        "secure": secure,
        "max_age": max_age,
    }


def safe_next(target: str | None) -> str:
    """Where to go after login: a console path of this server, never another site."""
    if target and target.startswith("/console/") and "//" not in target and "\\" not in target:
        return target
    return "/console/"
