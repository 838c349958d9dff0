"""OpenTelemetry metrics (SPEC §13), read with the SDK's InMemoryMetricReader."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from clerk_tinybird_middleware.testing import FakeClerk
from support import bearer, client, state_app

INSTRUMENTS = {
    "clerk_tinybird.requests": {"status", "reason"},
    "clerk_tinybird.token_cache": {"result"},
    "clerk_tinybird.upstream_calls": {"endpoint", "outcome"},
    "clerk_tinybird.upstream_duration": {"endpoint"},
}


_READER = InMemoryMetricReader()


@pytest.fixture(scope="module")
def reader() -> InMemoryMetricReader:
    """The process's SDK (set once: OpenTelemetry allows one global MeterProvider), installed
    after the package's instruments exist — as an app that configures OpenTelemetry late."""
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))
    return _READER


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], float]]]:
    data = reader.get_metrics_data()
    found: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            if scope.scope.name != "clerk_tinybird_middleware":
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    # A counter's value, or how many values a histogram recorded.
                    value: float = getattr(point, "value", 0) or getattr(point, "count", 0)
                    attributes = dict(point.attributes or {})
                    found.setdefault(metric.name, []).append((attributes, value))
    return found


def total(found: dict[str, list[tuple[dict[str, Any], float]]], name: str, **attrs: str) -> float:
    return sum(v for a, v in found.get(name, []) if all(a.get(k) == w for k, w in attrs.items()))


async def test_every_instrument_counts_what_happened_and_names_nobody(
    reader: InMemoryMetricReader, fake_clerk: FakeClerk
) -> None:
    before = points(reader)
    app = state_app(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url)
    token = fake_clerk.session_token("user_metrics", org={"id": "org_metrics", "slug": "metrics"})
    async with client(app) as http:
        for _ in range(5):
            await http.get("/", headers=bearer(token))  # 1 cold (jwks + template), 4 warm
        await http.get("/")  # signed out
        await http.get("/", headers=bearer("a.b.c"))  # rejected
    after = points(reader)

    def delta(name: str, **attrs: str) -> float:
        return total(after, name, **attrs) - total(before, name, **attrs)

    assert delta("clerk_tinybird.requests", status="signed-in", reason="none") == 5
    assert (
        delta("clerk_tinybird.requests", status="signed-out", reason="session-token-missing") == 1
    )
    assert delta("clerk_tinybird.requests", status="signed-out", reason="token-invalid") == 1
    assert delta("clerk_tinybird.token_cache", result="miss") == 1
    assert delta("clerk_tinybird.token_cache", result="hit") == 4
    assert delta("clerk_tinybird.upstream_calls", endpoint="jwks", outcome="ok") == 1
    assert delta("clerk_tinybird.upstream_calls", endpoint="template", outcome="ok") == 1
    assert delta("clerk_tinybird.upstream_duration", endpoint="template") == 1
    for name, keys in INSTRUMENTS.items():
        for attributes, _ in after[name]:
            assert set(attributes) == keys
            rendered = repr(attributes)
            assert "user_metrics" not in rendered
            assert "org_metrics" not in rendered
            assert "eyJ" not in rendered  # no token either


async def test_failures_are_counted_with_their_reason(
    reader: InMemoryMetricReader, fake_clerk: FakeClerk
) -> None:
    before = points(reader)
    fake_clerk.inject("template", status=429, retry_after=5, times=1)
    app = state_app(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url)
    token = fake_clerk.session_token("u_rate", org={"id": "org_rate", "slug": "rate"})
    async with client(app) as http:
        await http.get("/", headers=bearer(token))
    after = points(reader)
    outcome = "clerk-rate-limited"
    limited = total(after, "clerk_tinybird.upstream_calls", endpoint="template", outcome=outcome)
    assert limited - total(before, "clerk_tinybird.upstream_calls", outcome=outcome) == 1
