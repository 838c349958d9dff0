"""An app whose middleware reads an environment with no Clerk key (tests/test_startup.py)."""

from __future__ import annotations

from starlette.applications import Starlette

from clerk_tinybird_middleware import ClerkTinybirdMiddleware

app = Starlette()
app.add_middleware(ClerkTinybirdMiddleware)
