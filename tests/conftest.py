"""Shared fixtures. ``fake_clerk`` and ``fake_tinybird`` come from the package's own pytest
plugin (``clerk_tinybird_middleware.testing.pytest_plugin``), as they would for users."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from clerk_tinybird_middleware.testing import FakeClerk
from leaks import LeakWatch, SummaryRelay
from services import RedisServer, need_binary


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(SummaryRelay(config), "clerk-tinybird-summary-relay")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(need_binary("redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of the settings table comes in from the environment the suite runs in
    (modules that read settings from the environment use it for every test)."""
    from clerk_tinybird_middleware import Settings

    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def configured(fake_clerk: FakeClerk) -> Iterator[None]:
    """Django settings pointing the middleware at the test's FakeClerk."""
    from django.test import override_settings

    from django_support import overrides

    with override_settings(
        **overrides(CLERK_SECRET_KEY=fake_clerk.secret_key, CLERK_API_URL=fake_clerk.api_url)
    ):
        yield


@pytest.fixture(autouse=True)
def _no_secret_in_any_log(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every record of every logger, at DEBUG, for every test: any secret the fakes issued
    (session tokens, Tinybird JWTs, secret keys, admin tokens) fails the test.

    httpcore logs the raw response headers *its client received* at DEBUG: the tests' own
    clients reading x-tinybird-token / Set-Cookie, by design (the package's outbound calls log
    no request headers and get no tokens in headers). A test whose own client puts a token in
    a URL (Tinybird's ``?token=``) gets httpx's request line logged: that is the threat
    SECURITY.md warns about, shown on purpose.
    """
    in_url = request.node.get_closest_marker("token_in_url") is not None
    watch = LeakWatch(issued=True, ignore=("httpcore.", "httpx") if in_url else ("httpcore.",))
    with watch.installed():
        yield
    leaks = watch.leaks()
    assert not leaks, f"secrets in log records: {leaks}"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def debug_logs() -> Iterator[list[logging.LogRecord]]:
    """Every log record, of every logger, at DEBUG, for leak checks."""
    handler = _Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
