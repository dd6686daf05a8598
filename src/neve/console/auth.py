"""Console sessions and CSRF protection.

A signed-in browser holds one HttpOnly, SameSite=Strict cookie with a neve token: a session
token from the security manager's password login, or the token the user signed in with (a
programmatic access token or a key-pair JWT). Every request turns it into a ``RequestContext``
through the same ``authenticate_token`` the REST API uses, so the console sees exactly what the
token may see.

CSRF: every POST must carry a token derived from the session secret (an HMAC of the cookie's
token), in the form field ``csrf`` or the ``X-CSRF-Token`` header (htmx sends it). A page from
another site can neither read the cookie nor compute the token; SameSite=Strict is a second wall.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from neve.context import RequestContext
from neve.errors import AuthenticationError, NeveError

if TYPE_CHECKING:
    from neve.control.account import Account

COOKIE = "neve_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
#: Longest token accepted from a cookie or the sign-in form (a key-pair JWT fits).
MAX_TOKEN_CHARS = 4096


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: only a holder of the cookie's secret can compute it."""
    return hmac.new(session_token.encode(), b"neve-console-csrf", hashlib.sha256).hexdigest()


def session_token(request: Request) -> str | None:
    token = request.cookies.get(COOKIE)
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token


def context_for(account: Account, token: str) -> RequestContext:
    """The caller's context from the cookie's token, or ``AuthenticationError``."""
    return account.security.authenticate_token(token)


def sign_in(
    account: Account,
    *,
    user: str = "",
    password: str = "",
    token: str = "",
    role: str = "",
) -> tuple[str, RequestContext]:
    """Check a user and password (a new session token in ``role``, else the user's default) or
    an existing token (its own role); returns the token the cookie will hold and its context."""
    if token:
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError("the token is too long")
        return token.strip(), context_for(account, token.strip())
    if not user or not password:
        raise AuthenticationError("enter a user and a password, or a token")
    session = account.security.login_session(user, password, role=role or None)
    return session["token"], context_for(account, session["token"])


def sign_out(account: Account, token: str) -> None:
    """Revoke a session token; a programmatic token or JWT the user brought stays valid."""
    if token.startswith("nvs_"):
        try:
            account.security.logout(token)
        except NeveError:
            pass


def set_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/console",
    )


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")


def csrf_ok(request: Request, token: str, form_value: str | None) -> bool:
    """Whether a POST carries this session's CSRF token (form field or header)."""
    given = form_value or request.headers.get(CSRF_HEADER) or ""
    return hmac.compare_digest(given.encode(), csrf_token(token).encode())
