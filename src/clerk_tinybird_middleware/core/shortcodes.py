"""``{{user.id}}``-style shortcodes, with ``||`` fallbacks, rendered from a session."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ..models import ClerkSession

__all__ = ["FIELDS", "TenantMissing", "render", "render_value", "validate"]

FIELDS: Mapping[str, Callable[[ClerkSession], str | None]] = {
    "user.id": lambda s: s.user_id,
    "session.id": lambda s: s.session_id,
    "org.id": lambda s: s.org_id,
    "org.slug": lambda s: s.org_slug,
    "org.role": lambda s: s.org_role,
}
_SHORTCODE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class TenantMissing(Exception):
    """A shortcode resolved to nothing: refusing to mint a token with an empty tenant."""


def _names(expression: str) -> list[str]:
    return [name.strip() for name in expression.split("||")]


def validate(template: str, where: str) -> None:
    """Raise ``ValueError`` for an unknown shortcode (checked at configuration time)."""
    for match in _SHORTCODE.finditer(template):
        unknown = [n for n in _names(match.group(1)) if n not in FIELDS]
        if unknown:
            known = ", ".join("{{" + n + "}}" for n in FIELDS)
            raise ValueError(f"{where}: unknown shortcode {unknown[0]!r} (known: {known})")


def render(template: str, session: ClerkSession) -> str:
    """Replace every shortcode; the first non-empty alternative wins, none → TenantMissing."""

    def substitute(match: re.Match[str]) -> str:
        for name in _names(match.group(1)):
            value = FIELDS[name](session)
            if value:
                return value
        raise TenantMissing(match.group(0))

    return _SHORTCODE.sub(substitute, template)


def render_value(value: Any, session: ClerkSession) -> Any:
    """Render strings inside JSON-like values (dicts, lists), leaving other values alone."""
    if isinstance(value, str):
        return render(value, session)
    if isinstance(value, Mapping):
        return {k: render_value(v, session) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render_value(v, session) for v in value]
    return value
