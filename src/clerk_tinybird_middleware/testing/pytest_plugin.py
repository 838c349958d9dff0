"""pytest fixtures for apps that use this package. Opt in (nothing loads into test runs that
do not ask): ``pytest -p clerk_tinybird_middleware.testing.pytest_plugin``, or in the
top-level ``conftest.py``: ``pytest_plugins = ["clerk_tinybird_middleware.testing.pytest_plugin"]``.

* ``fake_clerk`` — a :class:`FakeClerk` already serving on 127.0.0.1 (``fake_clerk.api_url``),
  with a ``tinybird`` JWT template signed with ``fake_tinybird``'s admin token;
* ``fake_tinybird`` — a :class:`FakeTinybird` already serving (``fake_tinybird.api_url``).

Point your app's settings at them, e.g.
``Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from .fake_clerk import FakeClerk, new_signing_key
from .fake_tinybird import FakeTinybird


@pytest.fixture(scope="session")
def fake_clerk_signing_key() -> rsa.RSAPrivateKey:
    """One RSA key for every ``fake_clerk`` of the session (making one costs tens of ms)."""
    return new_signing_key()


@pytest.fixture
def fake_tinybird() -> Iterator[FakeTinybird]:
    fake = FakeTinybird()
    with fake.serve():
        yield fake


@pytest.fixture
def fake_clerk(
    fake_tinybird: FakeTinybird, fake_clerk_signing_key: rsa.RSAPrivateKey
) -> Iterator[FakeClerk]:
    fake = FakeClerk(signing_key=fake_clerk_signing_key)
    fake.add_tinybird_template(fake_tinybird.admin_token, fake_tinybird.workspace_id)
    with fake.serve():
        yield fake
