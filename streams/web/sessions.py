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
MAX_PER_ORG = 1_000  # an org's oldest session goes when it signs in once more
MAX_SESSIONS = 100_000  # all orgs together: beyond it, sign-in is refused
SWEEP_S = 60.0  # expired sessions are dropped at most this often (and when met)


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
        self._by_org: dict[str, dict[str, None]] = {}  # org -> its session ids, oldest first
        self._swept = clock()

    def __len__(self) -> int:
        return len(self._sessions)

    def sign_in(self, presented: str) -> Session | None:
        """A new session for the key's org, or None when the key is not an active key.
        Raises :class:`TooManySessions` when every org together holds the maximum."""
        org = self.keys.resolve(presented.strip() or None, fresh=True)
        if org is None:
            return None
        now = self.clock()
        if now - self._swept > SWEEP_S:
            self._sweep(now)
        mine = self._by_org.setdefault(org, {})
        while len(mine) >= MAX_PER_ORG:  # the org's own oldest, never another org's
            self._drop(next(iter(mine)))
        if len(self._sessions) >= MAX_SESSIONS:
            raise TooManySessions
        s = Session(
            secrets.token_urlsafe(32), org, secrets.token_urlsafe(32), presented.strip(), now, now
        )
        self._sessions[s.sid] = s
        mine[s.sid] = None
        return s

    def get(self, sid: str | None, touch: bool = True) -> Session | None:
        """The live session of a cookie, else None. ``touch``: a person did something, so
        the idle clock restarts (a page's own background fetches do not touch it)."""
        s = self._sessions.get(sid) if sid else None
        if s is None:
            return None
        if not self.still_valid(s):
            self._drop(s.sid)
            return None
        if touch:
            s.seen = self.clock()
        return s

    def still_valid(self, s: Session) -> bool:
        """Whether a session still stands: signed in, not idle too long, not too old, its
        key still active."""
        now = self.clock()
        if s.sid not in self._sessions:
            return False
        if now - s.seen > self.idle_s or now - s.started > self.max_s:
            return False
        return self.keys.resolve(s.key) == s.org_id

    def sign_out(self, sid: str | None) -> None:
        if sid:
            self._drop(sid)

    def _drop(self, sid: str) -> None:
        s = self._sessions.pop(sid, None)
        if s is not None:
            mine = self._by_org.get(s.org_id, {})
            mine.pop(sid, None)
            if not mine:
                self._by_org.pop(s.org_id, None)

    def _sweep(self, now: float) -> None:
        self._swept = now
        for sid, s in list(self._sessions.items()):
            if now - s.seen > self.idle_s or now - s.started > self.max_s:
                self._drop(sid)


class TooManySessions(Exception):
    """Every org together holds :data:`MAX_SESSIONS` sessions."""
