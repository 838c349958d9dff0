"""Small apps and helpers shared by the lead's tests (plain functions, no fixtures)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clerk_tinybird_middleware import ClerkTinybirdMiddleware


async def _state(request: Request) -> Response:
    state = request.state
    auth = getattr(state, "clerk_auth", None)
    session = getattr(state, "clerk_session", None)
    token = getattr(state, "tinybird_token", None)
    return JSONResponse(
        {
            "status": auth.status if auth else None,
            "reason": auth.reason if auth else None,
            "user": session.user_id if session else None,
            "org": session.org_id if session else None,
            "org_role": session.org_role if session else None,
            "permissions": list(session.org_permissions) if session else None,
            "token": token is not None,
            "anonymous": token.anonymous if token else None,
            "token_error": getattr(state, "tinybird_token_error", None),
        },
        headers={"cache-control": "public, max-age=60"},
    )


def state_app(**settings: Any) -> Starlette:
    """An app whose every path echoes ``request.state`` as JSON, behind the middleware."""
    app = Starlette(routes=[Route("/{path:path}", _state, methods=["GET", "POST", "OPTIONS"])])
    app.add_middleware(ClerkTinybirdMiddleware, **settings)
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def jwt_claims(token: str) -> dict[str, Any]:
    """Decode a JWT's payload without verifying it (tests only)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
