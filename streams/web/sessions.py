"""Who is signed in: server-side sessions behind an opaque cookie.

A session is created by presenting an org API key (the key store of the API) and holds
that key in memory only, so a revoked key ends its sessions at their next request. It
expires after ``idle_s`` without a request and ``max_s`` after sign-in, whichever comes
first. Its CSRF token is a second random value that every form of its pages carries.
Sessions live in the process: a restart of ``serve`` signs everybody out.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from streams.http.api_keys import ApiKeyStore

COOKIE = "caretally_session"
SIGNIN_COOKIE = "caretally_signin"  # double-submit CSRF token of the sign-in form
CSRF_FIELD = "csrf_token"
MAX_SESSIONS = 10_000


@dataclass(eq=False, slots=True)
class Session:
    sid: str
    org_id: str
    csrf: str
    key: str  # the API key presented at sign-in (never logged, never sent back)
    started: float
    seen: float


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted token."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class SessionStore:
    def __init__(
        self,
        keys: ApiKeyStore,
        idle_s: float,
        max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self.idle_s = idle_s
        self.max_s = max_s
        self.clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def sign_in(self, presented: str) -> Session | None:
        """A new session for the key's org, or None when the key is not an active key."""
        org = self.keys.resolve(presented.strip() or None, fresh=True)
        if org is None:
            return None
        self._expire()
        if len(self._sessions) >= MAX_SESSIONS:  # drop the least recently used
            oldest = min(self._sessions.values(), key=lambda s: s.seen)
            del self._sessions[oldest.sid]
        now = self.clock()
        s = Session(
            secrets.token_urlsafe(32), org, secrets.token_urlsafe(32), presented.strip(), now, now
        )
        self._sessions[s.sid] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session of a cookie (its idle clock restarts), else None."""
        s = self._sessions.get(sid) if sid else None
        if s is None:
            return None
        now = self.clock()
        expired = now - s.seen > self.idle_s or now - s.started > self.max_s
        if expired or self.keys.resolve(s.key) != s.org_id:
            del self._sessions[s.sid]
            return None
        s.seen = now
        return s

    def still_valid(self, s: Session) -> bool:
        """Whether a long-lived stream's session still stands (no idle reset)."""
        now = self.clock()
        if s.sid not in self._sessions or now - s.started > self.max_s:
            return False
        return self.keys.resolve(s.key) == s.org_id

    def sign_out(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def _expire(self) -> None:
        now = self.clock()
        for sid, s in list(self._sessions.items()):
            if now - s.seen > self.idle_s or now - s.started > self.max_s:
                del self._sessions[sid]
