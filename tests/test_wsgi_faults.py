"""Upstream faults through the WSGI path, from many threads at once (as a threaded server)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from clerk_tinybird_middleware import Settings
from clerk_tinybird_middleware.testing import FakeClerk
from clerk_tinybird_middleware.wsgi import ClerkTinybirdWSGIMiddleware

REQUESTS = 120
THREADS = 40
BUDGET = 3.0


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(environ["clerk_tinybird.tinybird_token_error"]).encode()]


FAULTS = [
    ("5xx", {"status": 503}, "clerk-unavailable"),
    ("hang", {"delay": 30}, "clerk-unavailable"),
    ("429", {"status": 429, "retry_after": 30}, "clerk-rate-limited"),
    ("malformed-body", {"status": 200, "body": b"{not json"}, "clerk-unavailable"),
    ("ok", {"delay": 0.05}, "None"),
]


@pytest.mark.parametrize(
    ("inject", "expected"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
def test_wsgi_under_upstream_faults(
    fake_clerk: FakeClerk, inject: dict[str, Any], expected: str
) -> None:
    app = ClerkTinybirdWSGIMiddleware(
        _app,
        Settings(
            jwt_key=fake_clerk.public_key_pem,
            secret_key=fake_clerk.secret_key,
            clerk_api_url=fake_clerk.api_url,
        ),
    )
    tokens = [
        fake_clerk.session_token(f"user_{i}", org={"id": f"org_{i}", "slug": f"o{i}"})
        for i in range(REQUESTS)
    ]
    fake_clerk.inject("template", **inject)
    statuses: list[str] = []

    def one(token: str) -> tuple[str, float]:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "HTTP_AUTHORIZATION": f"Bearer {token}",
        }

        def start_response(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            statuses.append(status)
            return lambda data: None

        started = time.monotonic()
        body = b"".join(app(environ, start_response))
        return body.decode(), time.monotonic() - started

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(one, tokens))
    finally:
        fake_clerk.clear_faults()
        app.close()
    answers = Counter(body for body, _ in results)
    slowest = max(elapsed for _, elapsed in results)
    print(
        f"\nWSGI {REQUESTS} requests x {THREADS} threads: {dict(answers)}, slowest {slowest:.2f} s"
    )
    assert statuses == ["200 OK"] * REQUESTS
    assert answers == {expected: REQUESTS}
    assert slowest < BUDGET + 1
