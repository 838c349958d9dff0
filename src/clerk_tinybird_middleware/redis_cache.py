"""A token cache shared by every process of a fleet, on Redis (``CLERK_TINYBIRD_REDIS_URL``).

The protocol is written once, as flows yielding :class:`~.core.ops.RedisCall` operations, and
run by the same drivers as every other flow. Layout, under ``prefix`` (default
``clerk_tinybird:``), ``<h>`` being a SHA-256 of the in-process cache key (no user or org id
appears in key names), in braces so a tenant's keys share one Redis Cluster hash slot:

* ``{<h>}:tok`` — the tenant's token (or a remembered failure), bound to its key by an HMAC
  with a secret derived from the instance's own secret; ``PX`` = until the token stops being
  handed out;
* ``{<h>}:lock`` — a random owner id, ``SET NX PX`` (a few seconds, above the 3 s upstream
  budget), deleted only by its owner (compare-and-delete script);
* ``pause:{<i>}`` — the instance-wide pause after a Clerk 429 (Clerk's limit is per instance).

Nothing else is stored, and every key has a TTL.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import math
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    import redis
    import redis.cluster
    import redis.connection
    from redis.backoff import NoBackoff
    from redis.connection import parse_url
    from redis.exceptions import RedisClusterException, ResponseError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "RedisTokenCache needs redis-py: pip install 'clerk-tinybird-middleware[redis]'"
    ) from exc

from .cache import MemoryTokenCache
from .core.jwt import MalformedJWT, strict_json_object
from .core.ops import DEFAULT_RETRY, Flow, Op, RedisCall, Sleep
from .core.tokens import Held, TokenError, exp_instant, token_from_jwt
from .errors import ConfigurationError

__all__ = ["RedisConnection", "RedisTokenCache"]

logger = logging.getLogger("clerk_tinybird_middleware")

#: Deletes the lock only if this process still owns it (it may have expired and been retaken).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: Stores the value (if it has time left) and releases the lock in one round trip.
_STORE = """
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""
# What a Redis outage looks like from redis-py: its own errors, the cluster client's (which do
# not derive from RedisError: bootstrap, slot coverage), and socket errors that slip through
# on some platforms. Never caught around the token fetch itself.
_REDIS_ERRORS = (redis.RedisError, RedisClusterException, OSError)
_REASON = "redis-unavailable"
_REDIS_THREADS = 8


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


@functools.lru_cache(maxsize=8)
def _tls_context(ca_certs: str | None, cert_reqs: str, check_hostname: bool) -> ssl.SSLContext:
    """One TLS context per process and CA (loading CAs costs ~25 ms of CPU; redis-py would
    build a context for every connection). Only your CA is trusted when you name one."""
    context = ssl.create_default_context(cafile=ca_certs)
    context.verify_mode = {
        "none": ssl.CERT_NONE,
        "optional": ssl.CERT_OPTIONAL,
        "required": ssl.CERT_REQUIRED,
    }.get(cert_reqs, ssl.CERT_REQUIRED)
    context.check_hostname = check_hostname and context.verify_mode != ssl.CERT_NONE
    return context


def _shared_tls_connection(context: ssl.SSLContext) -> type[redis.connection.Connection]:
    class SharedTLSConnection(redis.connection.SSLConnection):
        def _connect(self) -> Any:
            sock = redis.connection.Connection._connect(self)  # type: ignore[no-untyped-call]
            try:
                return context.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise

    return SharedTLSConnection


class RedisConnection:
    """One pooled redis-py client per process, for both drivers — standalone or Cluster.

    The blocking driver calls it directly; the async driver runs each command on a small
    thread pool of its own, so nothing is bound to an event loop (test clients and servers
    may start several), connections are made off the loop, and one pool of connections — and
    one TLS context, for ``rediss://`` — serves the whole process. Cluster mode is detected
    on first connect (``CLUSTER INFO``); then redis-py's ``RedisCluster`` routes each tenant's
    keys (one hash slot per tenant) and follows MOVED/ASK.
    """

    def __init__(self, url: str, *, socket_timeout: float) -> None:
        self.url = url
        self.socket_timeout = socket_timeout
        self.cluster: bool | None = None  # None: not connected yet
        self.tls_contexts = 0  # TLS contexts this connection built (for tests and docs)
        self._client: Any = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        mode = {None: "unknown", True: "cluster", False: "standalone"}[self.cluster]
        return f"RedisConnection(url={_redact(self.url)!r}, mode={mode})"

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "retry": Retry(NoBackoff(), 0),  # fail fast: the cache's bypass absorbs failover
        }
        url_options = parse_url(self.url)  # type: ignore[no-untyped-call]
        if url_options.get("connection_class") is redis.connection.SSLConnection:
            before = _tls_context.cache_info().currsize
            context = _tls_context(
                url_options.get("ssl_ca_certs"),
                str(url_options.get("ssl_cert_reqs") or "required"),
                bool(url_options.get("ssl_check_hostname", True)),
            )
            self.tls_contexts += _tls_context.cache_info().currsize - before
            options["connection_class"] = _shared_tls_connection(context)
        return options

    def _is_cluster(self, options: dict[str, Any]) -> bool:
        probe = redis.Redis.from_url(self.url, **options)
        try:
            probe.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        except ResponseError:  # cluster support disabled, or not allowed: standalone
            return False
        finally:
            probe.close()
        return True

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                options = self._options()
                cluster = self._is_cluster(options)  # connection errors propagate: ask again
                if cluster:
                    plain = "redis://" + self.url.split("://", 1)[1].split("?", 1)[0]
                    self._client = redis.cluster.RedisCluster(
                        url=plain if "connection_class" in options else self.url,
                        require_full_coverage=False,
                        **options,
                    )
                else:
                    self._client = redis.Redis.from_url(self.url, **options)
                self.cluster = cluster
            return self._client

    def sync_call(self, op: RedisCall) -> Any:
        return getattr(self.client(), op.method)(*op.args, **op.kwargs)

    async def async_call(self, op: RedisCall) -> Any:
        import asyncio

        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_REDIS_THREADS, thread_name_prefix="clerk-redis")
            pool = self._pool
        return await asyncio.get_running_loop().run_in_executor(pool, self.sync_call, op)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.close()


class RedisTokenCache:
    """Tinybird tokens shared by a fleet through Redis, with fleet-wide single-flight.

    Usage: set ``CLERK_TINYBIRD_REDIS_URL=redis://host:6379/0`` (or pass
    ``token_cache=RedisTokenCache(url)``). Redis must be trusted storage for secrets: values are
    bound to their keys (a value copied under another tenant's key is refused), but whoever can
    read Redis can read tokens.

    **In-process layer.** A :class:`MemoryTokenCache` sits in front of Redis, so a warm request
    never touches the network, and concurrent misses in one process make one Redis round.

    **Cross-process single-flight.** On a miss: read ``{<h>}:tok``; if absent, ``SET
    {<h>}:lock NX PX lock_timeout``. The winner fetches, stores the value with its TTL and
    deletes the lock (only if still its own). The others poll every ``poll_interval`` for the
    value and take the lock themselves if it disappears without one (the holder failed, or
    died and its lock expired). A waiter never waits longer than ``lock_timeout`` (a live
    holder always finishes within the 3 s upstream budget): past that it fetches on its own.
    Refresh ahead runs through the same lock, in the background.

    **Redis trouble** (down, refused, slow beyond ``socket_timeout``, erroring, an unreadable
    value): the request is served by the in-process layer and a direct fetch — never failed —
    and a warning is logged at most every 30 s. After a failure Redis is skipped for
    ``bypass_seconds`` so a dead server does not add a timeout to every cold request.

    **Redis Cluster / Valkey Cluster.** Give the URL of any node: cluster mode is detected on
    first connect. A tenant's value and lock share one hash slot, so the two-key scripts work;
    the instance-wide pause key lives in a slot of its own. A failed node costs the requests of
    its slots nothing but a direct fetch while the cluster fails over (bypass, as above).

    :param url: ``redis://``, ``rediss://`` or ``unix://`` URL of a server or of any node of a
        cluster; ``rediss://`` options as redis-py reads them (``ssl_ca_certs``,
        ``ssl_cert_reqs``, ``ssl_check_hostname`` — hostnames are checked unless you say no).
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
            raise ConfigurationError(
                f"lock_timeout must exceed the upstream budget ({DEFAULT_RETRY.budget} s)"
            )
        if poll_interval <= 0 or socket_timeout <= 0 or bypass_seconds < 0:
            raise ConfigurationError(
                "poll_interval and socket_timeout must be positive, bypass_seconds >= 0"
            )
        try:
            parse_url(url)  # type: ignore[no-untyped-call]  # a malformed URL fails at start-up, not on every request
        except ValueError:
            raise ConfigurationError(
                "CLERK_TINYBIRD_REDIS_URL must be a redis://, rediss:// or unix:// URL"
            ) from None
        self.prefix = prefix
        self.lock_timeout = lock_timeout
        self.poll_interval = poll_interval
        self.socket_timeout = socket_timeout
        self.bypass_seconds = bypass_seconds
        #: The in-process layer (see the class docstring); ``local.clear()`` drops it.
        self.local = MemoryTokenCache(maxsize)
        self.connection = RedisConnection(url, socket_timeout=socket_timeout)
        self._health_lock = threading.Lock()
        self._skip_until = 0.0  # monotonic; Redis is bypassed before this instant
        self._last_warning: float | None = None
        self._troubled = False

    def __repr__(self) -> str:
        return f"RedisTokenCache(url={_redact(self.connection.url)!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Disconnect the client's pool."""
        self.connection.close()

    # -- the TokenCache protocol ----------------------------------------------------------------

    def peek(self, key: str) -> Held | None:
        """The in-process layer only: a warm request never touches Redis."""
        return self.local.peek(key)

    def fill(
        self, key: str, fetch: Callable[[], Flow], *, refresh: bool, secret: bytes
    ) -> Generator[Op, Any, Held]:
        held = yield from self._fill(key, fetch, refresh, secret)
        if not (refresh and held.token is None):  # a failed refresh keeps the held token
            self.local.keep(key, held)
        return held

    def pause(self, instance: str, seconds: float | None) -> Generator[Op, Any, float | None]:
        if self._bypassed():
            return None
        pause_key = f"{self.prefix}pause:{{{instance}}}"
        try:
            if seconds is None:
                left_ms = yield self._call("pttl", pause_key)
                return left_ms / 1000 if isinstance(left_ms, int) and left_ms > 0 else None
            ms = max(1, math.ceil(seconds * 1000))
            yield self._call("set", pause_key, b"1", px=ms)
        except _REDIS_ERRORS as exc:
            self._failed(exc)
        return None

    # -- the protocol, once --------------------------------------------------------------------

    def _call(self, method: str, *args: Any, **kwargs: Any) -> RedisCall:
        return RedisCall(self.connection, method, args, kwargs)

    def keys(self, key: str) -> tuple[str, str]:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"{self.prefix}{{{digest}}}:tok", f"{self.prefix}{{{digest}}}:lock"

    def _fill(
        self, key: str, fetch: Callable[[], Flow], refresh: bool, secret: bytes
    ) -> Generator[Op, Any, Held]:
        if self._bypassed():
            direct: Held = yield from fetch()
            return direct
        value_key, lock_key = self.keys(key)
        owner = secrets.token_hex(16)
        try:
            claim = yield from self._claim(value_key, lock_key, owner, refresh, secret)
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            direct = yield from fetch()
            return direct
        if isinstance(claim, Held):
            self._recovered()
            return claim
        holds_lock = claim
        try:
            held: Held = yield from fetch()
        except Exception:
            if holds_lock:
                yield from self._quietly(self._call("eval", _RELEASE, 1, lock_key, owner))
            raise
        if refresh and held.token is None:  # a failed refresh stores nothing
            if holds_lock:
                yield from self._quietly(self._call("eval", _RELEASE, 1, lock_key, owner))
            return held
        payload, ttl_ms = self._encode(value_key, held, secret)
        stored = yield from self._quietly(
            self._call(
                "eval", _STORE, 2, value_key, lock_key, payload, ttl_ms, owner if holds_lock else ""
            )
        )
        if stored:
            self._recovered()
        return held

    def _claim(
        self, value_key: str, lock_key: str, owner: str, refresh: bool, secret: bytes
    ) -> Generator[Op, Any, Held | bool]:
        """A shared value, or whether this process holds the lock (False: fetch without it)."""
        lock_ms = max(1, math.ceil(self.lock_timeout * 1000))
        deadline = time.monotonic() + self.lock_timeout + 2 * self.poll_interval
        while True:
            raw, holder = yield self._call("mget", value_key, lock_key)
            held = self._decode(value_key, raw, secret)
            if held is not None and self._usable(held, refresh):
                return held
            if holder is None:
                if (yield self._call("set", lock_key, owner, nx=True, px=lock_ms)):
                    # The previous holder may have stored its value between MGET and SET.
                    raw = yield self._call("get", value_key)
                    held = self._decode(value_key, raw, secret)
                    if held is not None and self._usable(held, refresh):
                        yield self._call("eval", _RELEASE, 1, lock_key, owner)
                        return held
                    return True
                continue  # another process took the lock first: wait for its value
            if time.monotonic() >= deadline:
                # The holder we waited for is gone and a later one is fetching; waiting on
                # would break the bound on a request's wait, so fetch without the lock.
                return False
            yield Sleep(self.poll_interval)

    @staticmethod
    def _usable(held: Held, refresh: bool) -> bool:
        now = time.time()
        if now >= held.expires_at:
            return False
        # A refresh wants a newer token than the one due for renewal.
        return not refresh or held.token is None or now < held.refresh_at

    def _quietly(self, call: RedisCall) -> Generator[Op, Any, bool]:
        try:
            yield call
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        return True

    # -- values bound to their keys -----------------------------------------------------------

    @staticmethod
    def _mac(secret: bytes, value_key: str, body: bytes) -> str:
        return hmac.new(secret, value_key.encode() + b"\x00" + body, hashlib.sha256).hexdigest()

    def _encode(self, value_key: str, held: Held, secret: bytes) -> tuple[bytes, int]:
        if held.token is not None:
            data: dict[str, Any] = {
                "jwt": held.token.jwt,
                "exp": held.token.expires_at.timestamp(),
                "refresh_at": held.refresh_at,
            }
        else:
            data = {"error": held.error, "until": held.expires_at}
            if held.session_id is not None:
                return b"", 0  # a failure of one session only: not shared
        body = json.dumps(data, separators=(",", ":")).encode()
        ttl_ms = math.floor((held.expires_at - time.time()) * 1000)
        return self._mac(secret, value_key, body).encode() + b"." + body, max(ttl_ms, 0)

    def _decode(self, value_key: str, raw: Any, secret: bytes) -> Held | None:
        """The stored value if it is this key's and well formed, else None (a miss)."""
        if raw is None:
            return None
        try:
            blob = bytes(raw) if not isinstance(raw, str) else raw.encode()
            mac, _, body = blob.partition(b".")
            if not hmac.compare_digest(mac, self._mac(secret, value_key, body).encode()):
                raise ValueError("not this key's value")
            data = strict_json_object(body)
            if "jwt" in data:
                exp, refresh_at = exp_instant(data.get("exp")), exp_instant(data.get("refresh_at"))
                if not isinstance(data["jwt"], str) or exp is None or refresh_at is None:
                    raise ValueError("malformed")
                token = token_from_jwt(data["jwt"])  # re-applies the tenant guard
                held = Held.of(token, 0.0)
                held.refresh_at = min(refresh_at, held.expires_at)
                held.expires_at = min(held.expires_at, exp)
                return held
            until = exp_instant(data.get("until"))
            if data.get("error") not in TokenError.CACHEABLE or until is None:
                raise ValueError("malformed")
            return Held.failure(str(data["error"]), until)
        except (ValueError, TypeError, MalformedJWT, TokenError, OverflowError):
            logger.warning(
                "clerk-tinybird: an unreadable value in the Redis token cache was ignored",
                extra={"clerk_tinybird_reason": _REASON},
            )
            return None

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
                _redact(self.connection.url),
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
            logger.info(
                "clerk-tinybird: Redis token cache at %s is back", _redact(self.connection.url)
            )
