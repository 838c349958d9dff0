"""The Flask twin of ``examples/starlette_app``: ``ClerkTinybird(app)``, views guarded by the
decorators, and the same dashboard page; see ``app.py``."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
