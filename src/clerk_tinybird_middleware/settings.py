"""Every option of the middleware, read from keyword arguments or the environment."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypedDict
from urllib.parse import urlsplit

from .errors import ConfigurationError

__all__ = ["SettingOverrides", "Settings"]

Scopes = Sequence[Mapping[str, Any]] | Callable[..., Sequence[Mapping[str, Any]]]


class SettingOverrides(TypedDict, total=False):
    """Keyword overrides of single :class:`Settings` fields, typed so that
    ``app.add_middleware(ClerkTinybirdMiddleware, require_auth=True)`` is checked."""

    secret_key: str | None
    jwt_key: str | None
    publishable_key: str | None
    authorized_parties: Sequence[str] | str
    audience: Sequence[str] | str
    clock_skew_seconds: float
    clerk_api_url: str
    proxy_url: str | None
    handshake: bool
    tinybird_template: str
    tinybird_api_url: str
    tinybird_workspace_id: str | None
    tinybird_jwt_secret: str | None
    tinybird_scopes: Scopes | str | None
    tinybird_token_lifetime: int
    tinybird_allow_unpinned_scopes: bool
    anonymous_token: str | None
    token_header: str | None
    require_auth: bool
    exclude_paths: Sequence[str] | str
    redis_url: str | None
    refresh_margin_seconds: float
    memo_max_mb: int


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _env(name: str) -> dict[str, str]:
    return {"env": name}


@dataclass(frozen=True)
class Settings:
    """All options, each with its environment variable (see the README's table).

    Construct it directly, or with :meth:`from_env`; values are validated on construction and
    a bad one raises :class:`ConfigurationError` naming its environment variable. Secrets are
    left out of ``repr``.
    """

    secret_key: str | None = dataclasses.field(
        default=None, repr=False, metadata=_env("CLERK_SECRET_KEY")
    )
    jwt_key: str | None = dataclasses.field(
        default=None, repr=False, metadata=_env("CLERK_JWT_KEY")
    )
    publishable_key: str | None = dataclasses.field(
        default=None, metadata=_env("CLERK_PUBLISHABLE_KEY")
    )
    authorized_parties: tuple[str, ...] = dataclasses.field(
        default=(), metadata=_env("CLERK_AUTHORIZED_PARTIES")
    )
    audience: tuple[str, ...] = dataclasses.field(default=(), metadata=_env("CLERK_AUDIENCE"))
    clock_skew_seconds: float = dataclasses.field(
        default=5, metadata=_env("CLERK_CLOCK_SKEW_SECONDS")
    )
    clerk_api_url: str = dataclasses.field(
        default="https://api.clerk.com", metadata=_env("CLERK_API_URL")
    )
    proxy_url: str | None = dataclasses.field(default=None, metadata=_env("CLERK_PROXY_URL"))
    handshake: bool = dataclasses.field(default=True, metadata=_env("CLERK_TINYBIRD_HANDSHAKE"))
    tinybird_template: str = dataclasses.field(
        default="tinybird", metadata=_env("CLERK_TINYBIRD_TEMPLATE")
    )
    tinybird_api_url: str = dataclasses.field(
        default="https://api.tinybird.co", metadata=_env("TINYBIRD_API_URL")
    )
    tinybird_workspace_id: str | None = dataclasses.field(
        default=None, metadata=_env("TINYBIRD_WORKSPACE_ID")
    )
    tinybird_jwt_secret: str | None = dataclasses.field(
        default=None, repr=False, metadata=_env("TINYBIRD_JWT_SECRET")
    )
    tinybird_scopes: Scopes | None = dataclasses.field(
        default=None, metadata=_env("TINYBIRD_JWT_SCOPES")
    )
    tinybird_token_lifetime: int = dataclasses.field(
        default=600, metadata=_env("TINYBIRD_TOKEN_LIFETIME")
    )
    tinybird_allow_unpinned_scopes: bool = dataclasses.field(
        default=False, metadata=_env("TINYBIRD_ALLOW_UNPINNED_SCOPES")
    )
    anonymous_token: str | None = dataclasses.field(
        default=None, repr=False, metadata=_env("TINYBIRD_ANONYMOUS_TOKEN")
    )
    token_header: str | None = dataclasses.field(
        default="x-tinybird-token", metadata=_env("CLERK_TINYBIRD_TOKEN_HEADER")
    )
    require_auth: bool = dataclasses.field(
        default=False, metadata=_env("CLERK_TINYBIRD_REQUIRE_AUTH")
    )
    exclude_paths: tuple[str, ...] = dataclasses.field(
        default=(), metadata=_env("CLERK_TINYBIRD_EXCLUDE_PATHS")
    )
    redis_url: str | None = dataclasses.field(
        default=None, repr=False, metadata=_env("CLERK_TINYBIRD_REDIS_URL")
    )
    refresh_margin_seconds: float = dataclasses.field(
        default=10, metadata=_env("CLERK_TINYBIRD_REFRESH_MARGIN")
    )
    memo_max_mb: int = dataclasses.field(default=128, metadata=_env("CLERK_TINYBIRD_MEMO_MB"))

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f.name, f.metadata["env"], value))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every option from ``environ`` (default ``os.environ``); unset → default."""
        return cls(**raw_values(os.environ if environ is None else environ))

    def replace(self, **overrides: Any) -> Settings:
        """A copy with some fields changed; unknown names raise ``TypeError``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides) if overrides else self

    @staticmethod
    def env_name(field_name: str) -> str:
        """The environment variable of a field, for messages."""
        return str(Settings.__dataclass_fields__[field_name].metadata["env"])

    @staticmethod
    def env_names() -> dict[str, str]:
        """Environment variable → field name, for every field."""
        return {f.metadata["env"]: f.name for f in fields(Settings)}


def raw_values(environ: Mapping[str, Any]) -> dict[str, Any]:
    """Field name → raw value, for every field whose environment variable is set in
    ``environ``. An empty variable is unset (``FOO=`` in a shell or ``.env`` file), except
    ``CLERK_TINYBIRD_TOKEN_HEADER``, where empty means "no header"."""
    return {
        f.name: environ[f.metadata["env"]]
        for f in fields(Settings)
        if f.metadata["env"] in environ
        and (environ[f.metadata["env"]] != "" or f.name == "token_header")
    }


def field_problems(values: Mapping[str, Any]) -> Iterator[ConfigurationError]:
    """Every bad value in ``values`` (field name → raw value), not just the first one."""
    for f in fields(Settings):
        if f.name in values:
            try:
                _coerce(f.name, f.metadata["env"], values[f.name])
            except ConfigurationError as problem:
                yield problem


_TUPLES = {"authorized_parties", "audience", "exclude_paths"}
_FLOATS = {"clock_skew_seconds", "refresh_margin_seconds"}
_INTS = {"tinybird_token_lifetime", "memo_max_mb"}
_BOOLS = {"require_auth", "handshake", "tinybird_allow_unpinned_scopes"}
_URLS = {"clerk_api_url", "tinybird_api_url", "proxy_url"}


def _origin(value: str) -> bool:
    """``scheme://host[:port]`` and nothing else (what an ``azp`` claim holds)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path == ""
        and not parts.query
        and not parts.fragment
        and "@" not in parts.netloc
    )


def _coerce(name: str, env: str, value: Any) -> Any:
    """Validate and normalize one setting; strings (from the environment) are parsed."""
    if name in _TUPLES:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigurationError(f"{env} must be a comma-separated list of strings")
        if name == "exclude_paths":
            bad = [p for p in value if not p.startswith("/")]
            if bad:
                raise ConfigurationError(f"{env}: paths must start with '/': {bad!r}")
            value = [p.rstrip("/") or "/" for p in value]
        if name == "authorized_parties":
            bad = [p for p in value if not _origin(p)]
            if bad:
                raise ConfigurationError(
                    f"{env}: {bad[0]!r} is not an origin; use scheme://host[:port] with no "
                    "path, e.g. https://app.example.com (Clerk's azp claim is an origin)"
                )
            value = [p.rstrip("/") for p in value]
        return tuple(value)
    if name in _FLOATS or name in _INTS:
        kind = int if name in _INTS else float
        if isinstance(value, bool):
            raise ConfigurationError(f"{env} must be a number")
        try:
            number = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigurationError(f"{env} must be a number, got {value!r}") from None
        if number < 0 or number != number or number == float("inf"):
            raise ConfigurationError(f"{env} must be a finite number, not negative")
        if name in ("tinybird_token_lifetime", "memo_max_mb") and number <= 0:
            raise ConfigurationError(f"{env} must be positive")
        return number
    if name in _BOOLS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if not text:  # an empty variable is unset, as for keys and URLs
            return Settings.__dataclass_fields__[name].default
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigurationError(f"{env} must be a boolean (1/0, true/false, yes/no)")
    if name == "tinybird_scopes":
        return _coerce_scopes(env, value)
    if name in _URLS:
        if name == "proxy_url" and (value is None or value == ""):
            return None
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise ConfigurationError(f"{env} must be an http(s) URL")
        return value.rstrip("/")
    if name == "token_header":
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not value.isascii() or any(c in value for c in " :\r\n"):
            raise ConfigurationError(f"{env} must be a header name")
        return value.lower()
    if value == "":
        return None  # an empty environment variable means "unset"
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"{env} must be a string")
    if (
        name == "secret_key"
        and value is not None
        and not value.startswith(("sk_test_", "sk_live_"))
    ):
        shown = "a publishable key" if value.startswith("pk_") else "not a Clerk secret key"
        raise ConfigurationError(
            f"{env} must start with sk_test_ or sk_live_ (this is {shown}; copy the secret key "
            "from the API keys page of the Clerk dashboard)"
        )
    return value


def _coerce_scopes(env: str, value: Any) -> Any:
    """Shape only (a list of objects): the scope rules are checked by the token source."""
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise ConfigurationError(f"{env} must be a JSON list of scope objects") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, Mapping) for s in value):
        raise ConfigurationError(f"{env} must be a list of scope objects")
    from .core.scopes import ScopeProblem, check_scopes

    try:  # the structural rules here, so a bad TINYBIRD_JWT_SCOPES fails even unused
        check_scopes(value, allow_unpinned=True)
    except ScopeProblem as problem:
        raise ConfigurationError(f"{env}: {problem}") from None
    return tuple(value)
