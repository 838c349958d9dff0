"""Django REST framework: an authentication class and permission classes, no user table.

They read what :class:`ClerkTinybirdMiddleware` set on the request (it must be in
``MIDDLEWARE``); nothing is verified twice. In ``settings.py``::

    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": [
            "clerk_tinybird_middleware.django.ClerkAuthentication",
        ],
        # without django.contrib.auth installed (DRF's default is Django's AnonymousUser):
        "UNAUTHENTICATED_USER": "clerk_tinybird_middleware.django.AnonymousClerkUser",
    }

and in views::

    from clerk_tinybird_middleware.django import HasOrgPermission, HasOrgRole, IsSignedIn

    class Reports(APIView):
        permission_classes = [HasOrgRole("admin")]           # a class, made for the role
        def get(self, request):
            return Response({"user": request.user.id, "org": request.user.org_id})

    class Mine(APIView):
        permission_classes = [IsSignedIn & HasOrgPermission("org:reports:read")]

* ``request.user``: a :class:`ClerkUser` (``is_authenticated``, ``id`` = the Clerk user id,
  ``org_id``, ``org_slug``, ``org_role``, ``org_permissions``, ``has(...)``);
  ``request.auth``: the :class:`AuthResult`. A signed-out request is not authenticated by
  this class (``authenticate`` returns None), so other classes may still try.
* :class:`IsSignedIn`, and ``HasOrgRole(role)`` / ``HasOrgPermission(permission)`` —
  functions returning a permission *class* for that role or permission (DRF instantiates
  ``permission_classes`` itself; the classes compose with ``&``, ``|``, ``~``). A signed-out
  request raises ``NotAuthenticated`` with the README's 401 body (and ``WWW-Authenticate``
  from :class:`ClerkAuthentication`); a signed-in one lacking the org, role or permission is
  refused with the 403 body ``{"error": "forbidden", "reason": ..., "message": ...}`` (a
  composition with ``&``/``|``/``~`` keeps the decision but DRF answers its own 403 body).
"""

from __future__ import annotations

import functools
import logging
import types
from typing import Any

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import NotAuthenticated
from rest_framework.permissions import BasePermission

from ..core import responses
from ..models import AuthResult
from .users import AnonymousClerkUser, ClerkUser

__all__ = [
    "AnonymousClerkUser",
    "ClerkAuthentication",
    "ClerkUser",
    "HasOrgPermission",
    "HasOrgRole",
    "IsSignedIn",
]

logger = logging.getLogger("clerk_tinybird_middleware")


def _auth(request: Any) -> AuthResult | None:
    """The middleware's result for a DRF ``Request`` (or a Django ``HttpRequest``)."""
    django_request = getattr(request, "_request", request)
    auth = getattr(django_request, "clerk_auth", None)
    if isinstance(auth, AuthResult):
        return auth
    logger.warning(
        "clerk-tinybird: request.clerk_auth is not set (an OPTIONS request, an excluded path, "
        "or ClerkTinybirdMiddleware not in MIDDLEWARE): the request counts as signed out"
    )
    return None


def _signed_in(request: Any) -> AuthResult:
    """The signed-in result, or ``NotAuthenticated`` with the README's 401 body."""
    auth = _auth(request)
    if auth is None or auth.session is None:
        body, _ = responses.unauthenticated(auth)
        raise NotAuthenticated(detail=body)
    return auth


class ClerkAuthentication(BaseAuthentication):  # type: ignore[misc]
    """``request.user`` = :class:`ClerkUser`, ``request.auth`` = :class:`AuthResult` for a
    signed-in request; None (not authenticated by this class) otherwise."""

    def authenticate(self, request: Any) -> tuple[ClerkUser, AuthResult] | None:
        django_request = getattr(request, "_request", request)
        auth = getattr(django_request, "clerk_auth", None)
        if not isinstance(auth, AuthResult) or auth.session is None:
            return None
        return ClerkUser(auth.session), auth

    def authenticate_header(self, request: Any) -> str:
        django_request = getattr(request, "_request", request)
        auth = getattr(django_request, "clerk_auth", None)
        _, headers = responses.unauthenticated(auth if isinstance(auth, AuthResult) else None)
        return headers["WWW-Authenticate"]


class IsSignedIn(BasePermission):  # type: ignore[misc]
    """Signed in with Clerk (401 with the README's body otherwise)."""

    def has_permission(self, request: Any, view: Any) -> bool:
        _signed_in(request)
        return True


class _OrgPermission(BasePermission):  # type: ignore[misc]
    """Base of the classes :func:`HasOrgRole` and :func:`HasOrgPermission` make."""

    role: str | None = None
    permission: str | None = None
    message: Any = None

    def has_permission(self, request: Any, view: Any) -> bool:
        auth = _signed_in(request)
        assert auth.session is not None
        denied = responses.forbidden(auth.session, self.role, self.permission)
        if denied is None:
            return True
        self.message = denied  # DRF answers 403 with it as the body
        return False


@functools.cache
def _org_permission(role: str | None, permission: str | None) -> type[Any]:
    name = f"HasOrgRole({role!r})" if role is not None else f"HasOrgPermission({permission!r})"

    def body(namespace: dict[str, Any]) -> None:
        namespace.update(role=role, permission=permission, __module__=__name__)

    return types.new_class(name, (_OrgPermission,), exec_body=body)


def HasOrgRole(role: str) -> type[Any]:
    """A permission class: signed in, an active org, and ``role`` in it (with or without the
    ``org:`` prefix). ``permission_classes = [HasOrgRole("admin")]``."""
    if not isinstance(role, str) or not role:
        raise TypeError("HasOrgRole needs a role: HasOrgRole('admin')")
    return _org_permission(role, None)


def HasOrgPermission(permission: str) -> type[Any]:
    """A permission class: signed in, an active org granting ``permission``
    (``"org:reports:read"``). ``permission_classes = [HasOrgPermission("org:reports:read")]``."""
    if not isinstance(permission, str) or not permission:
        raise TypeError("HasOrgPermission needs a permission: HasOrgPermission('org:x:read')")
    return _org_permission(None, permission)
