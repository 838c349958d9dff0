"""A Flask app that hands each signed-in tenant its own Tinybird JWT — the Flask twin of
``examples/starlette_app`` (same page, same endpoints).

Run it against real Clerk and Tinybird (everything from ``app.config`` / the environment, see
the README)::

    CLERK_SECRET_KEY=sk_... TINYBIRD_API_URL=https://api.tinybird.co \\
        flask --app examples/flask_app/app.py run

or with no account at all: ``clerk-tinybird demo --app flask``.

What it shows:

* ``ClerkTinybird(app)`` — one line: every request is verified, ``g.clerk_session`` and
  ``g.tinybird_token`` are set, and a signed-in response gets ``x-tinybird-token`` /
  ``x-tinybird-token-expires-at`` headers;
* ``/`` — the Starlette example's page: its script reads the token from those headers
  (``fetch('/api/token')``) and queries a Tinybird pipe from the browser with it;
* ``/api/me``, ``/api/org``, ``/api/hits`` — views guarded by the decorators (signed in; org
  admin; a Tinybird token, used server side);
* CORS for another origin (a separate SPA): both token headers exposed (in production, use
  flask-cors with the same ``expose_headers``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from flask import Flask, Response, g, request

from clerk_tinybird_middleware import ClerkSession, Settings
from clerk_tinybird_middleware.flask import (
    ClerkTinybird,
    require_org,
    require_session,
    require_tinybird_token,
)

__all__ = ["create_app"]

# One dashboard, two backends: the page (and its /api/* calls) is the Starlette example's.
PAGE = Path(__file__).resolve().parent.parent / "starlette_app" / "index.html"
DEFAULT_PIPE = "analytics_hits"


def create_app(
    settings: Settings | None = None,
    *,
    pipe: str = DEFAULT_PIPE,
    sign_in_url: str | None = None,
    sign_out_url: str | None = None,
    cors_origins: Sequence[str] = ("http://localhost:3000",),
    page_config: Mapping[str, Any] | None = None,
) -> Flask:
    """Build the app. ``settings=None`` reads ``app.config`` over the environment.

    :param pipe: the Tinybird pipe the page and ``/api/hits`` query.
    :param sign_in_url: where the page sends signed-out users (your Clerk sign-in page).
    :param sign_out_url: a URL the page's "Sign out" button POSTs to, if any.
    :param cors_origins: other origins (a separate SPA) allowed to call the API.
    :param page_config: more keys for the page script's configuration (the demo passes the
        orgs to try in "read another tenant" and the URL of its handshake report).
    """
    app = Flask(__name__)
    # The one line. Keyword arguments override single settings (here: skip /health entirely).
    ClerkTinybird(app, settings, exclude_paths=("/health",))
    resolved: Settings = app.extensions["clerk_tinybird"].settings
    header = resolved.token_header or "x-tinybird-token"
    tinybird_url = resolved.tinybird_api_url
    allowed_origins = frozenset(cors_origins)

    page = (
        PAGE.read_text(encoding="utf-8")
        .replace("FastAPI dependencies", "Flask decorators")
        .replace(
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
    )

    @app.after_request
    def cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin in allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = f"{header}, {header}-expires-at"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET"
                response.headers["Access-Control-Allow-Headers"] = "Authorization"
            response.vary.add("Origin")
        return response

    @app.get("/")
    def index() -> Response:
        """The dashboard; its script fetches ``/api/token`` and then the pipe."""
        return Response(page, mimetype="text/html")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/token")
    def token() -> dict[str, Any]:
        """Who is signed in. The token itself travels in the response headers, not here."""
        auth = g.clerk_auth
        session = g.clerk_session
        return {
            "signed_in": session is not None,
            "reason": auth.reason,
            "user_id": session.user_id if session else None,
            "org_id": session.org_id if session else None,
            "org_slug": session.org_slug if session else None,
            "org_role": session.org_role if session else None,
            "tinybird_token_error": g.tinybird_token_error,
        }

    @app.get("/api/me")
    @require_session
    def me() -> dict[str, Any]:
        """Signed-in users only (401 otherwise)."""
        session: ClerkSession = g.clerk_session
        return session.as_dict()

    @app.get("/api/org")
    @require_org(role="admin")
    def org() -> dict[str, Any]:
        """Admins of the active org only (401 signed out, 403 otherwise)."""
        session: ClerkSession = g.clerk_session
        return {"org_id": session.org_id, "org_slug": session.org_slug, "you": "admin"}

    @app.get("/api/hits")
    @require_tinybird_token
    def hits() -> tuple[dict[str, Any], int]:
        """Query the pipe server side with the request's token (503 when there is none)."""
        answer = httpx.get(
            f"{tinybird_url}/v0/pipes/{pipe}.json",
            headers={"Authorization": f"Bearer {g.tinybird_token.jwt}"},
            timeout=10,
        )
        if answer.status_code != 200:
            return {"error": "tinybird_error", "status": answer.status_code}, 502
        body = answer.json()
        return {"rows": body.get("rows"), "data": body.get("data")}, 200

    return app


def _script_json(value: dict[str, Any]) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` break-out)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
