"""Light user objects for Django REST framework's ``request.user``: no Django user table.

:class:`ClerkUser` is what :class:`~clerk_tinybird_middleware.django.drf.ClerkAuthentication`
puts in ``request.user`` for a signed-in request; :class:`AnonymousClerkUser` is meant for
DRF's ``UNAUTHENTICATED_USER`` setting (DRF's default, Django's ``AnonymousUser``, needs
``django.contrib.auth`` installed).
"""

from __future__ import annotations

from typing import Any

from ..models import ClerkSession

__all__ = ["AnonymousClerkUser", "ClerkUser"]


class ClerkUser:
    """The signed-in Clerk user of a request: ``id``/``pk``/``username`` are the Clerk user id;
    ``org_id``, ``org_slug``, ``org_role``, ``org_permissions`` and ``session_id`` come from the
    verified session (``session``); :meth:`has` is :meth:`ClerkSession.has`."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    __slots__ = ("session",)

    def __init__(self, session: ClerkSession) -> None:
        self.session = session

    @property
    def id(self) -> str:
        return self.session.user_id

    pk = id
    username = id

    @property
    def session_id(self) -> str:
        return self.session.session_id

    @property
    def org_id(self) -> str | None:
        return self.session.org_id

    @property
    def org_slug(self) -> str | None:
        return self.session.org_slug

    @property
    def org_role(self) -> str | None:
        return self.session.org_role

    @property
    def org_permissions(self) -> tuple[str, ...]:
        return self.session.org_permissions

    def has(self, *, role: str | None = None, permission: str | None = None) -> bool:
        return self.session.has(role=role, permission=permission)

    def get_username(self) -> str:
        return self.session.user_id

    def __str__(self) -> str:
        return self.session.user_id

    def __repr__(self) -> str:
        return f"ClerkUser(id={self.id!r}, org_id={self.org_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClerkUser) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("ClerkUser", self.id))


class AnonymousClerkUser:
    """A signed-out request's user: ``is_authenticated`` false, no id, no org."""

    is_authenticated = False
    is_anonymous = True
    is_active = False
    is_staff = False
    is_superuser = False
    id = None
    pk = None
    username = ""
    session = None
    session_id = None
    org_id = None
    org_slug = None
    org_role = None
    org_permissions: tuple[str, ...] = ()

    def has(self, *, role: str | None = None, permission: str | None = None) -> bool:
        return False

    def get_username(self) -> str:
        return ""

    def __str__(self) -> str:
        return "AnonymousClerkUser"

    def __repr__(self) -> str:
        return "AnonymousClerkUser()"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, AnonymousClerkUser)

    def __hash__(self) -> int:
        return 1
