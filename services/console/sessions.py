"""Server-side sessions and CSRF tokens of the console.

The browser holds only a session id, signed (itsdangerous, with CONSOLE_SESSION_KEY) in an `HttpOnly`,
`SameSite=Strict` cookie; the caller's bearer token stays here, in memory, keyed by that id. A session ends
at sign-out or `console_session_hours` after sign-in, whichever comes first. Every form carries the
session's CSRF token; the sign-in form, before there is a session, carries one that is also in a short-lived
signed cookie (double submit).

The store is this process's memory: several console instances behind one address would need a shared store
(a database table or Redis keyed the same way), or sticky sessions; a restart signs everyone out.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from services.common.service import Caller

SESSION_COOKIE = "cgt_console_session"
SIGN_IN_COOKIE = "cgt_console_sign_in"
SIGN_IN_SECONDS = 15 * 60
"""How long a sign-in form stays good to post."""
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class ConsoleSession:
    id: str
    token: str
    """The signed-in user's bearer token: sent to the services, never to the browser, never logged."""
    caller: Caller
    csrf_token: str
    expires_at: float

    def __repr__(self) -> str:  # never the token, in a traceback or a log line
        return f"ConsoleSession(subject={self.caller.subject!r}, role={self.caller.role!r})"


class SessionStore:
    """Sessions by id, in this process's memory (see the module's note on several instances)."""

    def __init__(
        self, secret_key: str, lifetime_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.lifetime_seconds = lifetime_seconds
        self.clock = clock
        self._sessions: dict[str, ConsoleSession] = {}
        self._session_ids = URLSafeTimedSerializer(secret_key, salt="cgt-console-session")
        self._sign_in = URLSafeTimedSerializer(secret_key, salt="cgt-console-sign-in")

    def open(self, token: str, caller: Caller) -> tuple[ConsoleSession, str]:
        """A new session, and the cookie value that names it (the signed id)."""
        self._forget_expired()
        session = ConsoleSession(
            id=secrets.token_urlsafe(32),
            token=token,
            caller=caller,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=self.clock() + self.lifetime_seconds,
        )
        self._sessions[session.id] = session
        return session, self._session_ids.dumps(session.id)

    def find(self, cookie: str | None) -> ConsoleSession | None:
        """The live session a cookie names; None for no cookie, a bad signature, an ended session."""
        if not cookie:
            return None
        try:
            session_id = self._session_ids.loads(cookie, max_age=self.lifetime_seconds)
        except BadSignature:
            return None
        session = self._sessions.get(str(session_id))
        if session is None:
            return None
        if session.expires_at <= self.clock():
            self._sessions.pop(session.id, None)
            return None
        return session

    def close(self, session: ConsoleSession) -> None:
        self._sessions.pop(session.id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _forget_expired(self) -> None:
        now = self.clock()
        for session_id in [i for i, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[session_id]

    # ------------------------------------------------------------ the sign-in form's token (no session yet)

    def sign_in_token(self) -> tuple[str, str]:
        """A fresh sign-in form token, and the signed cookie value that carries it."""
        token = secrets.token_urlsafe(32)
        return token, self._sign_in.dumps(token)

    def sign_in_token_ok(self, cookie: str | None, offered: str | None) -> bool:
        """Whether the form's token is the one in the (unexpired, correctly signed) sign-in cookie."""
        if not cookie or not offered:
            return False
        try:
            expected = self._sign_in.loads(cookie, max_age=SIGN_IN_SECONDS)
        except BadSignature:
            return False
        return hmac.compare_digest(str(expected).encode(), offered.encode())


def csrf_ok(session: ConsoleSession, offered: str | None) -> bool:
    return offered is not None and hmac.compare_digest(session.csrf_token.encode(), offered.encode())
