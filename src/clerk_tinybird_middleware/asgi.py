"""The pure ASGI middleware (Starlette, FastAPI, any ASGI app)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._edges import AsyncEdge
from .cache import TokenCache
from .core.tokens import TokenSource
from .engine import NO_TOKEN, Engine, TokenOutcome
from .models import AuthResult
from .settings import SettingOverrides, Settings

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ClerkTinybirdMiddleware"]

logger = logging.getLogger("clerk_tinybird_middleware")


class ClerkTinybirdMiddleware:
    """Verify the Clerk session of every HTTP and WebSocket request and attach the tenant's
    Tinybird JWT.

    What is trusted: only session tokens that verify against your Clerk instance's keys
    (``CLERK_JWT_KEY``, or the JWKS fetched with ``CLERK_SECRET_KEY``) and pass every claim
    check of the README. Nothing from the request is trusted otherwise; a rejected token is
    a signed-out request with a reason code, never an error.

    Per request, ``request.state`` (``scope["state"]``) gets ``clerk_auth`` (an
    :class:`AuthResult`), ``clerk_session``, ``tinybird_token`` and ``tinybird_token_error``.
    A response carrying a token gets ``x-tinybird-token``, ``x-tinybird-token-expires-at``,
    ``Cache-Control: private, no-store`` and ``Vary: Cookie, Authorization``; the body is
    streamed through untouched.

    Usage::

        app.add_middleware(ClerkTinybirdMiddleware)  # everything from the environment
        app.add_middleware(ClerkTinybirdMiddleware, require_auth=True, exclude_paths=("/health",))

    :param settings: a :class:`Settings`; default ``Settings.from_env()``.
    :param token_source: where Tinybird tokens come from; default per the settings
        (local minting, else the Clerk JWT template, else none).
    :param token_cache: default :class:`MemoryTokenCache`, or Redis when ``redis_url`` is set.
    :param setting_overrides: single :class:`Settings` fields, e.g. ``require_auth=True``.
    :raises ConfigurationError: at construction, for a bad or missing setting.
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
        self.engine = Engine(
            settings, token_source=token_source, token_cache=token_cache, **setting_overrides
        )
        self.edge = AsyncEdge(self.engine)
        self._require_auth = self.engine.settings.require_auth
        self._cached = self.engine.verifier.cached
        self._ready = self.engine.ready_outcome

    def __repr__(self) -> str:
        return f"ClerkTinybirdMiddleware(app={self.app!r}, engine={self.engine!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or self.engine.skips(
            scope.get("method", "GET"), scope["path"]
        ):
            await self.app(scope, receive, send)
            return

        authorization, cookie = _credentials(scope["headers"])
        # The warm path stays synchronous: a memoized session and a token held in process.
        auth = self._cached(authorization, cookie)
        if auth is None:
            auth = await self.edge.authenticate(authorization, cookie)
        rejected = self._require_auth and auth.session is None
        outcome = NO_TOKEN if rejected else self._ready(auth)
        if not isinstance(outcome, TokenOutcome):
            outcome = await self.edge.tinybird_token(auth)
        state = scope.setdefault("state", {})
        state["clerk_auth"] = auth
        state["clerk_session"] = auth.session
        state["tinybird_token"] = token = outcome.token
        state["tinybird_token_error"] = outcome.error
        state["tinybird_token_retry_after"] = outcome.retry_after

        if rejected:
            await self._reject(kind, auth, send)
            return
        rule = self.engine.bytes_headers
        if token is None or kind != "http" or rule is None:
            await self.app(scope, receive, send)
            return

        merge = rule.merge

        def send_with_token(message: Message) -> Awaitable[None]:
            # A plain function handing back send's awaitable: no extra coroutine per message.
            if message["type"] == "http.response.start":
                message["headers"] = merge(message.get("headers", ()), token)
            return send(message)

        await self.app(scope, receive, send_with_token)

    async def _reject(self, kind: str, auth: AuthResult, send: Send) -> None:
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": auth.reason or ""})
            return
        status, headers, body = self.engine.unauthenticated(auth)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _credentials(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(Authorization, Cookie) from raw ASGI headers; HTTP/2 may split cookies over several."""
    authorization = cookie = None
    for name, value in headers:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"cookie":
            text = value.decode("latin-1")
            cookie = text if cookie is None else f"{cookie}; {text}"
    return authorization, cookie
