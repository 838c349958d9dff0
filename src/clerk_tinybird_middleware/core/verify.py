"""Clerk session verification as one flow, in the order of the contract (SPEC §4)."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Hashable, Mapping
from typing import Any, Generic, TypeVar

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from ..models import AuthResult
from .claims import (
    SESSION_CATEGORY,
    Reason,
    session_from_claims,
    shape_failure,
    time_failure,
    time_window,
)
from .io import Op, RefreshKeys
from .jwt import RSA_HASHES, MalformedJWT, ParsedJWT, parse, verify_rsa
from .keys import KeySet
from .locate import Located, locate

__all__ = ["SessionVerifier"]

_MEMO_SIZE = 4096


def _out(reason: str) -> AuthResult:
    return AuthResult.signed_out(reason, Reason.MESSAGES[reason])


_MISSING = _out(Reason.TOKEN_MISSING)


class SessionVerifier:
    """Verifies session tokens against a PEM key (no network, ever) or a JWKS :class:`KeySet`.

    Requests that pass every check are memoized by their exact ``Authorization`` and ``Cookie``
    headers (so by the exact token string); on a memo hit only the time checks run again.
    """

    def __init__(
        self,
        *,
        pem_key: RSAPublicKey | None,
        key_set: KeySet | None,
        issuer: str | None,
        authorized_parties: tuple[str, ...],
        audience: tuple[str, ...],
        clock_skew: float,
        cookie_names: tuple[str, str] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if pem_key is None and key_set is None:
            raise ValueError("a PEM key or a key set is required")
        self._pem = pem_key
        self._keys = key_set
        self._issuer = issuer
        self._parties = frozenset(authorized_parties)
        self._audience = frozenset(audience)
        self._skew = clock_skew
        self._cookie_names = cookie_names
        self.clock = clock
        # Signed-in results by their exact (Authorization, Cookie) headers, and by token.
        self._by_headers: _Memo[tuple[str | None, str | None]] = _Memo(clock_skew)
        self._by_token: _Memo[str] = _Memo(clock_skew)

    def cached(self, authorization: str | None, cookie: str | None) -> AuthResult | None:
        """The warm path: the same two headers as a request already verified.

        Everything about a token is fixed by its exact string except time, so only the time
        checks run again; ``None`` means "run :meth:`authenticate`".
        """
        return self._by_headers.get((authorization, cookie), self.clock())

    def authenticate(
        self, authorization: str | None, cookie: str | None
    ) -> Generator[Op, Any, AuthResult]:
        """The whole of SPEC §4 for one request's two headers."""
        cached = self.cached(authorization, cookie)
        if cached is not None:
            return cached
        located = locate(authorization, cookie, self._cookie_names)
        token = located.token
        if located.client_uat is not None:
            early = _client_uat_failure(located)
            if early is not None:
                return early
        if not token:
            return _MISSING
        now = self.clock()
        # A token seen before with other cookies around it (they change; it does not).
        result = self._by_token.get(token, now)
        if result is None:
            result = yield from self._verify(token, now)
            if result.session is not None:
                self._by_token.put(token, result)
        session = result.session
        if session is None:
            return result
        if located.client_uat and session.claims.get("iat", 0) < located.client_uat:
            return _out(Reason.IAT_BEFORE_UAT)
        self._by_headers.put((authorization, cookie), result)
        return result

    def _verify(self, token: str, now: float) -> Generator[Op, Any, AuthResult]:
        try:
            jwt = parse(token)
        except MalformedJWT:
            return _out(Reason.TOKEN_INVALID)
        header, claims = jwt.header, jwt.payload
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in RSA_HASHES:
            return _out(Reason.INVALID_ALGORITHM)
        if "typ" in header and header["typ"] != "JWT":
            return _out(Reason.TOKEN_INVALID)
        if "cat" in header and header["cat"] != SESSION_CATEGORY:
            return _out(Reason.TYPE_MISMATCH)
        sub = claims.get("sub")
        if isinstance(sub, str) and sub.startswith("mch_"):
            return _out(Reason.TYPE_MISMATCH)

        failure = yield from self._check_signature(jwt, alg, header.get("kid"))
        if failure is not None:
            return _out(failure)

        reason = shape_failure(claims) or time_failure(claims, now, self._skew)
        if reason is None:
            reason = self._static_claim_failure(claims)
        if reason is not None:
            return _out(reason)
        return AuthResult.signed_in(session_from_claims(claims))

    def _check_signature(
        self, jwt: ParsedJWT, alg: str, kid: Any
    ) -> Generator[Op, Any, str | None]:
        if self._pem is not None:
            return None if verify_rsa(jwt, alg, self._pem) else Reason.INVALID_SIGNATURE
        keys = self._keys
        assert keys is not None
        if not isinstance(kid, str) or not kid:
            return Reason.KID_MISMATCH
        fetched = False
        found = keys.lookup(kid)
        if found.fetch is not None:
            yield RefreshKeys(found.fetch)
            fetched = True
            found = keys.lookup(kid, may_fetch=False)
        if found.key is None:
            return found.failure
        if verify_rsa(jwt, alg, found.key):
            return None
        # Rotation: a cached key that no longer verifies is replaced by one refetch (bounded by
        # the same window as unknown kids, so forged signatures cannot hammer Clerk).
        if fetched or not keys.may_refetch_for_kid():
            return Reason.INVALID_SIGNATURE
        yield RefreshKeys("signature")
        found = keys.lookup(kid, may_fetch=False)
        if found.key is None:
            return found.failure
        return None if verify_rsa(jwt, alg, found.key) else Reason.INVALID_SIGNATURE

    def _static_claim_failure(self, claims: Mapping[str, Any]) -> str | None:
        """azp, aud, iss, sts, sid: fixed for a token, so checked once before memoizing."""
        azp = claims.get("azp")
        if self._parties and (not isinstance(azp, str) or azp not in self._parties):
            return Reason.INVALID_AZP
        if self._audience:
            aud = claims.get("aud")
            values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not self._audience.intersection(v for v in values if isinstance(v, str)):
                return Reason.INVALID_AUDIENCE
        if self._issuer is not None and claims.get("iss") != self._issuer:
            return Reason.INVALID_ISSUER
        if claims.get("sts") == "pending":
            return Reason.SESSION_PENDING
        sid = claims.get("sid")
        if not isinstance(sid, str) or not sid:
            return Reason.TYPE_MISMATCH
        return None


K = TypeVar("K", bound=Hashable)


class _Memo(Generic[K]):
    """Signed-in results until their tokens' time checks fail. A plain dict: single
    operations are atomic, so WSGI threads share it unlocked; bounded by clearing."""

    def __init__(self, skew: float) -> None:
        self._skew = skew
        self._entries: dict[K, tuple[AuthResult, float, float]] = {}

    def get(self, key: K, now: float) -> AuthResult | None:
        """The result, a signed-out one if its time checks fail now, or None (not seen)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        result, not_before, not_after = entry
        if not_before <= now < not_after:
            return result
        assert result.session is not None
        reason = time_failure(result.session.claims, now, self._skew)
        if reason is None:  # a hair at a bound: the full check is the rule
            return result
        self._entries.pop(key, None)  # verify from scratch (and fail) from now on
        return _out(reason)

    def put(self, key: K, result: AuthResult) -> None:
        assert result.session is not None
        if len(self._entries) >= _MEMO_SIZE:
            self._entries.clear()  # crude but lock-free; entries are cheap to rebuild
        self._entries[key] = (result, *time_window(result.session.claims, self._skew))


def _client_uat_failure(located: Located) -> AuthResult | None:
    """Clerk's cookie handshake rules, applied only when a ``__client_uat`` cookie is sent."""
    uat = located.client_uat
    if not located.from_cookie or uat is None:
        return None
    if uat <= 0:
        return _out(Reason.TOKEN_BUT_NO_UAT if located.token else Reason.TOKEN_AND_UAT_MISSING)
    if not located.token:
        return _out(Reason.UAT_BUT_NO_TOKEN)
    return None
