"""The app one worker process of the fleet tests serves (``uvicorn _fleet_app:create_app
--factory``): a Starlette app behind the middleware, configured from the environment only
(``CLERK_SECRET_KEY``, ``CLERK_API_URL``, ``CLERK_TINYBIRD_REDIS_URL``), as in production."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clerk_tinybird_middleware import ClerkTinybirdMiddleware


async def whoami(request: Request) -> Response:
    session = request.state.clerk_session
    return JSONResponse(
        {
            "pid": os.getpid(),
            "user": session.user_id if session else None,
            "token": request.state.tinybird_token is not None,
            "error": request.state.tinybird_token_error,
        }
    )


def create_app() -> Starlette:
    app = Starlette(routes=[Route("/", whoami)])
    app.add_middleware(ClerkTinybirdMiddleware)
    return app
