"""Django settings of the example project (``DJANGO_SETTINGS_MODULE=django_app.settings``).

Clerk and Tinybird: every environment variable of the README may also be a setting here
(``CLERK_SECRET_KEY = ...``); what is not set here is read from the environment. Nothing
secret is written in this file: run it with ``CLERK_SECRET_KEY=sk_...`` in the environment.
"""

from __future__ import annotations

import os

DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
# Only for this example: a real project reads its own from the environment.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-clerk-tinybird-example")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"] + [
    host for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if host
]

INSTALLED_APPS = [
    "clerk_tinybird_middleware.django",  # system checks: manage.py check
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    # After CommonMiddleware (its redirects cost no verification), before your own.
    "clerk_tinybird_middleware.django.ClerkTinybirdMiddleware",
]
ROOT_URLCONF = f"{__package__}.urls"  # django_app, or where the wheel put it
WSGI_APPLICATION = f"{__package__}.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}  # the example keeps no data of its own
USE_TZ = True

# -- Clerk + Tinybird (the rest from the environment) -------------------------------------------
CLERK_TINYBIRD_EXCLUDE_PATHS = ["/health"]

# -- the dashboard page ------------------------------------------------------------------------
EXAMPLE_TINYBIRD_PIPE = os.environ.get("EXAMPLE_TINYBIRD_PIPE", "analytics_hits")
EXAMPLE_SIGN_IN_URL = os.environ.get("EXAMPLE_SIGN_IN_URL")  # your Clerk sign-in page
EXAMPLE_SIGN_OUT_URL = os.environ.get("EXAMPLE_SIGN_OUT_URL")
