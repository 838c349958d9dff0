"""Django system checks: ``manage.py check`` reports every configuration problem.

Registered (tag ``clerk_tinybird``) when ``"clerk_tinybird_middleware.django"`` is in
``INSTALLED_APPS``. The configuration checked is the middleware's: Django settings named like
the environment variables, over the environment. The rules are the package's own
(:func:`clerk_tinybird_middleware.wiring.diagnose`, the same as ``clerk-tinybird check``);
this module only gives each problem a stable id. Errors fail ``check`` (and ``runserver``,
``migrate``…); the middleware would raise ``ConfigurationError`` for the same problem.

Errors — one id per setting the message names first (the messages always name the setting to
fix):

==========================  ==================================================================
``clerk_tinybird.E001``     no key material: neither ``CLERK_SECRET_KEY`` nor ``CLERK_JWT_KEY``
``clerk_tinybird.E002``     ``CLERK_SECRET_KEY`` (not ``sk_test_``/``sk_live_``; required by …)
``clerk_tinybird.E003``     ``CLERK_JWT_KEY`` (not a PEM RSA public key)
``clerk_tinybird.E004``     ``CLERK_PUBLISHABLE_KEY`` (not a Clerk publishable key)
``clerk_tinybird.E005``     ``CLERK_AUTHORIZED_PARTIES`` (not origins)
``clerk_tinybird.E006``     ``CLERK_AUDIENCE``
``clerk_tinybird.E007``     ``CLERK_CLOCK_SKEW_SECONDS``
``clerk_tinybird.E008``     ``CLERK_API_URL``
``clerk_tinybird.E009``     ``CLERK_PROXY_URL``
``clerk_tinybird.E010``     ``CLERK_TINYBIRD_HANDSHAKE``
``clerk_tinybird.E011``     ``CLERK_TINYBIRD_TEMPLATE``
``clerk_tinybird.E012``     ``TINYBIRD_API_URL``
``clerk_tinybird.E013``     ``TINYBIRD_WORKSPACE_ID`` (e.g. missing for local minting)
``clerk_tinybird.E014``     ``TINYBIRD_JWT_SECRET`` (e.g. missing for local minting)
``clerk_tinybird.E015``     ``TINYBIRD_JWT_SCOPES`` (bad JSON, bad or unpinned scopes, missing)
``clerk_tinybird.E016``     ``TINYBIRD_TOKEN_LIFETIME``
``clerk_tinybird.E017``     ``TINYBIRD_ALLOW_UNPINNED_SCOPES``
``clerk_tinybird.E018``     ``TINYBIRD_ANONYMOUS_TOKEN``
``clerk_tinybird.E019``     ``CLERK_TINYBIRD_TOKEN_HEADER``
``clerk_tinybird.E020``     ``CLERK_TINYBIRD_REQUIRE_AUTH``
``clerk_tinybird.E021``     ``CLERK_TINYBIRD_EXCLUDE_PATHS``
``clerk_tinybird.E022``     ``CLERK_TINYBIRD_REDIS_URL`` (malformed, or redis not installed)
``clerk_tinybird.E023``     ``CLERK_TINYBIRD_REFRESH_MARGIN`` (e.g. not shorter than the lifetime)
``clerk_tinybird.E024``     ``CLERK_TINYBIRD_MEMO_MB``
``clerk_tinybird.E099``     any other configuration error
==========================  ==================================================================

Warnings:

==========================  ==================================================================
``clerk_tinybird.W001``     no Tinybird token source: sessions are verified, no token is issued
                            (not reported when ``CLERK_TINYBIRD_TOKEN_SOURCE`` is set)
``clerk_tinybird.W002``     a production secret key (``sk_live_``) with no
                            ``CLERK_AUTHORIZED_PARTIES``
``clerk_tinybird.W003``     the handshake is on but ``CLERK_SECRET_KEY`` is not set
``clerk_tinybird.W004``     the app is installed but ``ClerkTinybirdMiddleware`` is not in
                            ``MIDDLEWARE``
``clerk_tinybird.W099``     any other warning
==========================  ==================================================================

Ids are never reused: a new setting gets the next free number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from django.core import checks

from ..core.ops import SystemClock
from ..wiring import Problem, diagnose
from .conf import TOKEN_SOURCE_SETTING, merged_environ

__all__ = ["ERROR_IDS", "WARNING_IDS", "check_configuration", "problem_id"]

TAG = "clerk_tinybird"
MIDDLEWARE_PATH = "clerk_tinybird_middleware.django.ClerkTinybirdMiddleware"

#: The setting a message names first → the error id.
ERROR_IDS: dict[str, str] = {
    "CLERK_SECRET_KEY": "E002",
    "CLERK_JWT_KEY": "E003",
    "CLERK_PUBLISHABLE_KEY": "E004",
    "CLERK_AUTHORIZED_PARTIES": "E005",
    "CLERK_AUDIENCE": "E006",
    "CLERK_CLOCK_SKEW_SECONDS": "E007",
    "CLERK_API_URL": "E008",
    "CLERK_PROXY_URL": "E009",
    "CLERK_TINYBIRD_HANDSHAKE": "E010",
    "CLERK_TINYBIRD_TEMPLATE": "E011",
    "TINYBIRD_API_URL": "E012",
    "TINYBIRD_WORKSPACE_ID": "E013",
    "TINYBIRD_JWT_SECRET": "E014",
    "TINYBIRD_JWT_SCOPES": "E015",
    "TINYBIRD_TOKEN_LIFETIME": "E016",
    "TINYBIRD_ALLOW_UNPINNED_SCOPES": "E017",
    "TINYBIRD_ANONYMOUS_TOKEN": "E018",
    "CLERK_TINYBIRD_TOKEN_HEADER": "E019",
    "CLERK_TINYBIRD_REQUIRE_AUTH": "E020",
    "CLERK_TINYBIRD_EXCLUDE_PATHS": "E021",
    "CLERK_TINYBIRD_REDIS_URL": "E022",
    "CLERK_TINYBIRD_REFRESH_MARGIN": "E023",
    "CLERK_TINYBIRD_MEMO_MB": "E024",
}
NO_KEY_ID = "E001"
OTHER_ERROR_ID = "E099"

#: (id, what the warning's message says) — in this order.
WARNING_IDS: tuple[tuple[str, str], ...] = (
    ("W001", "no Tinybird token source"),
    ("W002", "CLERK_AUTHORIZED_PARTIES is empty with a production key"),
    ("W003", "the handshake"),
)
NO_MIDDLEWARE_ID = "W004"
OTHER_WARNING_ID = "W099"

_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")

_HINT = "Set it in settings.py or in the environment (a Django setting wins)."


def problem_id(problem: Problem) -> str:
    """The stable id (``clerk_tinybird.E0xx``/``W0xx``) of one finding of ``diagnose``."""
    message = problem.message
    if problem.level == "error":
        if "is required to verify Clerk sessions" in message:
            return f"{TAG}.{NO_KEY_ID}"
        for match in _NAME.finditer(message):
            found = ERROR_IDS.get(match.group())
            if found is not None:
                return f"{TAG}.{found}"
        return f"{TAG}.{OTHER_ERROR_ID}"
    for number, needle in WARNING_IDS:
        if needle in message:
            return f"{TAG}.{number}"
    return f"{TAG}.{OTHER_WARNING_ID}"


def check_configuration(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Every problem of the middleware's configuration, as Django check messages."""
    from django.conf import settings

    found: list[checks.CheckMessage] = []
    custom_source = getattr(settings, TOKEN_SOURCE_SETTING, None) is not None
    for problem in diagnose(merged_environ(settings), SystemClock()):
        ident = problem_id(problem)
        if problem.level == "error":
            found.append(checks.Error(problem.message, hint=_HINT, id=ident))
        elif not (custom_source and ident.endswith(".W001")):
            found.append(checks.Warning(problem.message, id=ident))
    middleware = getattr(settings, "MIDDLEWARE", None) or ()
    if not any(_is_ours(entry) for entry in middleware):
        found.append(
            checks.Warning(
                "clerk_tinybird_middleware.django is installed but ClerkTinybirdMiddleware is "
                "not in MIDDLEWARE: no request is authenticated",
                hint=f"Add {MIDDLEWARE_PATH!r} to MIDDLEWARE, after SessionMiddleware and "
                "CommonMiddleware.",
                id=f"{TAG}.{NO_MIDDLEWARE_ID}",
            )
        )
    return found


checks.register(check_configuration, TAG)


def _is_ours(entry: str) -> bool:
    if entry == MIDDLEWARE_PATH:
        return True
    try:
        from django.utils.module_loading import import_string

        from .middleware import ClerkTinybirdMiddleware

        found = import_string(entry)
    except Exception:  # a broken entry is Django's to report, not ours
        return False
    return isinstance(found, type) and issubclass(found, ClerkTinybirdMiddleware)
