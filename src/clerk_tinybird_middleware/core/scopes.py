"""Tinybird scope validation (at construction): tokens that cannot read every tenant by
mistake, and that Tinybird will not refuse in production.

Tinybird's JWT scope types are ``PIPES:READ`` (with optional ``fixed_params``),
``DATASOURCES:READ`` (with optional ``filter``, an SQL condition) and ``DATASOURCES:APPEND``.
Tinybird applies ``fixed_params`` only to pipes and ``filter`` only to data sources, so either
in the wrong place filters nothing. Every read scope must pin the tenant: a fixed param or a
filter that uses a tenant shortcode (``{{org.id}}``, ``{{org.slug}}``, ``{{user.id}}``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from . import shortcodes
from .tokens import pins_nothing

__all__ = ["READ_TYPES", "SCOPE_TYPES", "TENANT_FIELDS", "ScopeProblem", "check_scopes"]

SCOPE_TYPES = ("PIPES:READ", "DATASOURCES:READ", "DATASOURCES:APPEND")
READ_TYPES = frozenset({"PIPES:READ", "DATASOURCES:READ"})
#: Shortcodes that name a tenant. ``{{org.role}}`` and ``{{session.id}}`` do not: a scope
#: pinned only by a role reads the rows of every org where someone has that role.
TENANT_FIELDS = frozenset({"org.id", "org.slug", "user.id"})
_SHORTCODE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class ScopeProblem(ValueError):
    """A scope Tinybird would refuse, or one that would not pin the tenant (``unpinned``)."""

    def __init__(self, message: str, *, unpinned: bool = False, empty: bool = False) -> None:
        super().__init__(message)
        self.unpinned = unpinned
        self.empty = empty


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def pins_tenant(value: Any, tenant: frozenset[str] = frozenset()) -> bool:
    """Some string in ``value`` has a shortcode whose every alternative is a tenant field —
    or, for a scopes callable's output, holds one of the session's own ``tenant`` values."""
    for text in _strings(value):
        if tenant and any(part and part in text for part in tenant):
            return True
        for match in _SHORTCODE.finditer(text):
            names = [name.strip() for name in match.group(1).split("||")]
            if names and all(name in TENANT_FIELDS for name in names):
                return True
    return False


def check_scopes(
    scopes: Sequence[Any], *, allow_unpinned: bool = False, tenant: frozenset[str] = frozenset()
) -> None:
    """Raise :class:`ScopeProblem` for the first scope that is wrong (messages name the scope
    by position and resource, never a value). ``tenant``: the session's user id, org id and
    slug, which pin a scope too (a callable writes them in directly)."""
    if not scopes:
        raise ScopeProblem("at least one scope is required")
    for index, scope in enumerate(scopes):
        where = f"scope {index + 1}"
        if not isinstance(scope, Mapping):
            raise ScopeProblem(f"{where} must be an object")
        kind, resource = scope.get("type"), scope.get("resource")
        if kind not in SCOPE_TYPES:
            raise ScopeProblem(
                f"{where}: 'type' must be one of {', '.join(SCOPE_TYPES)} (got {kind!r})"
            )
        if not isinstance(resource, str) or not resource.strip():
            raise ScopeProblem(f"{where}: 'resource' must be a pipe or data source name")
        where = f"{where} ({kind} {resource})"
        unknown = set(scope) - {"type", "resource", "fixed_params", "filter"}
        if unknown:
            raise ScopeProblem(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        if "fixed_params" in scope and kind != "PIPES:READ":
            raise ScopeProblem(f"{where}: 'fixed_params' only apply to PIPES:READ scopes")
        if "filter" in scope and kind != "DATASOURCES:READ":
            raise ScopeProblem(f"{where}: 'filter' only applies to DATASOURCES:READ scopes")
        fixed = scope.get("fixed_params")
        if fixed is not None and not isinstance(fixed, Mapping):
            raise ScopeProblem(f"{where}: 'fixed_params' must be an object")
        if "fixed_params" in scope and (
            fixed is None or any(pins_nothing(v) for v in fixed.values())
        ):
            raise ScopeProblem(
                f"{where}: a fixed param is null or empty (that pins no tenant)", empty=True
            )
        if "filter" in scope and (
            not isinstance(scope["filter"], str) or pins_nothing(scope["filter"])
        ):
            raise ScopeProblem(f"{where}: 'filter' must be a non-empty SQL condition", empty=True)
        for text in (resource, *_strings(fixed), *_strings(scope.get("filter"))):
            try:
                shortcodes.validate(text, where)
            except ValueError as exc:
                raise ScopeProblem(str(exc)) from None
        if kind in READ_TYPES and not allow_unpinned:
            pinned = pins_tenant(fixed, tenant) or pins_tenant(scope.get("filter"), tenant)
            if not pinned:
                raise ScopeProblem(
                    f"{where} does not pin the tenant: add a fixed param (or, for a data "
                    "source, a filter) using {{org.id}}, {{org.slug}} or {{user.id}}",
                    unpinned=True,
                )
