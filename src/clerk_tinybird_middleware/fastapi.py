"""FastAPI dependencies over what :class:`ClerkTinybirdMiddleware` put in ``request.state``.

They only read ``request.state``, so ``app.dependency_overrides`` replace them cleanly in
tests. Errors are ``HTTPException`` s whose ``detail`` carries the middleware's JSON error
bodies (README, "Errors")::

    @app.get("/api/stats")
    async def stats(session: SessionDep, token: TinybirdTokenDep) -> dict[str, str]:
        ...

    @app.get("/admin", dependencies=[Depends(require_org(role="admin"))])
    async def admin() -> None: ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, NoReturn

from fastapi import Depends, HTTPException, Request

from .core import responses
from .core.claims import Reason
from .models import AuthResult, ClerkSession, TinybirdToken

logger = logging.getLogger("clerk_tinybird_middleware")
_NOT_AUTHENTICATED = AuthResult.signed_out(
    Reason.TOKEN_MISSING, "The Clerk middleware did not authenticate this request."
)

__all__ = [
    "SessionDep",
    "TinybirdTokenDep",
    "get_auth",
    "get_session",
    "get_tinybird_token",
    "require_org",
    "require_session",
    "require_tinybird_token",
]


def get_auth(request: Request) -> AuthResult:
    """The request's :class:`AuthResult`, set by the middleware.

    Where the middleware did not run (an excluded path, an OPTIONS request, or no middleware
    at all), the request counts as signed out — guarded routes answer 401, never 500 — and a
    warning says why.
    """
    auth = getattr(request.state, "clerk_auth", None)
    if isinstance(auth, AuthResult):
        return auth
    logger.warning(
        "clerk-tinybird: request.state.clerk_auth is not set for %s: is ClerkTinybirdMiddleware "
        "installed, and the path not excluded?",
        request.url.path,
    )
    return _NOT_AUTHENTICATED


def get_session(auth: Annotated[AuthResult, Depends(get_auth)]) -> ClerkSession | None:
    """The verified session, or None when signed out."""
    return auth.session


def get_tinybird_token(request: Request) -> TinybirdToken | None:
    """The Tinybird token handed out for this request, or None."""
    return getattr(request.state, "tinybird_token", None)


def _raise(denial: responses.Denial) -> NoReturn:
    raise HTTPException(denial.status, detail=denial.body, headers=denial.headers)


def require_session(auth: Annotated[AuthResult, Depends(get_auth)]) -> ClerkSession:
    """The session; 401 (with ``WWW-Authenticate``) when signed out."""
    if auth.session is None:
        _raise(responses.unauthenticated_denial(auth))
    return auth.session


def require_org(
    role: str | None = None, permission: str | None = None
) -> Callable[[ClerkSession], ClerkSession]:
    """A dependency: 401 when signed out, 403 without an active org, ``role`` or
    ``permission`` (``role`` with or without the ``org:`` prefix)."""

    def dependency(session: Annotated[ClerkSession, Depends(require_session)]) -> ClerkSession:
        denied = responses.deny_membership(session, role, permission)
        if denied is not None:
            _raise(denied)
        return session

    return dependency


def require_tinybird_token(
    request: Request, auth: Annotated[AuthResult, Depends(get_auth)]
) -> TinybirdToken:
    """The Tinybird token; 401 when signed out (and no anonymous token), 503 with the reason
    (and ``Retry-After`` after a Clerk 429) when it could not be had."""
    token = get_tinybird_token(request)
    if token is None:
        state = request.state
        _raise(
            responses.token_denial(
                auth,
                getattr(state, "tinybird_token_error", None),
                getattr(state, "tinybird_token_retry_after", None),
            )
        )
    return token


SessionDep = Annotated[ClerkSession, Depends(require_session)]
TinybirdTokenDep = Annotated[TinybirdToken, Depends(require_tinybird_token)]
