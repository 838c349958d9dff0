"""A misconfigured app says so at start-up, not as anonymous 500s later (SPEC §11): Starlette
builds middleware lazily and ``uvicorn`` (``--lifespan auto``, its default) swallows the
lifespan error, so the middleware logs it at ERROR, naming the variable, when it is built."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from services import free_port

HERE = Path(__file__).resolve().parent


def test_uvicorn_without_lifespan_on_shows_the_error_before_any_request() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "TINYBIRD_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "_unconfigured_app:app", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as server:
        assert server.stderr is not None
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                line = server.stderr.readline()
                if not line:
                    break
                lines.append(line)
                if "Application startup complete" in line:
                    break  # no request was ever sent
        finally:
            server.terminate()
            server.wait(timeout=10)
    output = "".join(lines)
    assert "clerk-tinybird: configuration error" in output, output
    assert "CLERK_SECRET_KEY or CLERK_JWT_KEY is required" in output
