"""Fakes of Clerk and Tinybird that speak their real wire formats, on 127.0.0.1.

Use them to test apps built on this package with no account and no network::

    from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird

    clerk = FakeClerk()
    with clerk.serve() as api_url:
        token = clerk.session_token("user_1", org={"id": "org_1", "slug": "acme"})
        ...

The pytest plugin ``clerk_tinybird_middleware.testing.pytest_plugin`` provides
``fake_clerk`` and ``fake_tinybird`` fixtures, already serving. It is opt-in: add
``-p clerk_tinybird_middleware.testing.pytest_plugin`` to pytest's ``addopts``, or
``pytest_plugins = ["clerk_tinybird_middleware.testing.pytest_plugin"]`` to a ``conftest.py``.
"""

from __future__ import annotations

from .fake_clerk import FakeClerk
from .fake_tinybird import FakeTinybird

__all__ = ["FakeClerk", "FakeTinybird"]
