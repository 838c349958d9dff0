"""Tinybird's Python clients against FakeTinybird, driven by tests/test_tinybird_clients.py.

Run with ``tests/interop/tinybird/.venv/bin/python`` (built by ``setup.sh``): a batch of cases
as JSON on stdin, one JSON object of results on stdout. Secrets listed in the input never reach
stdout (replaced by ``<secret>``), not even inside an exception's message (``TinyB`` puts the
token in the URL, and ``requests`` quotes URLs in its errors).

Two clients:

* ``tinybird-sdk`` (``tinybird_sdk``, Tinybird's Python SDK, stdlib HTTP, Bearer header):
  ``query`` = ``create_client({...}).query(pipe, params)``, ``raw`` = ``TinybirdApi.request``,
  ``sql`` = ``TinybirdClient.sql``.
* ``tinybird`` (the CLI; its client class ``tinybird.tb.client.TinyB``, ``?token=`` in the URL,
  ``requests`` with urllib3 retries): ``pipe_data`` = ``TinyB.pipe_data(pipe, format=, params=)``
  (a POST form body once the URL passes 4096 characters), ``tb_sql`` = ``TinyB.query``,
  ``no_retry`` = ``TinyB._req(path, retries=0)`` (what the client returns for a 429 when it does
  not retry: the error body, as data), ``retry_once`` = ``TinyB._req(path, retries=1)`` (urllib3
  sleeps ``Retry-After`` seconds once, then gives up), ``tb_raw`` = ``TinyB._req_raw``.

``burst`` runs ``count`` calls of the client's own kind, then a raw request, to see the 429 and
its headers (neither SDK exposes response headers from ``query``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from tinybird.tb.client import TinyB  # type: ignore[import-not-found]
from tinybird_sdk.api.api import TinybirdApi  # type: ignore[import-not-found]
from tinybird_sdk.client.base import create_client  # type: ignore[import-not-found]
from tinybird_sdk.client.types import TinybirdError  # type: ignore[import-not-found]

HEADERS = (
    "content-type",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "access-control-allow-origin",
)


def _describe(error: Exception) -> dict[str, Any]:
    described: dict[str, Any] = {"class": type(error).__name__, "message": str(error)}
    if isinstance(error, TinybirdError):
        described.update(
            status_code=error.status_code,
            response=error.response,
            is_auth_error=error.is_auth_error(),
            is_rate_limit_error=error.is_rate_limit_error(),
        )
    return described


def _outcome(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = call()
    except Exception as error:
        return {"ok": False, "error": _describe(error)}
    return {"ok": True, "type": type(value).__name__, "value": value}


def _headers(headers: Any) -> dict[str, str | None]:
    lowered = {str(key).lower(): str(value) for key, value in dict(headers).items()}
    return {name: lowered.get(name) for name in HEADERS}


def _sdk_raw(case: dict[str, Any]) -> dict[str, Any]:
    api = TinybirdApi({"base_url": case["base_url"], "token": case["token"]})
    response = api.request(case["path"])
    return {
        "status": response.status_code,
        "headers": _headers(response.headers),
        "text": response.text,
    }


def _tb_raw(tb: Any, path: str) -> dict[str, Any]:
    response = tb._req_raw(path, retries=0)
    return {
        "status": response.status_code,
        "headers": _headers(response.headers),
        "text": response.text,
    }


def _run(case: dict[str, Any]) -> Any:
    kind = case["kind"]
    client = create_client({"base_url": case["base_url"], "token": case["token"]})
    tb = TinyB(case["token"], host=case["base_url"])
    pipe, params = case.get("pipe"), case.get("params") or {}
    calls: dict[str, Callable[[], Any]] = {
        "query": lambda: client.query(pipe, params),
        "sql": lambda: client.sql(case["sql"]),
        "pipe_data": lambda: tb.pipe_data(pipe, format=case.get("format", "json"), params=params),
        "tb_sql": lambda: tb.query(case["sql"]),
        "no_retry": lambda: tb._req(case["path"], retries=0),
        "retry_once": lambda: tb._req(case["path"], retries=1),
    }
    if kind == "raw":
        return _sdk_raw(case)
    if kind == "tb_raw":
        return _tb_raw(tb, case["path"])
    if kind == "burst":
        each = calls[case["each"]]
        burst = [_outcome(each) for _ in range(case["count"])]
        last = _sdk_raw(case) if case["each"] == "query" else _tb_raw(tb, case["path"])
        return {"calls": burst, "raw": last}
    return _outcome(calls[kind])


def main() -> None:
    request = json.load(sys.stdin)
    results: dict[str, Any] = {}
    for case in request["cases"]:
        try:
            results[case["id"]] = _run(case)
        except Exception as error:
            results[case["id"]] = {"unexpected": f"{type(error).__name__}: {error}"}
    versions = {name: version(name) for name in ("tinybird", "tinybird-sdk")}
    out = json.dumps({"client": "python", "versions": versions, "results": results})
    for secret in request.get("secrets", []):
        out = out.replace(secret, "<secret>")
    sys.stdout.write(out)


if __name__ == "__main__":
    main()
