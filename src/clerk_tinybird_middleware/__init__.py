"""Verify Clerk sessions locally and hand each tenant a cached Tinybird JWT — ASGI and WSGI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .asgi import ClerkTinybirdMiddleware
from .cache import MemoryTokenCache
from .clerk import ClerkTemplateSource
from .errors import ConfigurationError
from .models import AuthResult, ClerkSession, TinybirdToken
from .settings import Settings
from .tinybird import LocalTokenSource

if TYPE_CHECKING:
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
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use: redis is an optional extra, and WSGI users need no Starlette work.
    if name == "RedisTokenCache":
        from .redis_cache import RedisTokenCache

        return RedisTokenCache
    if name == "ClerkTinybirdWSGIMiddleware":
        from .wsgi import ClerkTinybirdWSGIMiddleware

        return ClerkTinybirdWSGIMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
