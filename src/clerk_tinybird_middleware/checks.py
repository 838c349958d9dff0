"""``clerk-tinybird check``: every configuration rule, offline, and with ``--online`` what
Clerk says — the JWKS fetched with the secret key, and the JWT template read from
``GET /v1/jwt_templates`` (it exists, signs HS256 with a custom key, pins the tenant through
shortcodes, and lives longer than the refresh margin).
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .core.keys import parse_jwks
from .core.ops import Clock, HttpRequest, Op
from .core.scopes import TENANT_FIELDS
from .settings import Settings
from .wiring import diagnose

__all__ = ["Finding", "offline", "online"]

_SHORTCODE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``ok``, ``warning`` or ``error``."""

    level: str
    message: str


def offline(environ: Mapping[str, str], clock: Clock) -> list[Finding]:
    problems = [Finding(p.level, p.message) for p in diagnose(environ, clock)]
    if not any(p.level == "error" for p in problems):
        problems.insert(0, Finding("ok", "configuration: every setting is valid"))
    return problems


def _request(settings: Settings, path: str, endpoint: str) -> HttpRequest:
    return HttpRequest(
        "GET",
        f"{settings.clerk_api_url}{path}",
        {"Authorization": f"Bearer {settings.secret_key}", "Accept": "application/json"},
        timeout=5.0,
        endpoint=endpoint,
    )


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _pinned(fixed: Any) -> set[str]:
    """The tenant fields a scope's fixed params pin through shortcodes."""
    found = set()
    for text in _strings(fixed):
        for match in _SHORTCODE.finditer(text):
            names = [n.strip() for n in match.group(1).split("||")]
            if names and all(n in TENANT_FIELDS for n in names):
                found.update(names)
    return found


def template_findings(template: Mapping[str, Any], settings: Settings) -> list[Finding]:
    """What a JWT template must be for the middleware (each rule one line)."""
    name = settings.tinybird_template
    found = [Finding("ok", f"JWT template {name!r} exists")]
    algorithm, custom = template.get("signing_algorithm"), template.get("custom_signing_key")
    if algorithm == "HS256" and custom:
        found.append(Finding("ok", "it signs HS256 with a custom signing key"))
    else:
        found.append(
            Finding(
                "error",
                f"JWT template {name!r} must sign HS256 with a custom signing key (your "
                f"Tinybird admin token); it signs {algorithm} "
                f"{'with a custom key' if custom else 'with Clerk keys'}",
            )
        )
    claims = template.get("claims")
    if isinstance(claims, str):
        try:
            claims = json.loads(claims)
        except ValueError:
            claims = None
    scopes = claims.get("scopes") if isinstance(claims, Mapping) else None
    if not isinstance(scopes, list) or not scopes:
        found.append(Finding("error", f"JWT template {name!r} has no 'scopes' claim"))
    else:
        for index, scope in enumerate(scopes, 1):
            fixed = scope.get("fixed_params") if isinstance(scope, Mapping) else None
            pinned = _pinned(fixed)
            label = (
                f"scope {index} ({scope.get('resource') if isinstance(scope, Mapping) else '?'})"
            )
            if pinned:
                found.append(Finding("ok", f"{label} pins {', '.join(sorted(pinned))}"))
            else:
                found.append(
                    Finding(
                        "error",
                        f"{label} of JWT template {name!r} does not pin the tenant: add fixed "
                        "params using {{org.id}}, {{org.slug}} or {{user.id}}",
                    )
                )
    if isinstance(claims, Mapping) and "workspace_id" not in claims:
        found.append(Finding("error", f"JWT template {name!r} has no 'workspace_id' claim"))
    lifetime = template.get("lifetime")
    margin = settings.refresh_margin_seconds
    if isinstance(lifetime, int | float) and not isinstance(lifetime, bool):
        if lifetime <= margin:
            found.append(
                Finding(
                    "error",
                    f"JWT template {name!r} lives {lifetime:g} s, not longer than "
                    f"CLERK_TINYBIRD_REFRESH_MARGIN ({margin:g} s): every request would refetch",
                )
            )
        else:
            found.append(
                Finding("ok", f"lifetime {lifetime:g} s, refreshed {margin:g} s before expiry")
            )
    return found


def online(settings: Settings) -> Generator[Op, Any, list[Finding]]:
    """The checks that ask Clerk (a flow: run it with a driver)."""
    if not settings.secret_key:
        return [Finding("warning", "--online needs CLERK_SECRET_KEY: nothing to ask Clerk")]
    found: list[Finding] = []
    response = yield _request(settings, "/v1/jwks", "jwks")
    if response.status == 200 and parse_jwks(response.body):
        found.append(
            Finding("ok", f"JWKS: {len(parse_jwks(response.body))} signing key(s) from Clerk")
        )
    elif response.status in (401, 403):
        found.append(Finding("error", "CLERK_SECRET_KEY: Clerk refused it (401) for the JWKS"))
        return found
    else:
        what = f"HTTP {response.status}" if response.status else "no answer"
        found.append(Finding("error", f"CLERK_API_URL: the JWKS could not be loaded ({what})"))
        return found
    if settings.tinybird_workspace_id and settings.tinybird_jwt_secret:
        found.append(Finding("ok", "Tinybird tokens are minted locally: no JWT template used"))
        return found
    response = yield _request(settings, "/v1/jwt_templates?paginated=true&limit=500", "other")
    if response.status != 200:
        what = f"HTTP {response.status}" if response.status else "no answer"
        found.append(Finding("error", f"the JWT templates could not be listed ({what})"))
        return found
    try:
        listed = json.loads(response.body)
    except ValueError:
        listed = None
    templates = listed.get("data") if isinstance(listed, Mapping) else listed
    templates = templates if isinstance(templates, list) else []
    match = next(
        (
            t
            for t in templates
            if isinstance(t, Mapping) and t.get("name") == settings.tinybird_template
        ),
        None,
    )
    if match is None:
        names = ", ".join(sorted(str(t.get("name")) for t in templates if isinstance(t, Mapping)))
        found.append(
            Finding(
                "error",
                f"CLERK_TINYBIRD_TEMPLATE: no JWT template named {settings.tinybird_template!r}"
                f" (found: {names or 'none'})",
            )
        )
        return found
    return found + template_findings(match, settings)
