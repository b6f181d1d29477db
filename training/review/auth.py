"""Who may use the review page: session cookies, CSRF tokens, login throttling.

- A login (name + password checked against the reviewers file) creates a server-side session
  in the review database; the cookie holds only a random 256-bit id (``HttpOnly``,
  ``SameSite=Strict``, ``Path=/review``, ``Secure`` when the server speaks TLS). Sessions end
  after ``IDLE_S`` without a request, ``TTL_S`` after the login, on logout, or when the
  reviewer is removed from the reviewers file.
- Every state-changing request carries the session's CSRF token: the ``csrf_token`` field of a
  form, or the ``X-CSRF-Token`` header of a ``fetch`` call, compared in constant time. A
  request whose ``Origin`` is another site is refused as well.
- An ``Authorization`` header (a device's bearer token) is refused outright on the review
  routes: devices upload, people review.
- Failed logins are throttled per name and per client address: after ``MAX_FAILURES`` within
  ``WINDOW_S`` further tries are refused (429) until the window has passed.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque

from starlette.requests import Request

from training.review.db import ReviewDB, Session

COOKIE = "edgecam_review"
LOGIN_COOKIE = "edgecam_login"  # the login form's own CSRF token (double submit)
COOKIE_PATH = "/review"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
TTL_S = 12 * 3600
IDLE_S = 2 * 3600
MAX_FAILURES = 5
WINDOW_S = 300.0
_MAX_TRACKED = 10_000


class AuthFailure(Exception):
    """A request the review page refuses: HTTP status, message, and how to fix it."""

    def __init__(self, status: int, error: str, fix: str):
        super().__init__(error)
        self.status = status
        self.error = error
        self.fix = fix


def is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response, request: Request, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=is_secure(request),
    )


def clear_cookie(response, request: Request, name: str) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, httponly=True, samesite="strict", secure=is_secure(request)
    )


def refuse_bearer(request: Request) -> None:
    if request.headers.get("authorization"):
        raise AuthFailure(
            401,
            "the review page does not take Authorization headers (device tokens upload "
            "samples; they cannot review them)",
            "log in with a reviewer's name and password at /review/login",
        )


def session_of(request: Request, db: ReviewDB) -> Session | None:
    sid = request.cookies.get(COOKIE, "")
    return db.session(sid, IDLE_S) if sid else None


def check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None:  # same-origin form posts from old browsers; the CSRF token decides
        return
    expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin != expected:
        raise AuthFailure(
            403,
            "the request comes from another site (Origin header)",
            "use the review page itself",
        )


def check_csrf(session: Session, presented: str | None) -> None:
    if not presented:
        raise AuthFailure(
            403,
            "the request has no CSRF token",
            f"send the page's token in the {CSRF_HEADER} header (fetch) or the {CSRF_FIELD} "
            "field (forms); reload the page if it is old",
        )
    if not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        raise AuthFailure(
            403,
            "the CSRF token does not match this session",
            "reload the page (the session may have changed) and try again",
        )


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


class LoginThrottle:
    """Failed logins per name and per client address in a sliding window."""

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S):
        self.max_failures = max_failures
        self.window_s = window_s
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and now - q[0] > self.window_s:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def wait_s(self, *keys: str) -> float:
        """Seconds until a login for these keys may be tried again (0: now)."""
        now = time.monotonic()
        with self._lock:
            waits = [
                self.window_s - (now - q[0])
                for q in (self._recent(k, now) for k in keys)
                if len(q) >= self.max_failures
            ]
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > _MAX_TRACKED:
                self._failures.clear()
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, name_key: str) -> None:
        with self._lock:
            self._failures.pop(name_key, None)
