"""Django integration: a middleware, view decorators, system checks and Django REST framework
classes, all over the package's one engine.

::

    # settings.py
    INSTALLED_APPS = [..., "clerk_tinybird_middleware.django"]   # manage.py check
    MIDDLEWARE = [
        ...,
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "clerk_tinybird_middleware.django.ClerkTinybirdMiddleware",
        ...,
    ]
    CLERK_SECRET_KEY = "sk_live_..."          # any env name of the README, or the environment

    # views.py
    from clerk_tinybird_middleware.django import require_org, require_session

    @require_session
    def me(request):
        return JsonResponse(request.clerk_session.as_dict())

Names: :class:`ClerkTinybirdMiddleware`; decorators :func:`require_session`,
:func:`require_org`, :func:`require_tinybird_token`; :func:`settings_from_django`;
:class:`ClerkUser`, :class:`AnonymousClerkUser`; and, when Django REST framework is installed
(imported only when first used), ``ClerkAuthentication``, ``IsSignedIn``, ``HasOrgRole``,
``HasOrgPermission`` (see :mod:`clerk_tinybird_middleware.django.drf`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .conf import settings_from_django
from .decorators import require_org, require_session, require_tinybird_token
from .middleware import ClerkTinybirdMiddleware
from .users import AnonymousClerkUser, ClerkUser

if TYPE_CHECKING:
    from .drf import ClerkAuthentication, HasOrgPermission, HasOrgRole, IsSignedIn

__all__ = [
    "AnonymousClerkUser",
    "ClerkAuthentication",
    "ClerkTinybirdMiddleware",
    "ClerkUser",
    "HasOrgPermission",
    "HasOrgRole",
    "IsSignedIn",
    "require_org",
    "require_session",
    "require_tinybird_token",
    "settings_from_django",
]

_DRF_NAMES = frozenset({"ClerkAuthentication", "HasOrgPermission", "HasOrgRole", "IsSignedIn"})


def __getattr__(name: str) -> Any:
    if name in _DRF_NAMES:
        try:
            from . import drf
        except ImportError as error:
            if error.name is not None and error.name.startswith("rest_framework"):
                raise ImportError(
                    f"clerk_tinybird_middleware.django.{name} needs Django REST framework: "
                    "pip install djangorestframework"
                ) from error
            raise
        value = getattr(drf, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
