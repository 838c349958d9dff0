"""The Django middleware: one class for ``settings.MIDDLEWARE``, sync and async.

It runs the package's engine like the WSGI and ASGI middleware do and only renders the result:
under WSGI (``runserver``, gunicorn, ``django.test.Client``) the sync driver (blocking calls,
thread-safe caches), under ASGI (uvicorn, ``AsyncClient``) the async driver on the running
event loop. Django picks the mode when it builds the middleware chain: async when the next
handler is a coroutine function, so a request never crosses a thread to be authenticated.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Container, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from http.cookies import CookieError, Morsel
from typing import TYPE_CHECKING, Any, ClassVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponse
from django.http.response import ResponseHeaders
from django.utils.encoding import escape_uri_path

from ..core.request import RequestAuth, is_preflight, request_url
from ..core.responses import Answer, HeaderRule
from ..core.tokens import TokenCache, TokenSource
from ..drivers import AsyncDriver, SyncDriver
from ..engine import Engine
from ..errors import ConfigurationError
from ..settings import SettingOverrides, Settings
from ..wsgi import WSGIRequest
from .conf import settings_from_django, token_cache_from_django, token_source_from_django

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ClerkTinybirdMiddleware", "DjangoRequest"]

logger = logging.getLogger("clerk_tinybird_middleware")

_SET_COOKIE = "set-cookie"


@dataclass(frozen=True)
class _Build:
    settings: Settings | None
    token_source: TokenSource | None
    token_cache: TokenCache | None
    overrides: dict[str, Any] = field(default_factory=dict)


_BUILD: ContextVar[_Build | None] = ContextVar("clerk_tinybird_django_build", default=None)


class ClerkTinybirdMiddleware:
    """Verify the Clerk session of every request and attach the tenant's Tinybird JWT.

    What is trusted: only session tokens that verify against your Clerk instance's keys
    (``CLERK_JWT_KEY``, or the JWKS fetched with ``CLERK_SECRET_KEY``) and pass every claim
    check of the README; a rejected token is a signed-out request with a reason code, never an
    error. The rules are those of :class:`~clerk_tinybird_middleware.ClerkTinybirdMiddleware`
    (ASGI) and :class:`~clerk_tinybird_middleware.ClerkTinybirdWSGIMiddleware`: the same
    engine, only the rendering is Django's.

    Per request (except CORS preflights and ``exclude_paths``, matched on
    ``request.path_info``, which pass through untouched with no attribute set):
    ``request.clerk_auth`` (an :class:`AuthResult`), ``request.clerk_session`` (or None),
    ``request.tinybird_token`` (or None), ``request.tinybird_token_error`` (a code or None)
    and ``request.tinybird_token_retry_after`` (seconds, after a Clerk 429). A response
    carrying a token gets ``x-tinybird-token``, ``x-tinybird-token-expires-at``,
    ``Cache-Control: private, no-store`` (and ``no-store`` for CDNs) and ``Vary: Cookie,
    Authorization``; streaming bodies are left alone. Under ``CLERK_TINYBIRD_REQUIRE_AUTH`` a
    signed-out request is answered 401 (JSON) without calling the view; a page load with a
    stale session cookie is answered with Clerk's handshake (a 307) when
    ``CLERK_PUBLISHABLE_KEY`` is set.

    Usage, in ``settings.py``::

        INSTALLED_APPS = [..., "clerk_tinybird_middleware.django"]  # system checks
        MIDDLEWARE = [
            "django.middleware.security.SecurityMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "clerk_tinybird_middleware.django.ClerkTinybirdMiddleware",
            ...,
        ]
        CLERK_SECRET_KEY = os.environ["CLERK_SECRET_KEY"]  # or leave it to the environment

    Configuration: see :mod:`clerk_tinybird_middleware.django.conf` (Django settings named
    like the environment variables, over the environment), read when Django builds the
    middleware. Code that builds its own handler can pass values directly with
    :meth:`configured`.

    :raises ConfigurationError: when Django builds the middleware (at start-up, or on a test
        client's first request), for a bad or missing setting; also logged at ERROR.
        ``manage.py check`` reports the same problems with ids (see
        :mod:`clerk_tinybird_middleware.django.checks`).
    """

    sync_capable: ClassVar[bool] = True
    async_capable: ClassVar[bool] = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        if get_response is None:
            raise ValueError("get_response must be provided")
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        build = _BUILD.get()
        try:
            self.engine = _engine(build)
        except ConfigurationError as error:
            logger.error("clerk-tinybird: configuration error: %s", error)
            raise
        self.rule: HeaderRule[str] = HeaderRule(self.engine.token_header, str)
        self._async: AsyncDriver | None = None
        self._sync: SyncDriver | None = None
        if self.is_async:
            self._async = AsyncDriver(self.engine.metrics)
        else:
            self._sync = SyncDriver(self.engine.metrics)
            # Django has no shutdown hook for middleware: close the pooled client and the
            # refresh workers when this instance goes (a test client dropped) or at exit.
            self._closer = weakref.finalize(self, self._sync.close)

    def __repr__(self) -> str:
        mode = "async" if self.is_async else "sync"
        return f"ClerkTinybirdMiddleware({mode}, engine={self.engine!r})"

    @classmethod
    @contextmanager
    def configured(
        cls,
        settings: Settings | None = None,
        *,
        token_source: TokenSource | None = None,
        token_cache: TokenCache | None = None,
        **setting_overrides: Unpack[SettingOverrides],
    ) -> Iterator[None]:
        """Middleware built inside this block (in this thread or task) use these values
        instead of Django's settings: ``settings`` (default: from Django settings), a token
        source and cache, and single-field overrides. For code that builds its own handler::

            with ClerkTinybirdMiddleware.configured(settings, token_source=source):
                application = get_wsgi_application()
        """
        build = _Build(settings, token_source, token_cache, dict(setting_overrides))
        reset = _BUILD.set(build)
        try:
            yield
        finally:
            _BUILD.reset(reset)

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    def close(self) -> None:
        """Stop the refresh workers and close the pooled HTTP client (sync mode; it also
        happens when the instance is garbage collected, and at exit)."""
        if self._sync is not None:
            self._closer()

    async def aclose(self) -> None:
        """Cancel this event loop's background refreshes and close its HTTP clients."""
        if self._async is not None:
            await self._async.aclose()

    # -- per request ---------------------------------------------------------------------------

    def _skips(self, request: Any) -> bool:
        meta = request.META
        method = request.method or "GET"
        preflight = method == "OPTIONS" and is_preflight(
            meta.get("HTTP_ORIGIN"), meta.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD")
        )
        return self.engine.skips(method, request.path_info, preflight)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        engine = self.engine
        if (request.method == "OPTIONS" or engine.skips_paths) and self._skips(request):
            return self.get_response(request)
        meta = request.META
        authorization, cookie = meta.get("HTTP_AUTHORIZATION"), _cookie(request)
        result = engine.warm(meta.get("QUERY_STRING"), authorization, cookie)
        if result is None:
            assert self._sync is not None
            result = self._sync.run(engine.cold(DjangoRequest(request, cookie)))
        vars(request).update(result.state)
        if result.answer is not None:
            return answer_response(result.answer)
        response = self.get_response(request)
        if result.tail:
            self.add_tail(response, result)
        return response

    async def __acall__(self, request: Any) -> Any:
        engine = self.engine
        if (request.method == "OPTIONS" or engine.skips_paths) and self._skips(request):
            return await self.get_response(request)
        meta = request.META
        authorization, cookie = meta.get("HTTP_AUTHORIZATION"), _cookie(request)
        result = engine.warm(meta.get("QUERY_STRING"), authorization, cookie)
        if result is None:
            assert self._async is not None
            result = await self._async.run(engine.cold(DjangoRequest(request, cookie)))
        vars(request).update(result.state)
        if result.answer is not None:
            return answer_response(result.answer)
        response = await self.get_response(request)
        if result.tail:
            self.add_tail(response, result)
        return response

    def add_tail(self, response: Any, result: RequestAuth) -> None:
        """The response's headers merged with the result's (the rules of
        :class:`~clerk_tinybird_middleware.core.responses.HeaderRule`); ``Set-Cookie``
        lines go to ``response.cookies``, where Django's handlers emit one header each."""
        merged = self.rule.merge(response.headers.items(), self.rule.encoded(result.tail))
        headers = ResponseHeaders({})
        for name, value in merged:
            if name.lower() == _SET_COOKIE:
                add_set_cookie(response.cookies, value)
            else:
                headers[name] = value
        response.headers = headers


def _engine(build: _Build | None) -> Engine:
    if build is None:
        return Engine(
            settings_from_django(),
            token_source=token_source_from_django(),
            token_cache=token_cache_from_django(),
        )
    settings = build.settings if build.settings is not None else settings_from_django()
    return Engine(
        settings,
        token_source=build.token_source or token_source_from_django(),
        token_cache=build.token_cache or token_cache_from_django(),
        **build.overrides,
    )


def answer_response(answer: Answer) -> Any:
    """A response the middleware sends itself (the 401 of ``require_auth``, the handshake's
    307), as a Django ``HttpResponse``."""
    response = HttpResponse(answer.body, status=answer.status)
    del response.headers["Content-Type"]  # the answer names its own, or has no body
    for name, value in answer.headers:
        if name == _SET_COOKIE:
            add_set_cookie(response.cookies, value)
        else:
            response.headers[name] = value
    return response


class _SetCookie(Morsel[str]):
    """A ``Set-Cookie`` line kept exactly as Clerk wrote it (its attributes included), in a
    morsel so that Django's handlers emit it like the cookies the app sets."""

    _line: str

    def OutputString(self, attrs: Container[str] | None = None) -> str:
        return self._line

    def __getstate__(self) -> dict[str, str]:
        return {**super().__getstate__(), "line": self._line}  # type: ignore[misc]

    def __setstate__(self, state: dict[str, str]) -> None:
        self._line = state.pop("line")
        super().__setstate__(state)  # type: ignore[misc]


def add_set_cookie(cookies: Any, line: str) -> None:
    """Add one raw ``Set-Cookie`` line to a response's ``SimpleCookie`` (keyed by the cookie
    name, so ``response.cookies["__session"]`` works; a second line for the same name gets a
    key of its own, so neither is lost)."""
    name, _, rest = line.partition("=")
    name = name.strip()
    value = rest.split(";", 1)[0].strip()
    morsel = _SetCookie()
    try:
        morsel.set(name, value, value)
    except CookieError:
        logger.warning("clerk-tinybird: a Set-Cookie directive with an invalid name was dropped")
        return
    morsel._line = line
    key, n = name, 1
    while key in cookies:
        n += 1
        key = f"{name}#{n}"
    dict.__setitem__(cookies, key, morsel)


def _cookie(request: Any) -> str | None:
    """The request's cookies. An ``ASGIRequest`` joins repeated headers with ``,`` in META
    (HTTP/2 clients may split ``Cookie``; Django's ``AsyncClient`` adds an empty one), which
    would glue a comma to the last cookie: the scope's cookie headers are joined with ``; ``
    instead, as the ASGI middleware does."""
    scope = getattr(request, "scope", None)
    if scope is None:
        value: str | None = request.META.get("HTTP_COOKIE")
        return value
    cookie: str | None = None
    for name, raw in scope.get("headers", ()):
        if name == b"cookie" and raw:
            text = raw.decode("latin-1")
            cookie = text if cookie is None else f"{cookie}; {text}"
    return cookie


class DjangoRequest(WSGIRequest):
    """The cold path's view of a Django request, over ``request.META`` (WSGI's environ, or
    the META an ``ASGIRequest`` builds from the scope) and the cookies of :func:`_cookie`."""

    __slots__ = ("_cookie", "_request")

    def __init__(self, request: Any, cookie: str | None) -> None:
        super().__init__(request.META, request.method or "GET")
        self._request = request
        self._cookie = cookie

    @property
    def cookie(self) -> str | None:
        return self._cookie

    @property
    def credentials(self) -> Hashable:
        return (self._request.META.get("HTTP_AUTHORIZATION"), self._cookie)

    @property
    def credentials_size(self) -> int:
        authorization = self._request.META.get("HTTP_AUTHORIZATION") or ""
        return len(authorization) + len(self._cookie or "")

    def url(self) -> str:
        """The URL as the client sent it: the server's raw URI when it passes one (gunicorn,
        uWSGI; ASGI's ``raw_path``), else ``request.path`` quoted again. (Django's META holds a
        decoded ``PATH_INFO``, not WSGI's latin-1 bytes, so the WSGI adapter's rule does not
        apply.)"""
        request = self._request
        meta = request.META
        raw = meta.get("RAW_URI") or meta.get("REQUEST_URI")
        if raw:
            path = str(raw).split("?", 1)[0]
        else:
            scope = getattr(request, "scope", None)
            raw_path = scope.get("raw_path") if scope else None
            path = raw_path.decode("latin-1") if raw_path else escape_uri_path(request.path)
        scheme = request.scheme
        host = meta.get("HTTP_HOST") or _server_host(meta, scheme)
        return request_url(
            scheme,
            host,
            meta.get("HTTP_X_FORWARDED_PROTO"),
            meta.get("HTTP_X_FORWARDED_HOST"),
            path,
            self.query,
        )


def _server_host(meta: Any, scheme: str) -> str:
    host = str(meta.get("SERVER_NAME", "localhost"))
    port = str(meta.get("SERVER_PORT", ""))
    if port and port != ("443" if scheme == "https" else "80"):
        host = f"{host}:{port}"
    return host
