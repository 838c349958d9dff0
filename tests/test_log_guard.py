"""The suite-wide log guard of conftest.py catches what it is there to catch."""

from __future__ import annotations

import logging

from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from leaks import LeakWatch


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("t", logging.DEBUG, __file__, 1, message, None, None)


def test_guard_sees_every_kind_of_secret() -> None:
    clerk, tinybird = FakeClerk(), FakeTinybird()
    secrets = [
        clerk.session_token("user_1"),
        clerk.secret_key,
        tinybird.admin_token,
        tinybird.mint(pipe="p", fixed_params={"org": "a"}),
    ]
    guard = LeakWatch(issued=True)  # fed directly: the suite's own guard must not see these
    for secret in secrets:
        guard.handle(_record(f"oops {secret} in a message"))
    guard.handle(_record("nothing secret: user_1 org_1 sess_123 a.b.c"))
    leaks = guard.leaks()
    assert len(leaks) == len(secrets)
    assert not any(secret in leak for leak in leaks for secret in secrets)
