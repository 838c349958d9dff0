"""The Django app: add ``"clerk_tinybird_middleware.django"`` to ``INSTALLED_APPS`` for the
system checks (``manage.py check``). It has no models and no migrations."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["ClerkTinybirdConfig"]


class ClerkTinybirdConfig(AppConfig):  # type: ignore[misc]
    name = "clerk_tinybird_middleware.django"
    label = "clerk_tinybird"
    verbose_name = "Clerk + Tinybird"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
