"""The example's URLs (``ROOT_URLCONF``), with the page's configuration from settings."""

from __future__ import annotations

from .views import Dashboard, routes

urlpatterns = routes(Dashboard.from_settings())
