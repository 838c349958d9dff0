"""The engine's view of a request, and the one result every adapter renders."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..models import AuthResult, TinybirdToken
from .responses import Answer

__all__ = ["STATE_NAMES", "RequestAuth", "RequestView"]

#: What a request sees, under these names: ``request.state.<name>`` (ASGI),
#: ``environ["clerk_tinybird.<name>"]`` (WSGI), ``g.<name>`` (Flask), ``request.<name>`` (Django).
STATE_NAMES = (
    "clerk_auth",
    "clerk_session",
    "tinybird_token",
    "tinybird_token_error",
    "tinybird_token_retry_after",
)


class RequestView(Protocol):
    """What the cold path reads of a request; each adapter has a small class for it."""

    @property
    def method(self) -> str: ...

    @property
    def authorization(self) -> str | None: ...

    @property
    def cookie(self) -> str | None: ...

    @property
    def credentials(self) -> Hashable:
        """The exact credential headers as the adapter holds them (the memo key)."""
        ...

    @property
    def credentials_size(self) -> int: ...

    @property
    def query(self) -> str:
        """The raw query string (``a=1&b=2``), as sent."""
        ...

    def header(self, name: str) -> str | None:
        """A request header by lower-case name (the first, if repeated)."""
        ...

    def url(self) -> str:
        """The full URL the client asked for (scheme, host and path as the proxy says,
        ``X-Forwarded-Proto``/``X-Forwarded-Host`` first), with the raw path and query."""
        ...


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """Everything a request gets, rendered by every adapter the same way.

    ``answer`` set: the middleware responds itself (a 401, the handshake's 307) and the app
    is not called. Otherwise ``tail`` lists the headers the app's response gains (empty: the
    response is left alone).
    """

    auth: AuthResult
    token: TinybirdToken | None = None
    error: str | None = None
    retry_after: float | None = None
    answer: Answer | None = None
    tail: tuple[tuple[str, str], ...] = ()
    state: Mapping[str, Any] = field(init=False, repr=False, compare=False)
    #: Each edge's encoding of ``tail`` (bytes for ASGI), made once per result.
    encoded: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = (self.auth, self.auth.session, self.token, self.error, self.retry_after)
        object.__setattr__(self, "state", dict(zip(STATE_NAMES, values, strict=True)))


def is_preflight(origin: str | None, request_method: str | None) -> bool:
    """A CORS preflight: ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``."""
    return bool(origin) and bool(request_method)


def request_url(
    scheme: str,
    host: str | None,
    forwarded_proto: str | None,
    forwarded_host: str | None,
    raw_path: str,
    query: str,
) -> str:
    """The URL the client asked for, as Clerk's SDK derives it: ``X-Forwarded-Host`` and
    ``X-Forwarded-Proto`` (their first comma-separated value) over the ``Host`` header and
    the connection's scheme."""
    if forwarded_host:
        host = forwarded_host.split(",", 1)[0]
    if forwarded_proto:
        scheme = forwarded_proto.split(",", 1)[0]
    url = f"{scheme}://{host or 'localhost'}{raw_path or '/'}"
    return f"{url}?{query}" if query else url
