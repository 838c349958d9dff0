"""View decorators over what :class:`ClerkTinybirdMiddleware` set on the request.

For function views, sync or ``async def``; for class-based views through Django's
``method_decorator``::

    from django.utils.decorators import method_decorator
    from clerk_tinybird_middleware.django import require_org, require_session

    @require_session
    def me(request):
        return JsonResponse(request.clerk_session.as_dict())

    @require_org(role="admin")
    async def admin(request): ...

    @method_decorator(require_tinybird_token, name="dispatch")
    class Stats(View): ...

They answer with the JSON bodies of the README: 401 ``unauthenticated`` (with
``WWW-Authenticate``), 403 ``forbidden``, 503 ``tinybird_token_unavailable`` (with
``Retry-After`` after a Clerk 429) — the same as the Flask decorators and the middleware.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction
from django.http import JsonResponse

from ..core import responses
from ..models import AuthResult

__all__ = ["require_org", "require_session", "require_tinybird_token"]

logger = logging.getLogger("clerk_tinybird_middleware")

View = TypeVar("View", bound=Callable[..., Any])
Denial = Callable[[Any], Any]  # request -> a response, or None to run the view


def _json(status: int, body: Mapping[str, Any], headers: Mapping[str, str]) -> Any:
    response = JsonResponse(dict(body), status=status)
    for name, value in headers.items():
        response.headers[name] = value
    return response


def _auth(request: Any) -> AuthResult | None:
    auth = getattr(request, "clerk_auth", None)
    if not isinstance(auth, AuthResult):
        logger.warning(
            "clerk-tinybird: a guarded view ran without the middleware (an OPTIONS request, an"
            " excluded path, or ClerkTinybirdMiddleware not in MIDDLEWARE); answering 401"
        )
        return None
    return auth


def _render(denial: responses.Denial | None) -> Any:
    return None if denial is None else _json(denial.status, denial.body, denial.headers)


def _session_denial(request: Any) -> Any:
    return _render(responses.deny_session(_auth(request)))


def _org_denial(request: Any, role: str | None, permission: str | None) -> Any:
    return _render(responses.deny_org(_auth(request), role, permission))


def _token_denial(request: Any) -> Any:
    token = getattr(request, "tinybird_token", None)
    if token is not None:
        return None
    return _render(
        responses.token_denial(
            _auth(request),
            getattr(request, "tinybird_token_error", None),
            getattr(request, "tinybird_token_retry_after", None),
        )
    )


def _request_of(view: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    request = args[0] if args else None
    if not hasattr(request, "META"):
        name = getattr(view, "__qualname__", repr(view))
        raise TypeError(
            f"{name} did not receive an HttpRequest: decorate methods of class-based views "
            "with django.utils.decorators.method_decorator"
        )
    return request


def _guard(view: View, deny: Denial) -> View:
    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            denied = deny(_request_of(view, args))
            return denied if denied is not None else await view(*args, **kwargs)

        return cast("View", guarded_async)

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        denied = deny(_request_of(view, args))
        if denied is None:
            return view(*args, **kwargs)
        # ``method_decorator(..., name="dispatch")`` on an async class-based view: dispatch
        # is sync but Django awaits what it returns.
        return _awaitable(denied) if _async_owner(view) else denied

    return cast("View", guarded)


def _async_owner(view: Callable[..., Any]) -> bool:
    """True for a method of an async class-based view, as ``method_decorator`` passes it."""
    target: Any = view
    while isinstance(target, functools.partial):
        target = target.func
    return bool(getattr(getattr(target, "__self__", None), "view_is_async", False))


async def _awaitable(response: Any) -> Any:
    return response


def require_session(view: View) -> View:
    """Decorator: 401 (JSON, ``WWW-Authenticate``) unless the request is signed in."""
    return _guard(view, _session_denial)


def require_org(role: str | None = None, permission: str | None = None) -> Callable[[View], View]:
    """Decorator factory: 401 when signed out; 403 without an active org, or lacking ``role``
    (with or without the ``org:`` prefix) or ``permission``. Use it called:
    ``@require_org()``, ``@require_org(role="admin")``."""
    if callable(role):
        raise TypeError("require_org must be called: use @require_org() or @require_org(role=...)")

    def decorate(view: View) -> View:
        return _guard(view, lambda request: _org_denial(request, role, permission))

    return decorate


def require_tinybird_token(view: View) -> View:
    """Decorator: the view runs only with ``request.tinybird_token`` set (the anonymous token
    counts). Otherwise 401 when signed out, else 503 ``{"error":
    "tinybird_token_unavailable", "reason": code}`` (with ``Retry-After`` after a Clerk 429)."""
    return _guard(view, _token_denial)
