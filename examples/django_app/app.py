"""A Django app that hands each signed-in tenant its own Tinybird JWT — the Django twin of
``examples/starlette_app`` and ``examples/flask_app`` (same page, same endpoints).

Run it against real Clerk and Tinybird (everything from ``settings.py`` / the environment, see
the README)::

    CLERK_SECRET_KEY=sk_... TINYBIRD_API_URL=https://api.tinybird.co \\
        python examples/django_app/manage.py runserver            # WSGI
    uvicorn django_app.asgi:application --app-dir examples        # ASGI

or with no account at all: ``clerk-tinybird demo --app django``.

What it shows:

* ``settings.py`` — one line in ``MIDDLEWARE``: every request is verified,
  ``request.clerk_session`` and ``request.tinybird_token`` are set, and a signed-in response
  gets ``x-tinybird-token`` / ``x-tinybird-token-expires-at`` headers; ``manage.py check``
  reports any configuration problem (``clerk_tinybird.E0xx``);
* ``views.py`` — ``/`` is the Starlette example's page (its script reads the token from those
  headers and queries a Tinybird pipe from the browser); ``/api/me``, ``/api/org``,
  ``/api/hits`` are guarded by the decorators (signed in; org admin, a class-based view; a
  Tinybird token, used server side by an ``async def`` view);
* another origin (a separate SPA) needs CORS with both token headers exposed: with
  django-cors-headers, ``CORS_EXPOSE_HEADERS = ["x-tinybird-token",
  "x-tinybird-token-expires-at"]`` and ``CORS_ALLOW_CREDENTIALS = True``.

:func:`create_app` builds the same project as a WSGI application from a :class:`Settings`
object, for the demo and the tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import django
from django.apps import apps
from django.conf import settings as django_settings
from django.core.handlers.wsgi import WSGIHandler

from clerk_tinybird_middleware import Settings
from clerk_tinybird_middleware.django import ClerkTinybirdMiddleware, settings_from_django

from .views import DEFAULT_PIPE, Dashboard, routes

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    pipe: str = DEFAULT_PIPE,
    sign_in_url: str | None = None,
    sign_out_url: str | None = None,
    page_config: Mapping[str, Any] | None = None,
) -> Any:
    """The example as a WSGI application. ``settings=None`` reads Django settings over the
    environment; a :class:`Settings` replaces them for this application only.

    Django is set up with ``django_app.settings`` unless it already is (another
    ``DJANGO_SETTINGS_MODULE``, a test suite): the app routes with its own URLs either way.

    :param pipe: the Tinybird pipe the page and ``/api/hits`` query.
    :param sign_in_url: where the page sends signed-out users (your Clerk sign-in page).
    :param sign_out_url: a URL the page's "Sign out" button POSTs to, if any.
    :param page_config: more keys for the page script's configuration (the demo passes the
        orgs to try in "read another tenant" and the URL of its handshake report).
    """
    if not django_settings.configured:
        # This package's own settings, whatever it is imported as (django_app from
        # examples/, or clerk_tinybird_middleware.examples.django_app from the wheel).
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", f"{__package__}.settings")
    if not apps.ready:
        django.setup()
    resolved = settings if settings is not None else settings_from_django()
    dashboard = Dashboard.of(
        resolved,
        pipe=pipe,
        sign_in_url=sign_in_url,
        sign_out_url=sign_out_url,
        page_config=page_config,
    )
    # The middleware of this application gets these settings, not Django's (it is built now).
    with ClerkTinybirdMiddleware.configured(resolved, exclude_paths=("/health",)):
        return _Application(_URLConf(routes(dashboard)))


class _URLConf:
    """A URL configuration object (what ``request.urlconf`` may hold instead of a module)."""

    def __init__(self, urlpatterns: list[Any]) -> None:
        self.urlpatterns = urlpatterns


class _Application(WSGIHandler):  # type: ignore[misc]
    """Django's WSGI handler, routing every request with this application's URLs."""

    def __init__(self, urlconf: _URLConf) -> None:
        self.urlconf = urlconf
        super().__init__()

    def get_response(self, request: Any) -> Any:
        request.urlconf = self.urlconf
        return super().get_response(request)
