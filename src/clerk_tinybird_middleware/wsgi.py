"""The WSGI middleware (Flask, Django under WSGI, any WSGI app)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import quote

from ._types import ExcInfo, StartResponse, WSGIApp, WSGIEnviron
from .core.request import STATE_NAMES, RequestAuth, is_preflight, request_url
from .core.responses import HeaderRule
from .core.tokens import TokenCache, TokenSource
from .drivers import SyncDriver
from .engine import Engine
from .settings import SettingOverrides, Settings

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ENVIRON_PREFIX", "ClerkTinybirdWSGIMiddleware", "WSGIRequest", "wsgi_path"]

logger = logging.getLogger("clerk_tinybird_middleware")

ENVIRON_PREFIX = "clerk_tinybird."
ENVIRON_KEYS = tuple(ENVIRON_PREFIX + name for name in STATE_NAMES)


def wsgi_path(environ: WSGIEnviron) -> str:
    """``PATH_INFO`` as text (PEP 3333 hands over UTF-8 bytes decoded as latin-1)."""
    path: str = environ.get("PATH_INFO", "")
    if not path.isascii():
        path = path.encode("latin-1").decode("utf-8", "replace")
    return path


def status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


class ClerkTinybirdWSGIMiddleware:
    """Verify the Clerk session of every request to a WSGI app and attach the tenant's
    Tinybird JWT.

    What is trusted: only session tokens that verify against your Clerk instance's keys
    (``CLERK_JWT_KEY``, or the JWKS fetched with ``CLERK_SECRET_KEY``) and pass every claim
    check of the README. Nothing from the request is trusted otherwise (``HTTP_AUTHORIZATION``
    and ``HTTP_COOKIE`` are only where the token is looked for); a rejected token is a
    signed-out request with a reason code, never an error. The rules are the ASGI
    middleware's, from the same engine; only the I/O differs (a pooled, blocking
    ``httpx.Client``; thread-safe caches; one upstream call per key across threads; refresh
    ahead on a small worker pool).

    Per request, ``environ`` gets ``clerk_tinybird.clerk_auth`` (an :class:`AuthResult`),
    ``clerk_tinybird.clerk_session``, ``clerk_tinybird.tinybird_token`` and
    ``clerk_tinybird.tinybird_token_error`` (and ``clerk_tinybird.tinybird_token_retry_after``,
    seconds, after a Clerk 429). A response carrying a token gets the headers of the README
    through a wrapped ``start_response``; the app's iterable is returned as it is (never
    buffered; its ``close()`` reaches the server). CORS preflights and ``exclude_paths``
    (matched on ``PATH_INFO``, the path the app routes on) pass through untouched.

    Usage::

        from clerk_tinybird_middleware import ClerkTinybirdWSGIMiddleware

        app.wsgi_app = ClerkTinybirdWSGIMiddleware(app.wsgi_app)  # Flask, from the environment
        application = ClerkTinybirdWSGIMiddleware(get_wsgi_application(), require_auth=True)

    For Flask and Django, :mod:`clerk_tinybird_middleware.flask` and
    :mod:`clerk_tinybird_middleware.django` do this and more.

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
        self.driver = SyncDriver(self.engine.metrics)
        self.rule = HeaderRule(self.engine.token_header, str)

    def __repr__(self) -> str:
        return f"ClerkTinybirdWSGIMiddleware(wsgi_app={self.wsgi_app!r}, engine={self.engine!r})"

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    def close(self) -> None:
        """Stop the refresh workers and close the pooled HTTP client (at shutdown; tests)."""
        self.driver.close()

    def authenticate(self, environ: WSGIEnviron) -> RequestAuth | None:
        """The request's :class:`RequestAuth`, or None when it passes through untouched."""
        engine = self.engine
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "OPTIONS" or engine.skips_paths:
            preflight = method == "OPTIONS" and is_preflight(
                environ.get("HTTP_ORIGIN"), environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD")
            )
            if engine.skips(method, wsgi_path(environ), preflight):
                return None
        authorization = environ.get("HTTP_AUTHORIZATION")
        cookie = environ.get("HTTP_COOKIE")
        result = engine.warm(environ.get("QUERY_STRING"), authorization, cookie)
        if result is None:
            result = self.driver.run(engine.cold(WSGIRequest(environ, method)))
        return result

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        result = self.authenticate(environ)
        if result is None:
            return self.wsgi_app(environ, start_response)
        environ.update(zip(ENVIRON_KEYS, result.state.values(), strict=True))
        answer = result.answer
        if answer is not None:
            start_response(status_line(answer.status), list(answer.headers))
            return [answer.body]
        if not result.tail:
            return self.wsgi_app(environ, start_response)
        tail = result.encoded.get("wsgi")
        if tail is None:
            tail = result.encoded["wsgi"] = self.rule.encoded(result.tail)
        merge = self.rule.merge

        def start_with_token(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            return start_response(status, merge(headers, tail), exc_info)

        return self.wsgi_app(environ, start_with_token)


class WSGIRequest:
    """The cold path's view of a WSGI request (also Django's, through its ``META``)."""

    __slots__ = ("_environ", "method")

    def __init__(self, environ: WSGIEnviron, method: str) -> None:
        self._environ = environ
        self.method = method

    @property
    def authorization(self) -> str | None:
        value: str | None = self._environ.get("HTTP_AUTHORIZATION")
        return value

    @property
    def cookie(self) -> str | None:
        value: str | None = self._environ.get("HTTP_COOKIE")
        return value

    @property
    def credentials(self) -> Hashable:
        return (self._environ.get("HTTP_AUTHORIZATION"), self._environ.get("HTTP_COOKIE"))

    @property
    def credentials_size(self) -> int:
        environ = self._environ
        return len(environ.get("HTTP_AUTHORIZATION") or "") + len(environ.get("HTTP_COOKIE") or "")

    @property
    def query(self) -> str:
        return str(self._environ.get("QUERY_STRING", ""))

    def header(self, name: str) -> str | None:
        key = "HTTP_" + name.upper().replace("-", "_")
        if name == "content-type":
            key = "CONTENT_TYPE"
        value: str | None = self._environ.get(key)
        return value

    def url(self) -> str:
        environ = self._environ
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if raw:
            path = str(raw).split("?", 1)[0]
        else:
            path = quote(
                (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1"),
                safe="/:@!$&'()*+,;=-._~%",
            )
        host = environ.get("HTTP_HOST")
        if not host:
            host = environ.get("SERVER_NAME", "localhost")
            port = str(environ.get("SERVER_PORT", ""))
            scheme = environ.get("wsgi.url_scheme", "http")
            if port and port != ("443" if scheme == "https" else "80"):
                host = f"{host}:{port}"
        return request_url(
            environ.get("wsgi.url_scheme", "http"),
            host,
            environ.get("HTTP_X_FORWARDED_PROTO"),
            environ.get("HTTP_X_FORWARDED_HOST"),
            path,
            self.query,
        )
