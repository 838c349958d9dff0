"""A FastAPI app that hands each signed-in tenant its own Tinybird JWT.

Run it against real Clerk and Tinybird (everything from the environment, see the README)::

    CLERK_SECRET_KEY=sk_... CLERK_PUBLISHABLE_KEY=pk_... TINYBIRD_API_URL=https://api.tinybird.co \\
        uvicorn --factory starlette_app.app:create_app --app-dir examples

or with no account at all: ``clerk-tinybird demo``.

What it shows:

* ``app.add_middleware(ClerkTinybirdMiddleware)`` — one line: every request is verified and a
  signed-in one gets ``x-tinybird-token`` / ``x-tinybird-token-expires-at`` response headers;
* ``/`` — a page whose script reads the token from those headers (``fetch('/api/token')``) and
  queries a Tinybird pipe from the browser with it;
* ``/api/me``, ``/api/org``, ``/api/hits`` — endpoints guarded by the FastAPI dependencies
  (signed in; org admin; a Tinybird token, used server side);
* CORS: ``CORSMiddleware`` is added *after* ours so it sits outside it, and exposes both token
  headers to cross-origin pages.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse

from clerk_tinybird_middleware import ClerkSession, ClerkTinybirdMiddleware, Settings
from clerk_tinybird_middleware.fastapi import (
    SessionDep,
    TinybirdTokenDep,
    get_auth,
    require_org,
)
from clerk_tinybird_middleware.models import AuthResult

__all__ = ["create_app"]

PAGE = Path(__file__).with_name("index.html")
DEFAULT_PIPE = "analytics_hits"


def create_app(
    settings: Settings | None = None,
    *,
    pipe: str = DEFAULT_PIPE,
    sign_in_url: str | None = None,
    sign_out_url: str | None = None,
    cors_origins: Sequence[str] = ("http://localhost:3000",),
    page_config: Mapping[str, Any] | None = None,
) -> FastAPI:
    """Build the app. ``settings=None`` reads every option from the environment.

    :param pipe: the Tinybird pipe the page and ``/api/hits`` query.
    :param sign_in_url: where the page sends signed-out users (your Clerk sign-in page).
    :param sign_out_url: a URL the page's "Sign out" button POSTs to, if any.
    :param cors_origins: other origins (a separate SPA) allowed to call the API.
    :param page_config: more keys for the page script's configuration (the demo passes the
        orgs to try in "read another tenant" and the URL of its handshake report).
    """
    settings = settings if settings is not None else Settings.from_env()
    header = settings.token_header or "x-tinybird-token"
    tinybird_url = settings.tinybird_api_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client for the app's lifetime: server-side Tinybird queries reuse connections.
        async with httpx.AsyncClient(base_url=tinybird_url, timeout=10) as client:
            app.state.tinybird = client
            yield

    app = FastAPI(title="clerk-tinybird example", lifespan=lifespan, docs_url=None, redoc_url=None)

    # The one line. Keyword arguments override single settings (here: skip /health entirely).
    app.add_middleware(ClerkTinybirdMiddleware, settings=settings, exclude_paths=("/health",))
    # Added after ours, so it wraps ours: our own 401s get CORS headers too, and browsers on
    # other origins may read both token headers.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(cors_origins),
        allow_credentials=True,
        allow_methods=["GET"],
        allow_headers=["Authorization"],
        expose_headers=[header, f"{header}-expires-at"],
    )

    page = PAGE.read_text(encoding="utf-8").replace(
        "__CONFIG__",
        _script_json(
            {
                "tinybirdApiUrl": tinybird_url,
                "pipe": pipe,
                "tokenHeader": header,
                "signInUrl": sign_in_url,
                "signOutUrl": sign_out_url,
                **(page_config or {}),
            }
        ),
    )

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        """The dashboard; its script fetches ``/api/token`` and then the pipe."""
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/token")
    async def token(request: Request, auth: Annotated[AuthResult, Depends(get_auth)]) -> Any:
        """Who is signed in. The token itself travels in the response headers, not here."""
        session = auth.session
        return {
            "signed_in": session is not None,
            "reason": auth.reason,
            "user_id": session.user_id if session else None,
            "org_id": session.org_id if session else None,
            "org_slug": session.org_slug if session else None,
            "org_role": session.org_role if session else None,
            "tinybird_token_error": getattr(request.state, "tinybird_token_error", None),
        }

    @app.get("/api/me")
    async def me(session: SessionDep) -> dict[str, Any]:
        """Signed-in users only (401 otherwise)."""
        return session.as_dict()

    @app.get("/api/org")
    async def org(
        session: Annotated[ClerkSession, Depends(require_org(role="admin"))],
    ) -> dict[str, Any]:
        """Admins of the active org only (401 signed out, 403 otherwise)."""
        return {"org_id": session.org_id, "org_slug": session.org_slug, "you": "admin"}

    @app.get("/api/hits")
    async def hits(request: Request, token: TinybirdTokenDep) -> Any:
        """Query the pipe server side with the request's token (503 when there is none)."""
        client: httpx.AsyncClient = request.app.state.tinybird
        answer = await client.get(
            f"/v0/pipes/{pipe}.json", headers={"Authorization": f"Bearer {token.jwt}"}
        )
        if answer.status_code != 200:
            return JSONResponse(
                {"error": "tinybird_error", "status": answer.status_code}, status_code=502
            )
        body = answer.json()
        return {"rows": body.get("rows"), "data": body.get("data")}

    return app


def _script_json(value: dict[str, Any]) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` break-out)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
