"""The JWKS key-set policy: when to fetch, what to serve, how failures degrade.

Pure state plus a clock; the drivers perform the fetches this object asks for (one at a time,
shared by concurrent callers) and report back with :meth:`KeySet.loaded` / :meth:`KeySet.failed`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers

from .claims import Reason
from .io import HttpRequest, HttpResponse, Op, RetryPolicy, request_with_retries
from .jwt import MalformedJWT, b64url_decode

__all__ = ["KeySet", "Lookup", "parse_jwks"]

FRESH_FOR = 300.0  # a loaded key set is used without refetch for 5 minutes
STALE_LIMIT = 3600.0  # after a failed refresh, keys are served until they are an hour old
MISS_WINDOW = 30.0  # an unknown kid refetches at most once per window (first miss: at once)
FAILURE_PAUSE = 30.0  # while serving stale keys, retry a failed refresh at most this often
UNREACHABLE_PAUSE = 5.0  # with no keys, after Clerk did not answer at all, fail fast this long


@dataclass(frozen=True, slots=True)
class Lookup:
    key: RSAPublicKey | None = None
    fetch: str | None = None  # ask the driver to fetch, for this reason
    failure: str | None = None  # a reason code


def _b64_int(value: Any) -> int:
    if not isinstance(value, str) or not value:
        raise ValueError("missing")
    return int.from_bytes(b64url_decode(value), "big")


def parse_jwks(body: bytes) -> dict[str, RSAPublicKey]:
    """kid → key object for every well-formed RSA signing key; anything else is skipped."""
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    keys = document.get("keys") if isinstance(document, dict) else None
    result: dict[str, RSAPublicKey] = {}
    for jwk in keys if isinstance(keys, list) else ():
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA":
            continue
        if jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid"), str):
            continue
        try:
            numbers = RSAPublicNumbers(_b64_int(jwk.get("e")), _b64_int(jwk.get("n")))
            result[jwk["kid"]] = numbers.public_key()
        except (MalformedJWT, ValueError):
            continue
    return result


class KeySet:
    """Keys for one (API URL, secret key): never shared between middleware instances."""

    def __init__(
        self,
        api_url: str,
        secret_key: str,
        *,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = f"{api_url}/v1/jwks"
        self._headers = {"Authorization": f"Bearer {secret_key}", "Accept": "application/json"}
        self._retry = retry or RetryPolicy()
        self.clock = clock
        self._keys: dict[str, RSAPublicKey] = {}
        self._loaded_at: float | None = None
        self._failed_at: float | None = None
        self._failure = Reason.JWK_LOAD_FAILED
        self._miss_fetch_at: float | None = None
        self._fetching = False
        self._unreachable_at: float | None = None

    def __repr__(self) -> str:
        return f"KeySet(url={self._url!r}, kids={sorted(self._keys)!r})"

    def lookup(self, kid: str, *, may_fetch: bool = True) -> Lookup:
        now = self.clock()
        loaded = self._loaded_at
        if loaded is None or now - loaded >= STALE_LIMIT:  # no keys to serve
            # A load in flight is joined (the driver shares it); after an unreachable Clerk,
            # requests fail fast for a few seconds instead of each waiting out the budget.
            if may_fetch and (self._fetching or not self._unreachable_recently(now)):
                return Lookup(fetch="load" if loaded is None else "stale")
            return Lookup(failure=self._failure)
        if now - loaded >= FRESH_FOR and may_fetch and (self._fetching or self._may_retry(now)):
            return Lookup(fetch="stale")
        key = self._keys.get(kid)
        if key is not None:
            return Lookup(key=key)
        if may_fetch and (self._fetching or self.may_refetch_for_kid()):
            return Lookup(fetch="kid")  # while a fetch is in flight, join it (rotation)
        return Lookup(failure=Reason.KID_MISMATCH)

    def _unreachable_recently(self, now: float) -> bool:
        return self._unreachable_at is not None and now - self._unreachable_at < UNREACHABLE_PAUSE

    def _may_retry(self, now: float) -> bool:
        return self._failed_at is None or now - self._failed_at >= FAILURE_PAUSE

    def may_refetch_for_kid(self) -> bool:
        """First unknown kid after a load: yes; then once per MISS_WINDOW."""
        return self._miss_fetch_at is None or self.clock() - self._miss_fetch_at >= MISS_WINDOW

    def fetch_flow(self, reason: str) -> Generator[Op, Any, None]:
        """Fetch the JWKS and record the outcome."""
        if reason in ("kid", "signature"):
            self._miss_fetch_at = self.clock()
        self._fetching = True
        try:
            response: HttpResponse = yield from request_with_retries(self._request, self._retry)
        finally:
            self._fetching = False
        if response.status == 0:
            self._unreachable_at = self.clock()
            self.failed(Reason.JWK_LOAD_FAILED)
        elif response.status in (401, 403):
            self.failed(Reason.SECRET_KEY_INVALID)
        elif response.status != 200:
            self.failed(Reason.JWK_LOAD_FAILED)
        else:
            keys = parse_jwks(response.body)
            if keys:
                self.loaded(keys, reset_miss_window=reason not in ("kid", "signature"))
            else:
                self.failed(Reason.JWK_LOAD_FAILED)

    def _request(self, timeout: float) -> HttpRequest:
        return HttpRequest("GET", self._url, self._headers, timeout=timeout)

    def loaded(self, keys: dict[str, RSAPublicKey], *, reset_miss_window: bool = True) -> None:
        self._keys = keys
        self._loaded_at = self.clock()
        self._failed_at = None
        self._unreachable_at = None
        if reset_miss_window:
            self._miss_fetch_at = None

    def failed(self, reason: str) -> None:
        self._failed_at = self.clock()
        self._failure = reason
        if self._loaded_at is not None and self._failed_at - self._loaded_at >= STALE_LIMIT:
            self._keys = {}
            self._loaded_at = None
