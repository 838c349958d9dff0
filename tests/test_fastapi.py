"""FastAPI dependencies over request.state (SPEC §6)."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI

from clerk_tinybird_middleware import AuthResult, ClerkSession, ClerkTinybirdMiddleware
from clerk_tinybird_middleware.fastapi import (
    SessionDep,
    TinybirdTokenDep,
    get_auth,
    get_session,
    require_org,
    require_session,
)
from clerk_tinybird_middleware.testing import FakeClerk
from support import bearer, client

ADMIN_ORG = {"id": "org_1", "slug": "acme", "role": "admin", "permissions": ["org:reports:read"]}


def make_app(fake: FakeClerk, **extra: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    async def me(session: SessionDep) -> dict[str, Any]:
        return {"user": session.user_id, "org": session.org_id}

    @app.get("/maybe")
    async def maybe(
        session: Annotated[ClerkSession | None, Depends(get_session)],
    ) -> dict[str, Any]:
        return {"user": session.user_id if session else None}

    @app.get("/admin", dependencies=[Depends(require_org(role="admin"))])
    async def admin() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/reports", dependencies=[Depends(require_org(permission="org:reports:read"))])
    async def reports() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/token")
    async def token(token: TinybirdTokenDep) -> dict[str, Any]:
        return {"expires_at": token.expires_at_unix}

    app.add_middleware(
        ClerkTinybirdMiddleware,
        jwt_key=fake.public_key_pem,
        secret_key=fake.secret_key,
        clerk_api_url=fake.api_url,
        **extra,
    )
    return app


TABLE = [
    ("/me", None, 401, "unauthenticated"),
    ("/me", ADMIN_ORG, 200, None),
    ("/maybe", None, 200, None),
    ("/admin", None, 401, "unauthenticated"),
    ("/admin", "no-org", 403, "no-active-org"),
    ("/admin", {**ADMIN_ORG, "role": "member"}, 403, "missing-role"),
    ("/admin", ADMIN_ORG, 200, None),
    ("/reports", {**ADMIN_ORG, "permissions": []}, 403, "missing-permission"),
    ("/reports", ADMIN_ORG, 200, None),
    ("/token", None, 401, "unauthenticated"),
    ("/token", ADMIN_ORG, 200, None),
    ("/token", "no-org", 503, "tenant-missing"),
]


@pytest.mark.parametrize(
    ("path", "org", "status", "code"),
    TABLE,
    ids=[f"{p}-{o if isinstance(o, str) or o is None else o['role']}-{s}" for p, o, s, _ in TABLE],
)
async def test_dependencies(
    fake_clerk: FakeClerk, path: str, org: Any, status: int, code: str | None
) -> None:
    headers = {}
    if org is not None:
        claims_org = None if org == "no-org" else org
        headers = bearer(fake_clerk.session_token("user_1", org=claims_org))
    async with client(make_app(fake_clerk)) as http:
        response = await http.get(path, headers=headers)
    assert response.status_code == status
    if code is None:
        return
    detail = response.json()["detail"]
    if status == 401:
        assert detail["error"] == "unauthenticated"
        assert detail["reason"] == "session-token-missing"
        assert response.headers["www-authenticate"] == "Bearer"
    elif status == 403:
        assert detail == {"error": "forbidden", "reason": code, "message": detail["message"]}
        assert "no-store" in response.headers["cache-control"]  # as Flask's and Django's 403
    else:
        assert detail["error"] == "tinybird_token_unavailable"
        assert detail["reason"] == code


async def test_503_carries_retry_after(fake_clerk: FakeClerk) -> None:
    fake_clerk.inject("template", status=429, retry_after=7)
    async with client(make_app(fake_clerk)) as http:
        response = await http.get(
            "/token", headers=bearer(fake_clerk.session_token("u", org=ADMIN_ORG))
        )
    assert response.status_code == 503
    assert response.json()["detail"]["reason"] == "clerk-rate-limited"
    assert 6 <= int(response.headers["retry-after"]) <= 7


async def test_dependency_overrides_work(fake_clerk: FakeClerk) -> None:
    app = make_app(fake_clerk)
    fake_session = ClerkSession("user_override", "sess_x", "org_9", "nine", "org:admin")
    app.dependency_overrides[get_auth] = lambda: AuthResult.signed_in(fake_session)
    app.dependency_overrides[require_session] = lambda: fake_session
    async with client(app) as http:
        assert (await http.get("/me")).json() == {"user": "user_override", "org": "org_9"}
        assert (await http.get("/admin")).status_code == 200
