"""WSGI entry point: ``gunicorn django_app.wsgi`` (from ``examples/``), and what
``manage.py runserver`` serves."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", f"{__package__}.settings")

application = get_wsgi_application()
