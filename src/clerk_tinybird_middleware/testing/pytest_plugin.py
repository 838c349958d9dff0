"""pytest fixtures for apps that use this package (registered through the ``pytest11`` entry
point, so installing the package is enough):

* ``fake_clerk`` — a :class:`FakeClerk` already serving on 127.0.0.1 (``fake_clerk.api_url``),
  with a ``tinybird`` JWT template signed with ``fake_tinybird``'s admin token;
* ``fake_tinybird`` — a :class:`FakeTinybird` already serving (``fake_tinybird.api_url``).

Point your app's settings at them, e.g.
``Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_clerk import FakeClerk
from .fake_tinybird import FakeTinybird


@pytest.fixture
def fake_tinybird() -> Iterator[FakeTinybird]:
    fake = FakeTinybird()
    with fake.serve():
        yield fake


@pytest.fixture
def fake_clerk(fake_tinybird: FakeTinybird) -> Iterator[FakeClerk]:
    fake = FakeClerk()
    fake.add_tinybird_template(fake_tinybird.admin_token, fake_tinybird.workspace_id)
    with fake.serve():
        yield fake
