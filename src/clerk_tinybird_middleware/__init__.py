"""Verify Clerk sessions locally and hand each tenant a cached Tinybird JWT — ASGI and WSGI."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .cache import MemoryTokenCache
from .clerk import ClerkTemplateSource
from .errors import ConfigurationError
from .models import AuthResult, ClerkSession, TinybirdToken
from .settings import Settings
from .tinybird import LocalTokenSource

if TYPE_CHECKING:
    from .asgi import ClerkTinybirdMiddleware
    from .redis_cache import RedisTokenCache
    from .wsgi import ClerkTinybirdWSGIMiddleware

__all__ = [
    "AuthResult",
    "ClerkSession",
    "ClerkTemplateSource",
    "ClerkTinybirdMiddleware",
    "ClerkTinybirdWSGIMiddleware",
    "ConfigurationError",
    "LocalTokenSource",
    "MemoryTokenCache",
    "RedisTokenCache",
    "Settings",
    "TinybirdToken",
]
try:
    __version__ = version("clerk-tinybird-middleware")
except PackageNotFoundError:  # pragma: no cover - running from a tree that is not installed
    __version__ = "0.0.0"

_LAZY = {
    # Imported on first use: redis is an optional extra, and WSGI users need no Starlette.
    "ClerkTinybirdMiddleware": "asgi",
    "ClerkTinybirdWSGIMiddleware": "wsgi",
    "RedisTokenCache": "redis_cache",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
