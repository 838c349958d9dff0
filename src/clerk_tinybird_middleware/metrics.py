"""Metrics through the OpenTelemetry API (extra ``[otel]``), meter ``clerk_tinybird_middleware``.

=====================================  =========  ==========================================
instrument                              kind       attributes
=====================================  =========  ==========================================
``clerk_tinybird.requests``             counter    ``status`` (signed-in, signed-out,
                                                   handshake), ``reason`` (a code, or ``none``)
``clerk_tinybird.token_cache``          counter    ``result``: ``hit`` | ``miss`` | ``refresh``
``clerk_tinybird.upstream_calls``       counter    ``endpoint`` (jwks, template, handshake),
                                                   ``outcome`` (``ok`` or a reason code)
``clerk_tinybird.upstream_duration``    histogram  ``endpoint``; seconds
=====================================  =========  ==========================================

No user, org, session or token value is ever an attribute. The per-request counters cost an
integer increment: they are *observable* counters whose callbacks report the process's running
totals when (and only if) an SDK collects them; without ``opentelemetry-api``, or with no SDK
configured, nothing else happens. Upstream calls are rare and recorded directly. Instruments
are created once per process (an SDK keeps the first instrument of a name), so every
middleware of the process adds to the same totals.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.request import RequestAuth

__all__ = ["METER_NAME", "Metrics", "upstream_outcome"]

METER_NAME = "clerk_tinybird_middleware"

_JWKS = {401: "secret-key-invalid", 403: "secret-key-invalid"}
_TEMPLATE = {401: "clerk-key-invalid", 403: "clerk-key-invalid", 429: "clerk-rate-limited"}


def upstream_outcome(endpoint: str, status: int, body: bytes = b"") -> str:
    """``ok`` or the reason code an upstream answer maps to."""
    if 200 <= status < 300:
        return "ok"
    if endpoint == "jwks":
        return _JWKS.get(status, "jwk-remote-failed-to-load")
    if endpoint == "template":
        if status == 404:
            template = b"template" in body.lower()
            return "clerk-template-not-found" if template else "clerk-session-not-found"
        return _TEMPLATE.get(status, "clerk-unavailable")
    return "session-token-missing"  # handshake: a failed payload signs the request out


class _Totals:
    """The process's counts (every middleware adds to them)."""

    def __init__(self) -> None:
        self.warm = 0  # warm hits: signed in, token from the memo (the one hot increment)
        self.requests: Counter[tuple[str, str]] = Counter()
        self.cache: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.calls: Any = None
        self.duration: Any = None
        self.installed = False

    def install(self) -> None:
        with self.lock:
            if self.installed:
                return
            self.installed = True
        try:
            from opentelemetry import metrics
        except ImportError:
            return
        meter = metrics.get_meter(METER_NAME)
        meter.create_observable_counter(
            "clerk_tinybird.requests",
            callbacks=[self._observe_requests],
            unit="{request}",
            description="Requests authenticated, by status and reason code",
        )
        meter.create_observable_counter(
            "clerk_tinybird.token_cache",
            callbacks=[self._observe_cache],
            unit="{lookup}",
            description="Tinybird token cache look-ups: hit, miss, refresh",
        )
        self.calls = meter.create_counter(
            "clerk_tinybird.upstream_calls",
            unit="{call}",
            description="Calls to Clerk (JWKS, JWT template, handshake payload)",
        )
        self.duration = meter.create_histogram(
            "clerk_tinybird.upstream_duration",
            unit="s",
            description="Duration of calls to Clerk",
        )

    def request_totals(self) -> dict[tuple[str, str], int]:
        with self.lock:
            counts = dict(self.requests)
        key = ("signed-in", "none")
        if self.warm:
            counts[key] = counts.get(key, 0) + self.warm
        return counts

    def cache_totals(self) -> dict[str, int]:
        with self.lock:
            counts = dict(self.cache)
        if self.warm:
            counts["hit"] = counts.get("hit", 0) + self.warm
        return counts

    def _observe_requests(self, options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [
            Observation(count, {"status": status, "reason": reason})
            for (status, reason), count in self.request_totals().items()
        ]

    def _observe_cache(self, options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        totals = self.cache_totals().items()
        return [Observation(count, {"result": result}) for result, count in totals]


TOTALS = _Totals()


class Metrics:
    """What one middleware records (into the process's totals)."""

    __slots__ = ("totals",)

    def __init__(self) -> None:
        TOTALS.install()
        self.totals = TOTALS

    def __repr__(self) -> str:
        return f"Metrics(requests={sum(self.totals.request_totals().values())})"

    def warm_hit(self) -> None:
        self.totals.warm += 1

    def request(self, result: RequestAuth) -> None:
        auth = result.auth
        totals = self.totals
        with totals.lock:
            totals.requests[auth.status, auth.reason or "none"] += 1

    def cache_result(self, result: str) -> None:
        totals = self.totals
        with totals.lock:
            totals.cache[result] += 1

    def upstream(self, endpoint: str, status: int, body: bytes, seconds: float) -> None:
        totals = self.totals
        if totals.calls is None:
            return
        outcome = upstream_outcome(endpoint, status, body)
        totals.calls.add(1, {"endpoint": endpoint, "outcome": outcome})
        totals.duration.record(seconds, {"endpoint": endpoint})
