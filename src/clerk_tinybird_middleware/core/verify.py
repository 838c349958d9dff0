"""Clerk session-token verification as one flow, in the order of the README's check table.

:meth:`SessionVerifier.verify` takes a token string and returns a :class:`Verified` (everything
about a token is fixed by its string except time, so the result may be remembered until its
time window closes) or a reason code. Cookie rules (``__client_uat``) live in
:func:`cookie_rule`, because they depend on the request, not on the token.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from ..models import AuthResult, JWTClaims
from .claims import (
    SESSION_CATEGORIES,
    Reason,
    session_from_claims,
    time_failure,
    times,
)
from .jwt import RSA_ALGORITHMS, MalformedJWT, ParsedJWT, parse, verify_rsa
from .keys import KeySet
from .locate import Located
from .memo import Verified
from .ops import Clock, Join, Op

__all__ = ["SessionVerifier", "cookie_rule", "signed_out"]

MACHINE_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # OAuth access tokens


def signed_out(reason: str) -> AuthResult:
    return AuthResult.signed_out(reason, Reason.MESSAGES[reason])


class SessionVerifier:
    """Verifies session tokens against a PEM key (no network, ever) or a JWKS :class:`KeySet`."""

    def __init__(
        self,
        *,
        pem_key: RSAPublicKey | None,
        key_set: KeySet | None,
        issuers: frozenset[str],
        authorized_parties: tuple[str, ...],
        audience: tuple[str, ...],
        clock_skew: float,
        clock: Clock,
    ) -> None:
        if pem_key is None and key_set is None:
            raise ValueError("a PEM key or a key set is required")
        self._pem = pem_key
        self.key_set = key_set
        self._issuers = issuers
        self._parties = frozenset(authorized_parties)
        self._audience = frozenset(audience)
        self.skew = clock_skew
        self.clock = clock

    @property
    def generation(self) -> int:
        """Changes when a key is dropped or replaced (see :attr:`KeySet.generation`)."""
        return 0 if self.key_set is None else self.key_set.generation

    def still_valid(self, verified: Verified) -> bool:
        """After a key reload: is the key that verified this token still served?"""
        if self.key_set is None or verified.kid is None:
            return True
        return self.key_set.current(verified.kid) is verified.key

    def verify(self, token: str) -> Generator[Op, Any, Verified | str]:
        """A :class:`Verified` whose time checks passed now, or a reason code.

        The order is @clerk/backend's: token kind, ``typ``, ``alg``, key, signature (before
        any claim), then ``sub``, ``aud``, ``azp``, ``iss``, ``exp``, ``nbf``, ``iat``; then
        what Clerk's SDK leaves to the caller: ``sts`` and ``sid``.
        """
        parsed = yield from self._signed(token)
        if isinstance(parsed, str):
            return parsed
        jwt, kid, key = parsed
        claims = jwt.payload
        reason = self._claim_failure(claims)
        if reason is not None:
            return reason
        auth = AuthResult.signed_in(session_from_claims(claims, JWTClaims(token)))
        return Verified(token, auth, times(claims), self.skew, kid, key, self.generation)

    def verify_handshake(self, token: str) -> Generator[Op, Any, dict[str, Any] | str]:
        """A legacy ``__clerk_handshake`` JWT: header rules and signature, no claim checks
        (as @clerk/backend's ``verifyHandshakeToken``); its payload, or a reason code."""
        parsed = yield from self._signed(token)
        return parsed if isinstance(parsed, str) else parsed[0].payload

    def _signed(
        self, token: str
    ) -> Generator[Op, Any, tuple[ParsedJWT, str | None, RSAPublicKey] | str]:
        try:
            jwt = parse(token)
        except MalformedJWT:
            return Reason.TOKEN_INVALID
        header, claims = jwt.header, jwt.payload
        cat, typ, sub = header.get("cat"), header.get("typ"), claims.get("sub")
        if "cat" in header and not (isinstance(cat, str) and cat in SESSION_CATEGORIES):
            return Reason.TYPE_MISMATCH
        if (isinstance(typ, str) and typ in MACHINE_TYPES) or (
            isinstance(sub, str) and sub.startswith("mch_")
        ):
            return Reason.TYPE_MISMATCH
        if "typ" in header and header["typ"] != "JWT":
            return Reason.TOKEN_INVALID
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in RSA_ALGORITHMS:
            return Reason.INVALID_ALGORITHM
        found = yield from self._check_signature(jwt, alg, header.get("kid"))
        if isinstance(found, str):
            return found
        return jwt, found[0], found[1]

    def _check_signature(
        self, jwt: ParsedJWT, alg: str, kid: Any
    ) -> Generator[Op, Any, tuple[str | None, RSAPublicKey] | str]:
        if self._pem is not None:
            return (
                (None, self._pem) if verify_rsa(jwt, alg, self._pem) else Reason.INVALID_SIGNATURE
            )
        keys = self.key_set
        assert keys is not None
        if not isinstance(kid, str) or not kid:
            return Reason.KID_MISMATCH
        fetched = False
        found = keys.lookup(kid)
        if found.fetch is not None:
            yield self._refresh(found.fetch)
            fetched = True
            found = keys.lookup(kid, may_fetch=False)
        if found.key is None:
            return found.failure or Reason.KID_MISMATCH
        if verify_rsa(jwt, alg, found.key):
            return kid, found.key
        # Rotation: a cached key that no longer verifies is replaced by one refetch (bounded by
        # the same window as unknown kids, so forged signatures cannot hammer Clerk).
        if fetched or not keys.may_refetch_for_kid():
            return Reason.INVALID_SIGNATURE
        yield self._refresh("signature")
        found = keys.lookup(kid, may_fetch=False)
        if found.key is None:
            return found.failure or Reason.KID_MISMATCH
        return (kid, found.key) if verify_rsa(jwt, alg, found.key) else Reason.INVALID_SIGNATURE

    def _refresh(self, reason: str) -> Join:
        keys = self.key_set
        assert keys is not None
        seen = keys.loads
        return Join(keys.fetch_key, lambda: keys.fetch_flow(reason, seen))

    def _claim_failure(self, claims: Mapping[str, Any]) -> str | None:
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            return Reason.TOKEN_INVALID
        if self._audience:
            aud = claims.get("aud")
            values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not self._audience.intersection(v for v in values if isinstance(v, str)):
                return Reason.INVALID_AUDIENCE
        azp = claims.get("azp")
        if self._parties and (not isinstance(azp, str) or azp not in self._parties):
            return Reason.INVALID_AZP
        iss = claims.get("iss")
        if self._issuers and not (isinstance(iss, str) and iss in self._issuers):
            return Reason.INVALID_ISSUER
        reason = time_failure(claims, self.clock.time(), self.skew)
        if reason is not None:
            return reason
        if claims.get("sts") == "pending":
            return Reason.SESSION_PENDING
        sid = claims.get("sid")
        if not isinstance(sid, str) or not sid:
            return Reason.TYPE_MISMATCH
        return None


def cookie_rule(located: Located) -> str | None:
    """Clerk's cookie rules, applied only when a ``__client_uat`` cookie is sent (clients that
    send only ``__session`` are not penalised); before the token is even parsed."""
    uat = located.client_uat
    if not located.from_cookie or uat is None:
        return None
    if uat == 0:  # JavaScript's "falsy": a negative value still counts as a client
        return Reason.TOKEN_BUT_NO_UAT if located.token else Reason.TOKEN_AND_UAT_MISSING
    if not located.token:
        return Reason.UAT_BUT_NO_TOKEN
    return None
