"""Configuration from Django settings, over the environment.

Every environment variable of the README may be a Django setting of the same name
(``CLERK_SECRET_KEY = "sk_live_..."`` in ``settings.py``). A setting that is absent or ``None``
falls back to the environment; one that is set wins. Strings are parsed as the environment's
(``"true"``, ``"a,b"``, JSON scopes); other values are taken as the field's value (``True``, a
list of paths, a list of scopes, a callable). Two settings hold objects instead of text:

* ``CLERK_TINYBIRD_TOKEN_SOURCE`` — a token source (e.g. ``LocalTokenSource(...)``) used
  instead of the one the settings describe;
* ``CLERK_TINYBIRD_TOKEN_CACHE`` — a token cache (e.g. ``RedisTokenCache(...)``).

Settings are read when the middleware is built (Django builds it once per handler: at
start-up under WSGI/ASGI, on the first request of each ``django.test.Client``), so
``override_settings`` plus a fresh test client sees new values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..core.tokens import TokenCache, TokenSource
from ..settings import Settings, raw_values

__all__ = [
    "TOKEN_CACHE_SETTING",
    "TOKEN_SOURCE_SETTING",
    "django_values",
    "merged_environ",
    "settings_from_django",
    "token_cache_from_django",
    "token_source_from_django",
]

TOKEN_SOURCE_SETTING = "CLERK_TINYBIRD_TOKEN_SOURCE"
TOKEN_CACHE_SETTING = "CLERK_TINYBIRD_TOKEN_CACHE"

_ENV_NAMES = tuple(Settings.env_names())


def _django_settings() -> Any:
    from django.conf import settings

    return settings


def django_values(django_settings: Any = None) -> dict[str, Any]:
    """The env-named Django settings that are set (not ``None``), by env name."""
    source = _django_settings() if django_settings is None else django_settings
    found: dict[str, Any] = {}
    for name in _ENV_NAMES:
        value = getattr(source, name, None)
        if value is not None:
            found[name] = value
    return found


def merged_environ(
    django_settings: Any = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The environment (default ``os.environ``) with the Django settings over it, by env name:
    what :func:`settings_from_django` reads, and what the system checks diagnose."""
    base = os.environ if environ is None else environ
    merged: dict[str, Any] = {name: base[name] for name in _ENV_NAMES if name in base}
    merged.update(django_values(django_settings))
    return merged


def settings_from_django(
    django_settings: Any = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """:class:`Settings` from Django settings named like the environment variables, over
    ``environ`` (default ``os.environ``).

    :raises ConfigurationError: for a bad value, naming the setting.
    """
    return Settings(**raw_values(merged_environ(django_settings, environ)))


def token_source_from_django(django_settings: Any = None) -> TokenSource | None:
    source = _django_settings() if django_settings is None else django_settings
    value: TokenSource | None = getattr(source, TOKEN_SOURCE_SETTING, None)
    return value


def token_cache_from_django(django_settings: Any = None) -> TokenCache | None:
    source = _django_settings() if django_settings is None else django_settings
    value: TokenCache | None = getattr(source, TOKEN_CACHE_SETTING, None)
    return value
