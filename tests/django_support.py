"""Django for the tests: configured once per process (:func:`setup`), and the views and URLs
the Django tests route to (this module is their ``ROOT_URLCONF``).

Django's settings are process-wide, so each test applies what it needs with
``override_settings`` (:func:`overrides`) whoever configured Django first — these tests, or
an example app built in the same process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import django
import jwt as pyjwt
from django.conf import settings

from constants import ORG

if TYPE_CHECKING:
    from clerk_tinybird_middleware.testing import FakeClerk

MIDDLEWARE_PATH = "clerk_tinybird_middleware.django.ClerkTinybirdMiddleware"
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    MIDDLEWARE_PATH,
]
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["clerk_tinybird_middleware.django.ClerkAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": "clerk_tinybird_middleware.django.AnonymousClerkUser",
}
STATE_NAMES = (
    "clerk_auth",
    "clerk_session",
    "tinybird_token",
    "tinybird_token_error",
    "tinybird_token_retry_after",
)


def setup() -> None:
    """Configure Django once for this process (no database, no contrib apps)."""
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="django-tests-only-not-a-secret",
            ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"],
            ROOT_URLCONF="django_support",
            MIDDLEWARE=MIDDLEWARE,
            INSTALLED_APPS=["clerk_tinybird_middleware.django", "rest_framework"],
            DATABASES={},
            USE_TZ=True,
            REST_FRAMEWORK=REST_FRAMEWORK,
            LOGGING_CONFIG=None,
        )
    django.setup()


def pk_live(fake_clerk: FakeClerk) -> str:
    return "pk_live_" + base64.b64encode(f"{fake_clerk.frontend_api}$".encode()).decode()


def handshake_token(fake_clerk: FakeClerk, directives: list[str]) -> str:
    """A legacy ``__clerk_handshake`` JWT, signed with the instance's key as Clerk does."""
    return pyjwt.encode(
        {"handshake": directives},
        fake_clerk.private_key,
        algorithm="RS256",
        headers={"kid": fake_clerk.kid},
    )


def directives_for(fake_clerk: FakeClerk) -> list[str]:
    fresh = fake_clerk.session_token("user_hs", org=ORG)
    return [
        f"__session={fresh}; Path=/; SameSite=Lax; Secure",
        "__client_uat=1700000000; Path=/; Max-Age=315360000; SameSite=Lax; Secure",
        "__client_uat=0; Path=/; Domain=example.test; Max-Age=0",
    ]


def overrides(**extra: Any) -> dict[str, Any]:
    """The settings every Django test runs under, plus ``extra``."""
    return {
        "ROOT_URLCONF": "django_support",
        "MIDDLEWARE": MIDDLEWARE,
        "REST_FRAMEWORK": REST_FRAMEWORK,
        "ALLOWED_HOSTS": ["testserver", "127.0.0.1", "localhost"],
        **extra,
    }


setup()

# -- views (imported after setup: DRF reads settings at import) ----------------------------------

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.decorators import method_decorator  # noqa: E402
from django.views import View  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from clerk_tinybird_middleware.django import (  # noqa: E402
    HasOrgPermission,
    HasOrgRole,
    IsSignedIn,
    require_org,
    require_session,
    require_tinybird_token,
)


class SyncOnlyMiddleware:
    """A third-party style middleware that cannot run async: under ASGI, Django then runs
    the middleware before it (ours) in sync mode, on a worker thread."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        response = self.get_response(request)
        response["X-Sync-Only"] = "1"
        return response


#: Threads that ran views (the ASGI test shows async views stay on the event loop).
VIEW_THREADS: set[str] = set()


def _state(request: Any) -> dict[str, Any]:
    auth = getattr(request, "clerk_auth", None)
    session = getattr(request, "clerk_session", None)
    token = getattr(request, "tinybird_token", None)
    return {
        "has": {name: hasattr(request, name) for name in STATE_NAMES},
        "status": auth.status if auth else None,
        "reason": auth.reason if auth else None,
        "user": session.user_id if session else None,
        "org": session.org_id if session else None,
        "token": token.jwt if token else None,
        "anonymous": token.anonymous if token else None,
        "error": getattr(request, "tinybird_token_error", None),
        "retry_after": getattr(request, "tinybird_token_retry_after", None),
    }


def _state_response(request: Any) -> HttpResponse:
    VIEW_THREADS.add(threading.current_thread().name)
    response = JsonResponse(_state(request))
    response["Cache-Control"] = "public, max-age=60"
    response["Vary"] = "Accept-Encoding"
    response["CDN-Cache-Control"] = "max-age=600"
    return response


def state(request: Any) -> HttpResponse:
    return _state_response(request)


async def state_async(request: Any) -> HttpResponse:
    await asyncio.sleep(0)
    return _state_response(request)


def _ok(request: Any) -> dict[str, Any]:
    session = request.clerk_session
    return {"ok": True, "user": session.user_id if session else None}


def ok(request: Any) -> JsonResponse:
    return JsonResponse(_ok(request))


async def ok_async(request: Any) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse(_ok(request))


class OkView(View):  # type: ignore[misc]
    def get(self, request: Any) -> JsonResponse:
        return JsonResponse(_ok(request))


class OkAsyncView(View):  # type: ignore[misc]
    async def get(self, request: Any) -> JsonResponse:
        await asyncio.sleep(0)
        return JsonResponse(_ok(request))


def decorated(view: type[Any], decorator: Any, name: str) -> Any:
    """``method_decorator(decorator, name=name)`` on a subclass (it changes the class it
    decorates), as a view function."""
    subclass = type(view.__name__, (view,), {})
    return method_decorator(decorator, name=name)(subclass).as_view()


def stream(request: Any) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        for n in range(3):
            yield f"chunk-{n};".encode()

    response = StreamingHttpResponse(chunks(), content_type="text/plain")
    response["Cache-Control"] = "public, max-age=60"
    return response


async def stream_async(request: Any) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for n in range(3):
            await asyncio.sleep(0)
            yield f"chunk-{n};".encode()

    response = StreamingHttpResponse(chunks(), content_type="text/plain")
    response["Cache-Control"] = "public, max-age=60"
    return response


def page(request: Any) -> HttpResponse:
    """A server-rendered page (the handshake's target)."""
    session = getattr(request, "clerk_session", None)
    return HttpResponse(f"<p>{session.user_id if session else 'signed out'}</p>")


def raw_state(request: Any) -> HttpResponse:
    """The state as JSON, with Set-Cookie set by the view itself too."""
    response = HttpResponse(json.dumps(_state(request)), content_type="application/json")
    response.set_cookie("app_cookie", "1")
    return response


class DrfMe(APIView):  # type: ignore[misc]
    permission_classes = [IsSignedIn]

    def get(self, request: Any) -> Response:
        user = request.user
        return Response(
            {
                "id": user.id,
                "pk": user.pk,
                "is_authenticated": user.is_authenticated,
                "org_id": user.org_id,
                "org_role": user.org_role,
                "auth_status": request.auth.status,
            }
        )


class DrfWho(APIView):  # type: ignore[misc]
    """Open to everyone: what DRF sees."""

    def get(self, request: Any) -> Response:
        user = request.user
        return Response(
            {
                "type": type(user).__name__,
                "is_authenticated": user.is_authenticated,
                "id": user.id,
                "auth": request.auth.status if request.auth is not None else None,
            }
        )


class DrfAdmin(APIView):  # type: ignore[misc]
    permission_classes = [HasOrgRole("admin")]

    def get(self, request: Any) -> Response:
        return Response({"ok": True, "org": request.user.org_id})


class DrfReports(APIView):  # type: ignore[misc]
    permission_classes = [IsSignedIn & HasOrgPermission("org:reports:read")]

    def get(self, request: Any) -> Response:
        return Response({"ok": True})


class DrfAdminOrOwner(APIView):  # type: ignore[misc]
    permission_classes = [HasOrgRole("owner") | HasOrgRole("admin")]

    def get(self, request: Any) -> Response:
        return Response({"ok": True})


class DrfNotAdmin(APIView):  # type: ignore[misc]
    permission_classes = [IsSignedIn & ~HasOrgRole("admin")]

    def get(self, request: Any) -> Response:
        return Response({"ok": True})


urlpatterns = [
    path("state", state),
    path("async/state", state_async),
    path("health/state", state),
    path("stream", stream),
    path("async/stream", stream_async),
    path("page", page),
    path("raw", raw_state),
    path("me", require_session(ok)),
    path("admin", require_org(role="admin")(ok)),
    path("reports", require_org(permission="org:reports:read")(ok)),
    path("org", require_org()(ok)),
    path("pipe", require_tinybird_token(ok)),
    path("async/me", require_session(ok_async)),
    path("async/admin", require_org(role="admin")(ok_async)),
    path("async/reports", require_org(permission="org:reports:read")(ok_async)),
    path("async/org", require_org()(ok_async)),
    path("async/pipe", require_tinybird_token(ok_async)),
    path("cbv/me", decorated(OkView, require_session, "get")),
    path("cbv/admin", decorated(OkView, require_org(role="admin"), "get")),
    path("cbv/pipe", decorated(OkView, require_tinybird_token, "dispatch")),
    path("cbv/async/me", decorated(OkAsyncView, require_session, "get")),
    path("cbv/async/admin", decorated(OkAsyncView, require_org(role="admin"), "get")),
    path("cbv/async/pipe", decorated(OkAsyncView, require_tinybird_token, "dispatch")),
    path("drf/me", DrfMe.as_view()),
    path("drf/who", DrfWho.as_view()),
    path("drf/admin", DrfAdmin.as_view()),
    path("drf/reports", DrfReports.as_view()),
    path("drf/admin-or-owner", DrfAdminOrOwner.as_view()),
    path("drf/not-admin", DrfNotAdmin.as_view()),
]
