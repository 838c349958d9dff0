"""The Django twin of ``examples/starlette_app``: ``ClerkTinybirdMiddleware`` in
``MIDDLEWARE``, views guarded by the decorators, and the same dashboard page; see ``app.py``."""

from __future__ import annotations
