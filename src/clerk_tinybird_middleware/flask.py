"""Flask integration: the :class:`ClerkTinybird` extension and three view decorators.

The extension wraps ``app.wsgi_app`` with :class:`ClerkTinybirdWSGIMiddleware` (so every rule
is the middleware's) and copies its results to ``g`` before any other ``before_request``
hook::

    from clerk_tinybird_middleware.flask import ClerkTinybird, require_org, require_session

    app = Flask(__name__)
    app.config["CLERK_SECRET_KEY"] = "sk_live_..."   # or the environment
    ClerkTinybird(app)

    @app.get("/api/me")
    @require_session
    def me():
        return {"user": g.clerk_session.user_id}

    @app.get("/api/admin")
    @require_org(role="admin")
    def admin(): ...

Decorators answer with the JSON errors of the README (401, 403, 503) and work on ``async def``
views too.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Flask, Response, g, request

from .cache import TokenCache
from .core import responses
from .core.tokens import TokenSource
from .models import AuthResult
from .settings import SettingOverrides, Settings
from .wsgi import ENVIRON_PREFIX, ClerkTinybirdWSGIMiddleware

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "EXTENSION_KEY",
    "ClerkTinybird",
    "require_org",
    "require_session",
    "require_tinybird_token",
    "settings_from_config",
]

logger = logging.getLogger("clerk_tinybird_middleware")

EXTENSION_KEY = "clerk_tinybird"
_G_NAMES = (
    "clerk_auth",
    "clerk_session",
    "tinybird_token",
    "tinybird_token_error",
    "tinybird_token_retry_after",
)
_ENVIRON_KEYS = tuple((name, ENVIRON_PREFIX + name) for name in _G_NAMES)
_FIELD_BY_ENV = {Settings.env_name(f.name): f.name for f in dataclasses.fields(Settings)}

View = TypeVar("View", bound=Callable[..., Any])


def settings_from_config(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from Flask config keys named like the environment variables
    (``CLERK_SECRET_KEY``, ``CLERK_TINYBIRD_REQUIRE_AUTH``, …), over ``environ`` (default
    ``os.environ``). Strings are parsed as the environment's; other values (``True``, a list
    of paths, a list of scopes, a callable) are taken as field values; ``None`` means unset.
    """
    strings: dict[str, str] = {}
    values: dict[str, Any] = {}
    for env, field in _FIELD_BY_ENV.items():
        value = config.get(env)
        if isinstance(value, str):
            strings[env] = value
        elif value is not None:
            values[field] = value
    base = os.environ if environ is None else environ
    return Settings.from_env({**base, **strings}).replace(**values)


class ClerkTinybird:
    """The Flask extension: session verification and Tinybird tokens for every request.

    Configuration comes from ``app.config`` keys named like the environment variables of the
    README, falling back to the environment (see :func:`settings_from_config`) — unless
    ``settings`` is given; ``setting_overrides`` override single fields either way.
    ``init_app`` wraps ``app.wsgi_app``, registers the middleware in
    ``app.extensions["clerk_tinybird"]`` (``.settings``, ``.engine``, ``.close()``) and sets,
    per request, ``g.clerk_auth``, ``g.clerk_session``, ``g.tinybird_token``,
    ``g.tinybird_token_error`` and ``g.tinybird_token_retry_after`` (all None on OPTIONS
    requests and excluded paths, which the middleware does not look at).

    :raises ConfigurationError: in ``init_app``, for a bad or missing setting.
    """

    def __init__(
        self,
        app: Flask | None = None,
        settings: Settings | None = None,
        *,
        token_source: TokenSource | None = None,
        token_cache: TokenCache | None = None,
        **setting_overrides: Unpack[SettingOverrides],
    ) -> None:
        self.settings = settings
        self.token_source = token_source
        self.token_cache = token_cache
        self.setting_overrides = setting_overrides
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"ClerkTinybird(settings={self.settings!r})"

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("ClerkTinybird is already initialised on this app")
        settings = self.settings if self.settings is not None else settings_from_config(app.config)
        middleware = ClerkTinybirdWSGIMiddleware(
            app.wsgi_app,
            settings,
            token_source=self.token_source,
            token_cache=self.token_cache,
            **self.setting_overrides,
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = middleware
        # First, so the app's own before_request hooks already see g.clerk_session.
        app.before_request_funcs.setdefault(None, []).insert(0, _load_request_state)


def _load_request_state() -> None:
    environ = request.environ
    # One proxy lookup and one dict update: ``setattr(g, ...)`` per name costs more.
    vars(g._get_current_object()).update({name: environ.get(key) for name, key in _ENVIRON_KEYS})


# -- decorators ------------------------------------------------------------------------------


def _current(name: str) -> Any:
    value = g.get(name)
    return request.environ.get(ENVIRON_PREFIX + name) if value is None else value


def _current_auth() -> AuthResult | None:
    auth = _current("clerk_auth")
    if auth is None:
        logger.warning(
            "clerk-tinybird: guarded view %s ran without the middleware (OPTIONS, an excluded"
            " path, or ClerkTinybird not initialised); answering 401",
            request.endpoint,
        )
    return cast("AuthResult | None", auth)


def _json(status: int, body: Mapping[str, Any], headers: Mapping[str, str]) -> Response:
    return Response(json.dumps(body), status, dict(headers), mimetype="application/json")


def _render(denial: responses.Denial | None) -> Response | None:
    return None if denial is None else _json(denial.status, denial.body, denial.headers)


def _session_denial() -> Response | None:
    return _render(responses.deny_session(_current_auth()))


def _org_denial(role: str | None, permission: str | None) -> Response | None:
    return _render(responses.deny_org(_current_auth(), role, permission))


def _token_denial() -> Response | None:
    token = _current("tinybird_token")
    if token is not None:
        return None
    return _render(
        responses.token_denial(
            _current_auth(),
            _current("tinybird_token_error"),
            _current("tinybird_token_retry_after"),
        )
    )


def _guard(view: View, deny: Callable[[], Response | None]) -> View:
    if inspect.iscoroutinefunction(view):

        @functools.wraps(view)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            denied = deny()
            return denied if denied is not None else await view(*args, **kwargs)

        return cast("View", guarded_async)

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        denied = deny()
        return denied if denied is not None else view(*args, **kwargs)

    return cast("View", guarded)


def require_session(view: View) -> View:
    """Decorator: 401 (JSON, ``WWW-Authenticate``) unless the request is signed in."""
    return _guard(view, _session_denial)


def require_org(role: str | None = None, permission: str | None = None) -> Callable[[View], View]:
    """Decorator factory: 401 when signed out; 403 without an active org, or lacking ``role``
    (with or without the ``org:`` prefix) or ``permission``. Use it called:
    ``@require_org()``, ``@require_org(role="admin")``."""
    if callable(role):
        raise TypeError("require_org must be called: use @require_org() or @require_org(role=...)")

    def decorate(view: View) -> View:
        return _guard(view, lambda: _org_denial(role, permission))

    return decorate


def require_tinybird_token(view: View) -> View:
    """Decorator: the view runs only with ``g.tinybird_token`` set. Otherwise 401 when signed
    out, else 503 ``{"error": "tinybird_token_unavailable", "reason": code}`` (with
    ``Retry-After`` after a Clerk 429)."""
    return _guard(view, _token_denial)
