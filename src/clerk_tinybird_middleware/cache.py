"""The in-process token cache, :class:`MemoryTokenCache` (``RedisTokenCache`` shares one).

A cache holds, per key, a token (handed out until shortly before its ``exp``, refreshed ahead
of it) or a remembered failure; see :class:`~.core.tokens.Held`. Single-flight is not the
cache's job: the drivers run one fill per key however many requests wait (``Join``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from .core.lru import LRU
from .core.ops import Flow, Op
from .core.tokens import Held, TokenCache
from .models import TinybirdToken

__all__ = ["MemoryTokenCache", "TokenCache"]


class MemoryTokenCache:
    """Tokens in process, at most ``maxsize`` keys, least recently used evicted first.

    Thread-safe (WSGI servers call it from many threads) and lock-free to read. A request
    served from the middleware's memo marks its token used too, so a tenant whose sessions are
    active keeps its token.
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self._held: LRU[str, Held] = LRU(maxsize)

    def __repr__(self) -> str:
        return f"MemoryTokenCache(maxsize={self.maxsize}, size={len(self._held)})"

    def __len__(self) -> int:
        return len(self._held)

    def peek(self, key: str) -> Held | None:
        return self._held.get(key)

    def get(self, key: str) -> TinybirdToken | None:
        """The token held for ``key`` (fresh or due for refresh), or None."""
        held = self._held.get(key)
        return None if held is None else held.token

    def keep(self, key: str, held: Held) -> None:
        self._held.put(key, held)

    def set(self, key: str, token: TinybirdToken, margin: float) -> None:
        """Hold ``token`` for ``key``, refreshed from ``exp - margin``."""
        self.keep(key, Held.of(token, margin))

    def forget(self, key: str) -> None:
        self._held.pop(key)

    def clear(self) -> None:
        self._held.clear()

    def fill(
        self, key: str, fetch: Callable[[], Flow], *, refresh: bool, secret: bytes
    ) -> Generator[Op, Any, Held]:
        held: Held = yield from fetch()
        if not (refresh and held.token is None):  # a failed refresh keeps the held token
            self.keep(key, held)
        return held

    def pause(self, instance: str, seconds: float | None) -> Generator[Op, Any, float | None]:
        return None  # in process, the broker's own pause is the only one
        yield


_: type[TokenCache] = MemoryTokenCache
