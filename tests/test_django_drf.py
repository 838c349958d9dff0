"""Django REST framework: ClerkAuthentication and the permission classes, through the
middleware, with Django's Client and AsyncClient (DRF views are sync; Django runs them off
the event loop under ASGI), against FakeClerk."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import AsyncClient, Client

from clerk_tinybird_middleware import ClerkSession
from clerk_tinybird_middleware.django import (
    AnonymousClerkUser,
    ClerkUser,
    HasOrgPermission,
    HasOrgRole,
)
from clerk_tinybird_middleware.testing import FakeClerk
from constants import ORG

KINDS = ("sync", "async")
MEMBER = {"id": "org_m", "slug": "members", "role": "member", "permissions": []}
OWNER = {"id": "org_o", "slug": "owners", "role": "owner", "permissions": []}


pytestmark = pytest.mark.usefixtures("clean_environment")


class Caller:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.client: Any = Client() if kind == "sync" else AsyncClient()

    async def get(self, path: str, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.kind == "sync":
            return await asyncio.to_thread(self.client.get, path, headers=headers)
        return await self.client.get(path, headers=headers)


@pytest.mark.parametrize("kind", KINDS)
async def test_request_user_and_auth_need_no_user_table(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    caller = Caller(kind)
    token = fake_clerk.session_token("user_1", org=ORG)
    me = await caller.get("/drf/me", token)
    assert me.status_code == 200
    assert me.json() == {
        "id": "user_1",
        "pk": "user_1",
        "is_authenticated": True,
        "org_id": "org_1",
        "org_role": "org:admin",
        "auth_status": "signed-in",
    }
    assert "x-tinybird-token" in me.headers  # the middleware's headers on DRF responses too
    who = await caller.get("/drf/who")
    assert who.json() == {
        "type": "AnonymousClerkUser",
        "is_authenticated": False,
        "id": None,
        "auth": None,
    }


@pytest.mark.parametrize("kind", KINDS)
async def test_is_signed_in_answers_401_with_the_readme_body(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    caller = Caller(kind)
    missing = await caller.get("/drf/me")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    body = missing.json()
    assert (body["error"], body["reason"]) == ("unauthenticated", "session-token-missing")
    assert body["message"]
    expired = await caller.get("/drf/me", fake_clerk.session_token("user_1", lifetime=-120))
    assert expired.status_code == 401
    assert expired.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert expired.json()["reason"] == "token-expired"


#: (path, who) → (status, reason); reason None for a 403: DRF's own body (compositions)
DRF_DECISIONS = {
    ("/drf/admin", "out"): (401, "session-token-missing"),
    ("/drf/admin", "noorg"): (403, "no-active-org"),
    ("/drf/admin", "member"): (403, "missing-role"),
    ("/drf/admin", "owner"): (403, "missing-role"),
    ("/drf/admin", "admin"): (200, None),
    ("/drf/reports", "out"): (401, "session-token-missing"),
    ("/drf/reports", "noorg"): (403, None),
    ("/drf/reports", "member"): (403, None),
    ("/drf/reports", "owner"): (403, None),
    ("/drf/reports", "admin"): (200, None),
    ("/drf/admin-or-owner", "out"): (401, "session-token-missing"),
    ("/drf/admin-or-owner", "noorg"): (403, None),
    ("/drf/admin-or-owner", "member"): (403, None),
    ("/drf/admin-or-owner", "owner"): (200, None),
    ("/drf/admin-or-owner", "admin"): (200, None),
    ("/drf/not-admin", "out"): (401, "session-token-missing"),
    ("/drf/not-admin", "member"): (200, None),
    ("/drf/not-admin", "admin"): (403, None),
}


@pytest.mark.parametrize("kind", KINDS)
async def test_org_permission_classes_and_their_compositions(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    tokens = {
        "noorg": fake_clerk.session_token("user_noorg"),
        "member": fake_clerk.session_token("user_member", org=MEMBER),
        "owner": fake_clerk.session_token("user_owner", org=OWNER),
        "admin": fake_clerk.session_token("user_admin", org=ORG),
    }
    caller = Caller(kind)
    for (path, who), (status, reason) in DRF_DECISIONS.items():
        response = await caller.get(path, tokens.get(who))
        where = f"{path} as {who}"
        assert response.status_code == status, where
        body = response.json()
        if status == 200:
            assert body["ok"] is True, where
        elif status == 401:
            assert (body["error"], body["reason"]) == ("unauthenticated", reason), where
        elif reason is not None:  # a single class: the README's 403 body
            assert body == {
                "error": "forbidden",
                "reason": reason,
                "message": body["message"],
            }, where
        else:  # a composition (&, |, ~) has no message of its own: DRF's 403
            assert list(body) == ["detail"], where


def test_permission_factories_make_one_class_per_value() -> None:
    from rest_framework.permissions import BasePermission

    admin = HasOrgRole("admin")
    assert admin is HasOrgRole("admin")
    assert admin is not HasOrgRole("org:owner")
    assert issubclass(admin, BasePermission)
    assert admin.__name__ == "HasOrgRole('admin')"
    assert HasOrgPermission("org:reports:read").permission == "org:reports:read"
    with pytest.raises(TypeError, match="needs a role"):
        HasOrgRole("")
    with pytest.raises(TypeError, match="needs a permission"):
        HasOrgPermission(None)  # type: ignore[arg-type]


def test_light_users() -> None:
    session = ClerkSession(
        "user_9",
        "sess_9",
        org_id="org_9",
        org_slug="nine",
        org_role="org:admin",
        org_permissions=("org:reports:read",),
    )
    user = ClerkUser(session)
    assert (user.id, user.pk, user.username, str(user)) == ("user_9",) * 4
    assert (user.org_id, user.org_slug, user.session_id) == ("org_9", "nine", "sess_9")
    assert user.is_authenticated
    assert not user.is_anonymous
    assert user.has(role="admin")
    assert user.has(permission="reports:read")
    assert not user.has(role="owner")
    assert user == ClerkUser(session)
    assert hash(user) == hash(ClerkUser(session))
    anonymous = AnonymousClerkUser()
    assert not anonymous.is_authenticated
    assert anonymous.is_anonymous
    assert anonymous.id is None
    assert not anonymous.has(role="admin")
    assert anonymous != user


def test_drf_names_come_from_the_package() -> None:
    import clerk_tinybird_middleware.django as package
    from clerk_tinybird_middleware.django import drf

    for name in ("ClerkAuthentication", "IsSignedIn", "HasOrgRole", "HasOrgPermission"):
        assert getattr(package, name) is getattr(drf, name)
    with pytest.raises(AttributeError):
        package.NotAThing  # noqa: B018
