"""The JWKS key-set policy: when to fetch, what to serve, how failures degrade.

Pure state plus a clock. Verification asks :meth:`KeySet.lookup`; when it says "fetch", the
verifier yields ``Join(key_set.fetch_key, ...)`` so concurrent callers share one
:meth:`KeySet.fetch_flow`. ``generation`` changes whenever a load drops or replaces a key, so
anything remembered about a token signed with that key can be re-checked cheaply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt import PyJWK, PyJWKError

from .claims import Reason
from .ops import Clock, HttpRequest, HttpResponse, Op, RetryPolicy, request_with_retries

__all__ = ["KeySet", "Lookup", "parse_jwks"]

logger = logging.getLogger("clerk_tinybird_middleware")

FRESH_FOR = 300.0  # a loaded key set is used without refetch for 5 minutes
STALE_LIMIT = 3600.0  # after a failed refresh, keys are served until they are an hour old
MISS_WINDOW = 30.0  # an unknown kid refetches at most once per window (first miss: at once)
FAILURE_PAUSE = 30.0  # while serving stale keys, retry a failed refresh at most this often
UNREACHABLE_PAUSE = 5.0  # with no keys, after Clerk did not answer at all, fail fast this long


@dataclass(frozen=True, slots=True)
class Lookup:
    key: RSAPublicKey | None = None
    fetch: str | None = None  # ask for a fetch, for this reason
    failure: str | None = None  # a reason code


def parse_jwks(body: bytes) -> dict[str, RSAPublicKey]:
    """kid → key object for every well-formed RSA signing key (PyJWT's JWK parser); anything
    else is skipped."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    keys = document.get("keys") if isinstance(document, dict) else None
    result: dict[str, RSAPublicKey] = {}
    for jwk in keys if isinstance(keys, list) else ():
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA":
            continue
        kid = jwk.get("kid")
        if jwk.get("use", "sig") != "sig" or not isinstance(kid, str) or not kid:
            continue
        try:
            key = PyJWK(dict(jwk), algorithm="RS256").key  # kty RSA: only n and e are read
        except (PyJWKError, ValueError, TypeError, KeyError):
            continue
        if isinstance(key, RSAPublicKey):
            result[kid] = key
    return result


def _same_key(a: RSAPublicKey, b: RSAPublicKey) -> bool:
    return a.public_numbers() == b.public_numbers()


class KeySet:
    """Keys for one (API URL, secret key): never shared between middleware instances."""

    def __init__(self, api_url: str, secret_key: str, *, clock: Clock, retry: RetryPolicy) -> None:
        self._url = f"{api_url}/v1/jwks"
        self._headers = {"Authorization": f"Bearer {secret_key}", "Accept": "application/json"}
        self._retry = retry
        self.clock = clock
        self.fetch_key = ("jwks", id(self))
        self.generation = 0
        self._keys: dict[str, RSAPublicKey] = {}
        self._loaded_at: float | None = None
        self._failed_at: float | None = None
        self._failure = Reason.JWK_LOAD_FAILED
        self._miss_fetch_at: float | None = None
        self._fetching = False
        self._unreachable_at: float | None = None

    def __repr__(self) -> str:
        return f"KeySet(url={self._url!r}, kids={sorted(self._keys)!r})"

    def current(self, kid: str) -> RSAPublicKey | None:
        """The key now served for ``kid`` (no fetch, no policy): for re-checking memos."""
        return self._keys.get(kid)

    def lookup(self, kid: str, *, may_fetch: bool = True) -> Lookup:
        now = self.clock.monotonic()
        loaded = self._loaded_at
        if loaded is None or now - loaded >= STALE_LIMIT:  # no keys to serve
            # A load in flight is joined; after an unreachable Clerk, requests fail fast for a
            # few seconds instead of each waiting out the budget.
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
        miss = self._miss_fetch_at
        return miss is None or self.clock.monotonic() - miss >= MISS_WINDOW

    @property
    def loads(self) -> tuple[float | None, float | None]:
        """Changes with every load or failure (a caller that decided to fetch before one
        finished need not fetch again)."""
        return self._loaded_at, self._failed_at

    def fetch_flow(
        self, reason: str, seen: tuple[float | None, float | None] | None = None
    ) -> Generator[Op, Any, None]:
        """Fetch the JWKS and record the outcome — unless a fetch finished since ``seen``."""
        if seen is not None and seen != self.loads:
            return
        logger.debug("clerk-tinybird: fetching the JWKS (%s)", reason)
        if reason in ("kid", "signature"):
            self._miss_fetch_at = self.clock.monotonic()
        self._fetching = True
        try:
            response: HttpResponse = yield from request_with_retries(
                self._request, self._retry, self.clock
            )
        finally:
            self._fetching = False
        if response.status == 0:
            self._unreachable_at = self.clock.monotonic()
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
        return HttpRequest("GET", self._url, self._headers, timeout=timeout, endpoint="jwks")

    def loaded(self, keys: dict[str, RSAPublicKey], *, reset_miss_window: bool = True) -> None:
        old = self._keys
        # Keep the objects of unchanged keys, so identity says "the same key" to memos.
        merged = {
            kid: old[kid] if kid in old and _same_key(old[kid], key) else key
            for kid, key in keys.items()
        }
        if any(merged.get(kid) is not key for kid, key in old.items()):
            self.generation += 1  # a key was dropped or replaced: memos must re-check
        self._keys = merged
        self._loaded_at = self.clock.monotonic()
        self._failed_at = None
        self._unreachable_at = None
        if reset_miss_window:
            self._miss_fetch_at = None

    def failed(self, reason: str) -> None:
        self._failed_at = self.clock.monotonic()
        self._failure = reason
        if self._loaded_at is not None and self._failed_at - self._loaded_at >= STALE_LIMIT:
            self._keys = {}
            self._loaded_at = None
            self.generation += 1
