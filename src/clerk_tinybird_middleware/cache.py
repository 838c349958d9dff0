"""Token caches: in process (:class:`MemoryTokenCache`) or shared by a fleet (``RedisTokenCache``).

A cache hands out a fresh token or runs ``fetch`` — once per key however many requests ask at
the same time (single-flight). A token is fresh until ``exp - margin``; failures are not cached.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Protocol

from cachetools import FIFOCache

from .core.tokens import TokenError
from .models import TinybirdToken

__all__ = ["MemoryTokenCache", "TokenCache"]


class TokenCache(Protocol):
    """What the middleware needs of a cache. Every method must be safe to call concurrently."""

    def get(self, key: str) -> TinybirdToken | None:
        """A fresh token held in process, or None — without any I/O (the warm path)."""
        ...

    def get_or_fetch(
        self, key: str, fetch: Callable[[], TinybirdToken], margin: float
    ) -> TinybirdToken: ...

    async def aget_or_fetch(
        self, key: str, fetch: Callable[[], Awaitable[TinybirdToken]], margin: float
    ) -> TinybirdToken: ...


def fresh_until(token: TinybirdToken, margin: float) -> float:
    return token.expires_at.timestamp() - margin


class MemoryTokenCache:
    """An in-process cache of tokens, each used only while fresh (until ``exp - margin``).

    Thread-safe (WSGI servers call it from many threads) and event-loop-safe: concurrent
    misses for one key share one fetch, and a waiter that is cancelled (a client hanging up)
    neither cancels the fetch for the others nor leaves the key stuck.
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        # (token, fresh until): freshness is checked on read and a stale entry is overwritten
        # by the next fetch (which moves it to the back: FIFO evicts the longest-unrenewed).
        # Reading a FIFOCache mutates nothing, so reads take no lock; writes do.
        self._data: FIFOCache[str, tuple[TinybirdToken, float]] = FIFOCache(maxsize)
        self._lock = threading.Lock()
        self._tasks: dict[str, asyncio.Task[TinybirdToken]] = {}
        self._futures: dict[str, Future[TinybirdToken]] = {}

    def __repr__(self) -> str:
        return f"MemoryTokenCache(maxsize={self.maxsize}, size={len(self._data)})"

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> TinybirdToken | None:
        """The fresh token for ``key``, or None."""
        try:
            entry = self._data[key]  # one dict read: no lock, and no check-then-read race
        except KeyError:
            return None
        if entry[1] <= time.time():
            return None
        return entry[0]

    def set(self, key: str, token: TinybirdToken, margin: float) -> None:
        until = fresh_until(token, margin)
        if until <= time.time():
            return  # already due for renewal: caching it would only serve a stale token
        with self._lock:
            self._data[key] = (token, until)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    async def aget_or_fetch(
        self, key: str, fetch: Callable[[], Awaitable[TinybirdToken]], margin: float
    ) -> TinybirdToken:
        token = self.get(key)
        if token is not None:
            return token
        task = self._tasks.get(key)
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._afill(key, fetch, margin))
            self._tasks[key] = task
            task.add_done_callback(lambda t: self._forget_task(key, t))
        # shield: a cancelled waiter must not cancel the fetch the other waiters share.
        return await asyncio.shield(task)

    async def _afill(
        self, key: str, fetch: Callable[[], Awaitable[TinybirdToken]], margin: float
    ) -> TinybirdToken:
        token = await fetch()
        self.set(key, token, margin)
        return token

    def _forget_task(self, key: str, task: asyncio.Task[TinybirdToken]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" if all waiters left

    def get_or_fetch(
        self, key: str, fetch: Callable[[], TinybirdToken], margin: float
    ) -> TinybirdToken:
        token = self.get(key)
        if token is not None:
            return token
        with self._lock:
            future = self._futures.get(key)
            leader = future is None
            if future is None:
                future = self._futures[key] = Future()
        if not leader:
            return future.result()
        try:
            token = fetch()
            self.set(key, token, margin)
            future.set_result(token)
            return token
        except Exception as exc:
            future.set_exception(exc)
            raise
        except BaseException:
            # SystemExit, a server's timeout…: this thread's own business, not the followers'.
            future.set_exception(TokenError(TokenError.UNAVAILABLE, "the shared fetch was aborted"))
            raise
        finally:
            with self._lock:
                self._futures.pop(key, None)
