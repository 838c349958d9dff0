"""The pure ASGI middleware (Starlette, FastAPI, any ASGI app)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Hashable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .core.request import RequestAuth, is_preflight, request_url
from .core.responses import HeaderRule
from .core.tokens import TokenCache, TokenSource
from .drivers import AsyncDriver
from .engine import Engine
from .errors import ConfigurationError
from .settings import SettingOverrides, Settings

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ClerkTinybirdMiddleware"]

logger = logging.getLogger("clerk_tinybird_middleware")


def _latin1(text: str) -> bytes:
    return text.encode("latin-1")


class ClerkTinybirdMiddleware:
    """Verify the Clerk session of every HTTP and WebSocket request and attach the tenant's
    Tinybird JWT.

    What is trusted: only session tokens that verify against your Clerk instance's keys
    (``CLERK_JWT_KEY``, or the JWKS fetched with ``CLERK_SECRET_KEY``) and pass every claim
    check of the README. Nothing from the request is trusted otherwise; a rejected token is
    a signed-out request with a reason code, never an error. ``X-Forwarded-Proto``/``-Host``
    are read only to build the handshake's ``redirect_url`` (which Clerk checks against the
    instance's allowed origins), as Clerk's own SDKs do.

    Per request, ``request.state`` (``scope["state"]``) gets ``clerk_auth`` (an
    :class:`AuthResult`), ``clerk_session``, ``tinybird_token`` and ``tinybird_token_error``.
    A response carrying a token gets ``x-tinybird-token``, ``x-tinybird-token-expires-at``,
    ``Cache-Control: private, no-store`` (and ``no-store`` for CDNs) and
    ``Vary: Cookie, Authorization``; the body is streamed through untouched. A page load with a
    stale session cookie is answered with Clerk's handshake (a 307) when a publishable key is
    set. Background token refreshes are cancelled at lifespan shutdown.

    Usage::

        app.add_middleware(ClerkTinybirdMiddleware)  # everything from the environment
        app.add_middleware(ClerkTinybirdMiddleware, require_auth=True, exclude_paths=("/health",))

    :param settings: a :class:`Settings`; default ``Settings.from_env()``.
    :param token_source: where Tinybird tokens come from; default per the settings
        (local minting, else the Clerk JWT template, else none).
    :param token_cache: default :class:`MemoryTokenCache`, or Redis when ``redis_url`` is set.
    :param setting_overrides: single :class:`Settings` fields, e.g. ``require_auth=True``.
    :raises ConfigurationError: at construction, for a bad or missing setting (also logged at
        ERROR: Starlette builds middleware lazily, and ``uvicorn --lifespan auto`` would
        otherwise hide it).
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        token_source: TokenSource | None = None,
        token_cache: TokenCache | None = None,
        **setting_overrides: Unpack[SettingOverrides],
    ) -> None:
        self.app = app
        try:
            self.engine = Engine(
                settings, token_source=token_source, token_cache=token_cache, **setting_overrides
            )
        except ConfigurationError as error:
            logger.error("clerk-tinybird: configuration error: %s", error)
            raise
        self.driver = AsyncDriver(self.engine.metrics)
        self._rule = HeaderRule(self.engine.token_header, _latin1)

    def __repr__(self) -> str:
        return f"ClerkTinybirdMiddleware(app={self.app!r}, engine={self.engine!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                receive = self._watch_lifespan(receive)
            await self.app(scope, receive, send)
            return
        engine = self.engine
        headers = scope["headers"]
        if scope.get("method") == "OPTIONS" or engine.skips_paths:
            method = scope.get("method", "GET")
            preflight = method == "OPTIONS" and is_preflight(
                _header(headers, b"origin"), _header(headers, b"access-control-request-method")
            )
            if engine.skips(method, scope["path"], preflight):
                await self.app(scope, receive, send)
                return
        authorization = cookie = None
        for name, value in headers:
            if name == b"cookie":  # HTTP/2 may split cookies over several headers
                cookie = value if cookie is None else cookie + b"; " + value
            elif name == b"authorization":
                authorization = value
        result = engine.warm(scope.get("query_string"), authorization, cookie)
        if result is None:
            view = _Request(scope, kind, authorization, cookie)
            result = await self.driver.run(engine.cold(view))
        state = scope.get("state")
        if state is None:
            scope["state"] = dict(result.state)
        else:
            state.update(result.state)
        if result.answer is not None:
            await self._answer(kind, result, send)
            return
        if not result.tail or kind != "http":
            await self.app(scope, receive, send)
            return
        tail = result.encoded.get("asgi")
        if tail is None:
            tail = result.encoded["asgi"] = self._rule.encoded(result.tail)
        merge = self._rule.merge

        def send_with_token(message: Message) -> Awaitable[None]:
            # A plain function handing back send's awaitable: no extra coroutine per message.
            if message["type"] == "http.response.start":
                message["headers"] = merge(message.get("headers", ()), tail)
            return send(message)

        await self.app(scope, receive, send_with_token)

    async def _answer(self, kind: str, result: RequestAuth, send: Send) -> None:
        answer = result.answer
        assert answer is not None
        if kind == "websocket":
            await send(
                {"type": "websocket.close", "code": 1008, "reason": result.auth.reason or ""}
            )
            return
        headers = [(_latin1(name), _latin1(value)) for name, value in answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    def _watch_lifespan(self, receive: Receive) -> Receive:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.aclose()
            return message

        return watched

    async def aclose(self) -> None:
        """Cancel background refreshes and close the HTTP clients (lifespan shutdown does it)."""
        await self.driver.aclose()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class _Request:
    """The cold path's view of an ASGI request."""

    __slots__ = ("_authorization", "_cookie", "_scope", "method")

    def __init__(
        self, scope: Scope, kind: str, authorization: bytes | None, cookie: bytes | None
    ) -> None:
        self._scope = scope
        self._authorization = authorization
        self._cookie = cookie
        self.method = scope.get("method", "GET") if kind == "http" else "WEBSOCKET"

    @property
    def authorization(self) -> str | None:
        value = self._authorization
        return None if value is None else value.decode("latin-1")

    @property
    def cookie(self) -> str | None:
        value = self._cookie
        return None if value is None else value.decode("latin-1")

    @property
    def credentials(self) -> Hashable:
        return (self._authorization, self._cookie)

    @property
    def credentials_size(self) -> int:
        return len(self._authorization or b"") + len(self._cookie or b"")

    @property
    def query(self) -> str:
        return bytes(self._scope.get("query_string", b"")).decode("latin-1")

    def header(self, name: str) -> str | None:
        return _header(self._scope["headers"], name.encode("latin-1"))

    def url(self) -> str:
        scope = self._scope
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope.get("root_path", "") + scope["path"]
        host = self.header("host")
        if host is None and scope.get("server"):
            server_host, port = scope["server"]
            host = f"{server_host}:{port}" if port else server_host
        return request_url(
            scope.get("scheme", "http"),
            host,
            self.header("x-forwarded-proto"),
            self.header("x-forwarded-host"),
            path,
            self.query,
        )
