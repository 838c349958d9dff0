"""The WSGI middleware (Flask, Django, any WSGI app)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from ._edges import SyncEdge
from ._types import ExcInfo, StartResponse, WSGIApp, WSGIEnviron
from .cache import TokenCache
from .core.tokens import TokenSource
from .engine import NO_TOKEN, Engine, TokenOutcome
from .models import AuthResult
from .settings import SettingOverrides, Settings

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ENVIRON_PREFIX", "ClerkTinybirdWSGIMiddleware"]

logger = logging.getLogger("clerk_tinybird_middleware")

ENVIRON_PREFIX = "clerk_tinybird."
_AUTH = ENVIRON_PREFIX + "clerk_auth"
_SESSION = ENVIRON_PREFIX + "clerk_session"
_TOKEN = ENVIRON_PREFIX + "tinybird_token"
_ERROR = ENVIRON_PREFIX + "tinybird_token_error"
_RETRY_AFTER = ENVIRON_PREFIX + "tinybird_token_retry_after"

_Headers = Iterable[tuple[bytes, bytes]]


def _str_headers(headers: _Headers) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


class ClerkTinybirdWSGIMiddleware:
    """Verify the Clerk session of every request to a WSGI app and attach the tenant's
    Tinybird JWT.

    What is trusted: only session tokens that verify against your Clerk instance's keys
    (``CLERK_JWT_KEY``, or the JWKS fetched with ``CLERK_SECRET_KEY``) and pass every claim
    check of the README. Nothing from the request is trusted otherwise (``HTTP_AUTHORIZATION``
    and ``HTTP_COOKIE`` are only where the token is looked for); a rejected token is a
    signed-out request with a reason code, never an error. The rules are the ASGI
    middleware's, from the same engine; only the I/O differs (a pooled, blocking
    ``httpx.Client``; thread-safe caches; one upstream call per key across threads).

    Per request, ``environ`` gets ``clerk_tinybird.clerk_auth`` (an :class:`AuthResult`),
    ``clerk_tinybird.clerk_session``, ``clerk_tinybird.tinybird_token`` and
    ``clerk_tinybird.tinybird_token_error`` (and ``clerk_tinybird.tinybird_token_retry_after``,
    seconds, after a Clerk 429). A response carrying a token gets ``x-tinybird-token``,
    ``x-tinybird-token-expires-at``, ``Cache-Control: private, no-store`` and
    ``Vary: Cookie, Authorization`` through a wrapped ``start_response``; the app's iterable
    is returned as it is (never buffered; its ``close()`` reaches the server). OPTIONS
    requests and ``exclude_paths`` (matched on ``PATH_INFO``, the path the app routes on)
    pass through untouched, with no environ keys set.

    Usage::

        from clerk_tinybird_middleware import ClerkTinybirdWSGIMiddleware

        app.wsgi_app = ClerkTinybirdWSGIMiddleware(app.wsgi_app)  # Flask, from the environment
        application = ClerkTinybirdWSGIMiddleware(get_wsgi_application(), require_auth=True)

    For Flask, :class:`clerk_tinybird_middleware.flask.ClerkTinybird` does this and more.

    :param wsgi_app: the WSGI application to wrap. The other parameters, and the
        ``ConfigurationError`` raised at construction, are those of
        :class:`~clerk_tinybird_middleware.ClerkTinybirdMiddleware`.
    """

    def __init__(
        self,
        wsgi_app: WSGIApp,
        settings: Settings | None = None,
        *,
        token_source: TokenSource | None = None,
        token_cache: TokenCache | None = None,
        **setting_overrides: Unpack[SettingOverrides],
    ) -> None:
        self.wsgi_app = wsgi_app
        self.engine = Engine(
            settings, token_source=token_source, token_cache=token_cache, **setting_overrides
        )
        self.edge = SyncEdge(self.engine)
        self._require_auth = self.engine.settings.require_auth

    def __repr__(self) -> str:
        return f"ClerkTinybirdWSGIMiddleware(wsgi_app={self.wsgi_app!r}, engine={self.engine!r})"

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    def close(self) -> None:
        """Close the pooled HTTP client (at shutdown; tests)."""
        self.edge.close()

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if not path.isascii():  # PEP 3333 hands over UTF-8 bytes decoded as latin-1
            path = path.encode("latin-1").decode("utf-8", "replace")
        if self.engine.skips(environ.get("REQUEST_METHOD", "GET"), path):
            return self.wsgi_app(environ, start_response)

        auth, outcome = self._authenticate(environ)
        environ[_AUTH] = auth
        environ[_SESSION] = auth.session
        environ[_TOKEN] = outcome.token
        environ[_ERROR] = outcome.error
        environ[_RETRY_AFTER] = outcome.retry_after

        if self._require_auth and auth.session is None:
            status, headers, body = self.engine.unauthenticated(auth)
            start_response(f"{status} {HTTPStatus(status).phrase}", _str_headers(headers))
            return [body]
        token = outcome.token
        rule = self.engine.str_headers
        if token is None or rule is None:
            return self.wsgi_app(environ, start_response)

        merge = rule.merge

        def start_with_token(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            return start_response(status, merge(headers, token), exc_info)

        return self.wsgi_app(environ, start_with_token)

    def _authenticate(self, environ: WSGIEnviron) -> tuple[AuthResult, TokenOutcome]:
        auth = self.edge.authenticate(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_COOKIE"))
        if self._require_auth and auth.session is None:
            return auth, NO_TOKEN
        return auth, self.edge.tinybird_token(auth)
