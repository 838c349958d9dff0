"""A token cache shared by every process of a fleet, on Redis (``CLERK_TINYBIRD_REDIS_URL``).

The protocol is written once, as flows (generators yielding Redis commands and pauses, like the
core's flows), and driven by a blocking driver for WSGI threads and an ``await`` driver for
ASGI. Layout, under ``prefix`` (default ``clerk_tinybird:``), ``<h>`` being the
SHA-256 of the in-process cache key (so no user or org id appears in key names):

* ``tok:<h>`` — ``{"jwt": ..., "exp": ...}`` with ``PX`` = time left until the token is due for
  renewal (``exp - margin``): it vanishes the moment it would stop being served;
* ``lock:<h>`` — a random owner id, ``SET NX PX`` (a few seconds, above the 3 s upstream
  budget), deleted only by its owner (compare-and-delete script).

Nothing else is stored, and every key has a TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

try:
    import redis
    import redis.asyncio
    from redis.asyncio.connection import parse_url
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "RedisTokenCache needs redis-py: pip install 'clerk-tinybird-middleware[redis]'"
    ) from exc

from .cache import MemoryTokenCache, fresh_until
from .core.io import DEFAULT_RETRY, Sleep
from .core.tokens import TokenError, token_from_jwt
from .errors import ConfigurationError
from .models import TinybirdToken

__all__ = ["RedisTokenCache"]

logger = logging.getLogger("clerk_tinybird_middleware")

#: Deletes the lock only if this process still owns it (it may have expired and been retaken).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: Stores the token (if still fresh) and releases the lock in one round trip.
_STORE = """
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""
# What a Redis outage looks like from redis-py: its own errors, plus socket errors that slip
# through on some platforms. Never caught around the token fetch itself.
_REDIS_ERRORS = (redis.RedisError, OSError)
_REASON = "redis-unavailable"


@dataclass(frozen=True, slots=True)
class _Call:
    """A Redis command for a driver to run: ``client.<method>(*args, **kwargs)``."""

    method: str
    args: tuple[Any, ...] = field(repr=False)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Claim:
    """No shared token: this process must fetch; ``owner`` is set when it holds the lock."""

    owner: str | None


_Op: TypeAlias = _Call | Sleep
_Flow: TypeAlias = Generator[_Op, Any, Any]


def _redact(url: str) -> str:
    """The URL without its password (userinfo or ``?password=``), for reprs and logs."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = netloc.rpartition("@")[2]
            netloc = f"{user}:***@{host}"
        query = "&".join(
            "password=***" if pair.partition("=")[0].lower() == "password" else pair
            for pair in parts.query.split("&")
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable redis url>"


class RedisTokenCache:
    """Tinybird tokens shared by a fleet through Redis, with fleet-wide single-flight.

    Usage: set ``CLERK_TINYBIRD_REDIS_URL=redis://host:6379/0`` (or pass
    ``token_cache=RedisTokenCache(url)``). The ASGI path uses ``redis.asyncio``, the WSGI path
    the blocking client. Redis must be trusted: whoever can write to it can hand tokens out.

    **In-process layer.** A :class:`MemoryTokenCache` sits in front of Redis, so a warm request
    never touches the network, and concurrent misses in one process make one Redis round.
    It stays fresh the same way Redis does: each entry is kept only until ``exp - margin``, the
    instant its Redis copy expires too. Tokens never change under a key, so there is nothing
    to invalidate — on expiry the process asks Redis again (another process may already hold
    the renewed token), and only then takes the lock and calls upstream. Because every process
    ends up holding the same token, renewal falls due fleet-wide at once and is fetched once.

    **Cross-process single-flight.** On a miss: read ``tok:<h>``; if absent, ``SET lock:<h>
    NX PX lock_timeout``. The winner fetches, stores the token with its TTL and deletes the
    lock (only if still its own). The others poll every ``poll_interval`` for the token and
    take the lock themselves if it disappears without one (the holder failed, or died and its
    lock expired). A waiter never waits longer than ``lock_timeout`` (a live holder always
    finishes within the 3 s upstream budget): past that it fetches on its own, so a request
    waits at most ``lock_timeout`` plus one upstream call.

    **Redis trouble** (down, refused, slow beyond ``socket_timeout``, erroring): the request is
    served by the in-process layer and a direct fetch — never failed — and a warning is logged
    at most every 30 s. After a failure Redis is skipped for ``bypass_seconds`` so a dead
    server does not add a timeout to every cold request; then sharing resumes by itself.

    **Connections.** The WSGI path keeps one thread-safe pool. The ASGI path opens one short
    connection per cold miss (once per tenant per token lifetime per process), so nothing is
    bound to an event loop that may be gone and no socket outlives its use.

    :param url: ``redis://`` or ``rediss://`` URL of a standalone server (or a proxy to one).
    :param prefix: namespace of every key.
    :param lock_timeout: lock lifetime in seconds; must exceed the upstream budget (3 s).
    :param poll_interval: seconds between a waiter's looks at Redis.
    :param socket_timeout: connect and command timeout, in seconds.
    :param bypass_seconds: how long Redis is skipped after it failed.
    :param maxsize: size of the in-process layer.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "clerk_tinybird:",
        lock_timeout: float = 5.0,
        poll_interval: float = 0.03,
        socket_timeout: float = 0.5,
        bypass_seconds: float = 2.0,
        maxsize: int = 10_000,
    ) -> None:
        if lock_timeout <= DEFAULT_RETRY.budget:
            raise ValueError(
                f"lock_timeout must exceed the upstream budget ({DEFAULT_RETRY.budget} s)"
            )
        if poll_interval <= 0 or socket_timeout <= 0 or bypass_seconds < 0:
            raise ValueError(
                "poll_interval and socket_timeout must be positive, bypass_seconds >= 0"
            )
        try:
            parse_url(url)  # a malformed URL fails at start-up, not on every request
        except ValueError:
            raise ConfigurationError(
                "CLERK_TINYBIRD_REDIS_URL must be a redis://, rediss:// or unix:// URL"
            ) from None
        self._url = url
        self.prefix = prefix
        self.lock_timeout = lock_timeout
        self.poll_interval = poll_interval
        self.socket_timeout = socket_timeout
        self.bypass_seconds = bypass_seconds
        #: The in-process layer (see the class docstring); ``local.clear()`` drops it.
        self.local = MemoryTokenCache(maxsize)
        self._sync_client: redis.Redis | None = None
        self._sync_lock = threading.Lock()
        self._health_lock = threading.Lock()
        self._skip_until = 0.0  # monotonic; Redis is bypassed before this instant
        self._last_warning: float | None = None
        self._troubled = False

    def __repr__(self) -> str:
        return f"RedisTokenCache(url={_redact(self._url)!r}, prefix={self.prefix!r})"

    # -- the protocol of TokenCache -----------------------------------------------------------

    def get(self, key: str) -> TinybirdToken | None:
        """The in-process layer only: a warm request never touches Redis."""
        return self.local.get(key)

    def get_or_fetch(
        self, key: str, fetch: Callable[[], TinybirdToken], margin: float
    ) -> TinybirdToken:
        return self.local.get_or_fetch(key, lambda: self._shared(key, fetch, margin), margin)

    async def aget_or_fetch(
        self, key: str, fetch: Callable[[], Awaitable[TinybirdToken]], margin: float
    ) -> TinybirdToken:
        return await self.local.aget_or_fetch(
            key, lambda: self._ashared(key, fetch, margin), margin
        )

    def close(self) -> None:
        """Disconnect the blocking client's pool (the async path keeps no connections)."""
        with self._sync_lock:
            client, self._sync_client = self._sync_client, None
        if client is not None:
            client.close()

    # -- the protocol, once (flows) ---------------------------------------------------------------

    def _keys(self, key: str) -> tuple[str, str]:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}tok:{digest}", f"{self.prefix}lock:{digest}"

    def _claim(self, key: str, margin: float) -> _Flow:
        """Return a shared fresh token, or a :class:`_Claim` telling this process to fetch."""
        value_key, lock_key = self._keys(key)
        lock_ms = max(1, math.ceil(self.lock_timeout * 1000))
        deadline = time.monotonic() + self.lock_timeout + 2 * self.poll_interval
        owner = secrets.token_hex(16)
        while True:
            raw, holder = yield _Call("mget", (value_key, lock_key))
            token = _decode(raw, margin)
            if token is not None:
                return token
            if holder is None:
                if (yield _Call("set", (lock_key, owner), {"nx": True, "px": lock_ms})):
                    # The previous holder may have stored the token between MGET and SET.
                    token = _decode((yield _Call("get", (value_key,))), margin)
                    if token is not None:
                        yield _Call("eval", (_RELEASE, 1, lock_key, owner))
                        return token
                    return _Claim(owner)
                continue  # another process took the lock first: wait for its token
            if time.monotonic() >= deadline:
                # The holder we waited for is gone and a later one is fetching; waiting on
                # would break the bound on a request's wait, so fetch without the lock.
                return _Claim(None)
            yield Sleep(self.poll_interval)

    def _store(self, key: str, token: TinybirdToken, margin: float, owner: str | None) -> _Flow:
        value_key, lock_key = self._keys(key)
        ttl_ms = math.floor((fresh_until(token, margin) - time.time()) * 1000)
        payload = json.dumps({"jwt": token.jwt, "exp": token.expires_at.timestamp()})
        yield _Call("eval", (_STORE, 2, value_key, lock_key, payload, max(ttl_ms, 0), owner or ""))

    def _release(self, key: str, owner: str) -> _Flow:
        yield _Call("eval", (_RELEASE, 1, self._keys(key)[1], owner))

    # -- blocking driver (WSGI) -------------------------------------------------------------------

    def _client(self) -> redis.Redis:
        with self._sync_lock:
            if self._sync_client is None:
                self._sync_client = redis.Redis.from_url(
                    self._url,
                    socket_timeout=self.socket_timeout,
                    socket_connect_timeout=self.socket_timeout,
                    retry=Retry(NoBackoff(), 0),
                )
            return self._sync_client

    def _drive(self, flow: _Flow) -> Any:
        client = self._client()
        result: Any = None
        try:
            while True:
                op = flow.send(result)
                if isinstance(op, Sleep):
                    time.sleep(op.seconds)
                    result = None
                else:
                    result = getattr(client, op.method)(*op.args, **op.kwargs)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    def _shared(self, key: str, fetch: Callable[[], TinybirdToken], margin: float) -> TinybirdToken:
        if self._bypassed():
            return fetch()
        try:
            claim = self._drive(self._claim(key, margin))
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return fetch()
        if isinstance(claim, TinybirdToken):
            self._recovered()
            return claim
        owner = claim.owner
        try:
            token = fetch()
        except BaseException:
            if owner is not None:
                self._quietly(self._release(key, owner))
            raise
        if self._quietly(self._store(key, token, margin, owner)):
            self._recovered()
        return token

    def _quietly(self, flow: _Flow) -> bool:
        try:
            self._drive(flow)
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        return True

    # -- async driver (ASGI) ------------------------------------------------------------------

    def _aclient(self) -> redis.asyncio.Redis:
        # One connection per cold miss: see "Connections" in the class docstring.
        return redis.asyncio.Redis.from_url(
            self._url,
            single_connection_client=True,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            retry=AsyncRetry(NoBackoff(), 0),
        )

    async def _adrive(self, client: redis.asyncio.Redis, flow: _Flow) -> Any:
        result: Any = None
        try:
            while True:
                op = flow.send(result)
                if isinstance(op, Sleep):
                    await asyncio.sleep(op.seconds)
                    result = None
                else:
                    result = await getattr(client, op.method)(*op.args, **op.kwargs)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    async def _ashared(
        self, key: str, fetch: Callable[[], Awaitable[TinybirdToken]], margin: float
    ) -> TinybirdToken:
        if self._bypassed():
            return await fetch()
        client = self._aclient()
        try:
            try:
                claim = await self._adrive(client, self._claim(key, margin))
            except _REDIS_ERRORS as exc:
                self._failed(exc)
                return await fetch()
            if isinstance(claim, TinybirdToken):
                self._recovered()
                return claim
            try:
                token = await fetch()
            except BaseException:
                if claim.owner is not None:
                    await self._aquietly(client, self._release(key, claim.owner))
                raise
            if await self._aquietly(client, self._store(key, token, margin, claim.owner)):
                self._recovered()
            return token
        finally:
            await self._aclose(client)

    async def _aquietly(self, client: redis.asyncio.Redis, flow: _Flow) -> bool:
        try:
            await self._adrive(client, flow)
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        return True

    @staticmethod
    async def _aclose(client: redis.asyncio.Redis) -> None:
        with contextlib.suppress(*_REDIS_ERRORS):  # a broken connection is gone either way
            await client.aclose()

    # -- Redis health ---------------------------------------------------------------------------

    def _bypassed(self) -> bool:
        return time.monotonic() < self._skip_until

    def _failed(self, exc: BaseException) -> None:
        """Bypass Redis for a moment and warn, at most every 30 s (no message text: type only)."""
        now = time.monotonic()
        with self._health_lock:
            self._skip_until = now + self.bypass_seconds
            self._troubled = True
            warn = self._last_warning is None or now - self._last_warning >= 30
            if warn:
                self._last_warning = now
        if warn:
            logger.warning(
                "clerk-tinybird: Redis token cache at %s unavailable (%s); serving tokens from"
                " the in-process cache and fetching directly until it is back",
                _redact(self._url),
                type(exc).__name__,
                extra={"clerk_tinybird_reason": _REASON},
            )
        else:
            logger.debug(
                "clerk-tinybird: Redis token cache still unavailable (%s)", type(exc).__name__
            )

    def _recovered(self) -> None:
        with self._health_lock:
            back, self._troubled = self._troubled, False
        if back:
            logger.info("clerk-tinybird: Redis token cache at %s is back", _redact(self._url))


def _decode(raw: bytes | str | None, margin: float) -> TinybirdToken | None:
    """A stored token that is still fresh for this process, or None (absent, stale, garbage)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        jwt, exp = data["jwt"], data["exp"]
        if not isinstance(jwt, str) or isinstance(exp, bool) or not isinstance(exp, int | float):
            return None
        token = token_from_jwt(jwt)  # re-applies the tenant guard to what Redis hands back
    except (ValueError, TypeError, KeyError, TokenError):
        return None
    token = replace(token, expires_at=datetime.fromtimestamp(exp, tz=timezone.utc))
    return token if fresh_until(token, margin) > time.time() else None
