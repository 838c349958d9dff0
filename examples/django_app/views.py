"""The example's views: the Starlette example's dashboard page and its ``/api/*`` endpoints,
guarded by the Django decorators (a function view, an ``async def`` view, a class-based view).

Each view gets the page's :class:`Dashboard` as a URL keyword (``path(..., {"dashboard": d})``),
so one process can serve several configurations (the demo, the tests).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings as django_settings
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View

from clerk_tinybird_middleware import ClerkSession, ConfigurationError, Settings
from clerk_tinybird_middleware.django import (
    require_org,
    require_session,
    require_tinybird_token,
    settings_from_django,
)

__all__ = ["Dashboard", "routes"]

# One dashboard, three backends: the page (and its /api/* calls) is the Starlette example's.
PAGE = Path(__file__).resolve().parent.parent / "starlette_app" / "index.html"
DEFAULT_PIPE = "analytics_hits"


@dataclass(frozen=True)
class Dashboard:
    """What the page and ``/api/hits`` need: where Tinybird is, which pipe, which header."""

    tinybird_url: str
    token_header: str
    pipe: str = DEFAULT_PIPE
    sign_in_url: str | None = None
    sign_out_url: str | None = None
    page_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        settings: Settings,
        *,
        pipe: str = DEFAULT_PIPE,
        sign_in_url: str | None = None,
        sign_out_url: str | None = None,
        page_config: Mapping[str, Any] | None = None,
    ) -> Dashboard:
        return cls(
            settings.tinybird_api_url,
            settings.token_header or "x-tinybird-token",
            pipe,
            sign_in_url,
            sign_out_url,
            dict(page_config or {}),
        )

    @classmethod
    def from_settings(cls) -> Dashboard:
        """From Django settings (and the environment): ``EXAMPLE_*`` for the page. A bad
        configuration is not this page's to report (``manage.py check`` imports the URLs
        too, and lists every problem): the defaults stand in for it."""
        try:
            settings = settings_from_django()
        except ConfigurationError:
            settings = Settings()
        return cls.of(
            settings,
            pipe=getattr(django_settings, "EXAMPLE_TINYBIRD_PIPE", None) or DEFAULT_PIPE,
            sign_in_url=getattr(django_settings, "EXAMPLE_SIGN_IN_URL", None),
            sign_out_url=getattr(django_settings, "EXAMPLE_SIGN_OUT_URL", None),
        )

    def page(self) -> str:
        config = {
            "tinybirdApiUrl": self.tinybird_url,
            "pipe": self.pipe,
            "tokenHeader": self.token_header,
            "signInUrl": self.sign_in_url,
            "signOutUrl": self.sign_out_url,
            **self.page_config,
        }
        return (
            PAGE.read_text(encoding="utf-8")
            .replace("FastAPI dependencies", "Django decorators")
            .replace("__CONFIG__", _script_json(config))
        )


def index(request: Any, dashboard: Dashboard) -> HttpResponse:
    """The dashboard; its script fetches ``/api/token`` and then the pipe."""
    return HttpResponse(dashboard.page())


def health(request: Any, dashboard: Dashboard) -> JsonResponse:
    """Excluded from the middleware (``CLERK_TINYBIRD_EXCLUDE_PATHS``): no verification."""
    return JsonResponse({"status": "ok"})


def token(request: Any, dashboard: Dashboard) -> JsonResponse:
    """Who is signed in. The token itself travels in the response headers, not here."""
    auth = request.clerk_auth
    session: ClerkSession | None = request.clerk_session
    return JsonResponse(
        {
            "signed_in": session is not None,
            "reason": auth.reason,
            "user_id": session.user_id if session else None,
            "org_id": session.org_id if session else None,
            "org_slug": session.org_slug if session else None,
            "org_role": session.org_role if session else None,
            "tinybird_token_error": request.tinybird_token_error,
        }
    )


@require_session
def me(request: Any, dashboard: Dashboard) -> JsonResponse:
    """Signed-in users only (401 otherwise)."""
    session: ClerkSession = request.clerk_session
    return JsonResponse(session.as_dict())


@method_decorator(require_org(role="admin"), name="get")
class OrgView(View):  # type: ignore[misc]
    """Admins of the active org only (401 signed out, 403 otherwise): a class-based view."""

    def get(self, request: Any, dashboard: Dashboard) -> JsonResponse:
        session: ClerkSession = request.clerk_session
        return JsonResponse(
            {"org_id": session.org_id, "org_slug": session.org_slug, "you": "admin"}
        )


@require_tinybird_token
async def hits(request: Any, dashboard: Dashboard) -> JsonResponse:
    """Query the pipe server side with the request's token (503 when there is none): an
    ``async def`` view (on the event loop under ASGI)."""
    async with httpx.AsyncClient(base_url=dashboard.tinybird_url, timeout=10) as client:
        answer = await client.get(
            f"/v0/pipes/{dashboard.pipe}.json",
            headers={"Authorization": f"Bearer {request.tinybird_token.jwt}"},
        )
    if answer.status_code != 200:
        return JsonResponse({"error": "tinybird_error", "status": answer.status_code}, status=502)
    body = answer.json()
    return JsonResponse({"rows": body.get("rows"), "data": body.get("data")})


def routes(dashboard: Dashboard) -> list[Any]:
    """The URL patterns, each view given ``dashboard``."""
    given = {"dashboard": dashboard}
    return [
        path("", index, given),
        path("health", health, given),
        path("api/token", token, given),
        path("api/me", me, given),
        path("api/org", OrgView.as_view(), given),
        path("api/hits", hits, given),
    ]


def _script_json(value: dict[str, Any]) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` break-out)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
