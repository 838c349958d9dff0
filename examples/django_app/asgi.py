"""ASGI entry point: ``uvicorn django_app.asgi:application --app-dir examples``. The
middleware runs in async mode here: sessions are verified and tokens fetched on the event
loop, with no thread per request."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", f"{__package__}.settings")

application = get_asgi_application()
