"""The framework-free engine: one request in, one :class:`RequestAuth` out.

An adapter (ASGI, WSGI, Flask, Django) asks :meth:`Engine.warm` first: a synchronous look-up
that answers a repeat request completely (one dictionary read and a few comparisons), or says
``None``. Then it runs the one cold flow, :meth:`Engine.cold`, on its driver. Adapters never
decide policy; they render the result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from .core import handshake as hs
from .core.claims import Reason, times_failure
from .core.locate import Located, locate
from .core.lru import Entry
from .core.memo import SessionMemo, Verified
from .core.ops import DEFAULT_RETRY, Clock, Op, SystemClock, request_with_retries
from .core.request import RequestAuth, RequestView
from .core.responses import response_tail, unauthenticated_answer
from .core.tokens import NO_TOKEN, TokenBroker, TokenCache, TokenError, TokenOutcome, TokenSource
from .core.verify import cookie_rule, signed_out
from .metrics import Metrics
from .models import AuthResult
from .settings import SettingOverrides, Settings
from .wiring import configure

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Engine"]

logger = logging.getLogger("clerk_tinybird_middleware")

_CRASHED = "The session token could not be verified."


class _Always(Entry):
    """A stand-in token-cache entry that never goes stale (no token source)."""


_ALWAYS = _Always()


class Engine:
    """Everything every adapter shares, validated and precomputed once."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        token_source: TokenSource | None = None,
        token_cache: TokenCache | None = None,
        clock: Clock | None = None,
        **setting_overrides: Unpack[SettingOverrides],
    ) -> None:
        settings = (settings or Settings.from_env()).replace(**setting_overrides)
        self.clock = clock or SystemClock()
        parts = configure(
            settings, token_source=token_source, token_cache=token_cache, clock=self.clock
        )
        self.settings = settings
        self.verifier = parts.verifier
        self.key_set = parts.verifier.key_set
        self._generation: Any = self.key_set if self.key_set is not None else _NoKeys()
        self.source = parts.source
        self.cache = parts.cache
        self.metrics = Metrics()
        self._totals = self.metrics.totals
        self.broker = (
            TokenBroker(
                parts.source,
                parts.cache,
                margin=settings.refresh_margin_seconds,
                clock=self.clock,
                counters=self.metrics,
            )
            if parts.source is not None
            else None
        )
        self.handshake = parts.handshake
        self._cookie_names = parts.cookie_names
        self.memo = SessionMemo(settings.memo_max_mb * 1024 * 1024)
        self._seen = self.memo.peek  # the warm path's one read (no Python frame of its own)
        self._now = self.clock.time
        self._missing = signed_out(Reason.TOKEN_MISSING)
        # A development instance sends a page load with no cookies at all through the
        # handshake (dev-browser-missing), so "no credentials" is only decided cold there.
        self._no_credentials_warm = self.handshake is None or not self.handshake.development
        self.require_auth = settings.require_auth
        self.token_header = settings.token_header
        self._anonymous = parts.anonymous
        self._anonymous_until = parts.anonymous_until
        self._excluded = tuple((p, f"{p.rstrip('/')}/") for p in settings.exclude_paths)
        self.skips_paths = bool(self._excluded)
        self._signed_out: dict[str, RequestAuth] = {}
        self._not_configured = TokenOutcome(error=TokenError.NOT_CONFIGURED)
        for warning in parts.warnings:
            logger.warning("clerk-tinybird: %s", warning)

    def __repr__(self) -> str:
        return f"Engine(source={self.source!r}, cache={self.cache!r})"

    # -- routing -------------------------------------------------------------------------------

    def skips(self, method: str, path: str, preflight: bool) -> bool:
        """What passes through untouched, with no state set: excluded paths, CORS preflights,
        and other ``OPTIONS`` requests unless ``require_auth`` (then they are authenticated
        like ``GET``, so a handler answering every method leaks nothing)."""
        if method == "OPTIONS" and (preflight or not self.require_auth):
            return True
        excluded = self._excluded
        return bool(excluded) and any(p == path or path.startswith(b) for p, b in excluded)

    # -- the warm path -------------------------------------------------------------------------

    def warm(self, query: Any, authorization: Any, cookie: Any) -> RequestAuth | None:
        """The answer when nothing needs doing — the same credentials as a request already
        answered, or none at all — else None (run :meth:`cold`). No I/O, no parsing.

        ``query``, ``authorization`` and ``cookie`` are as the adapter holds them (bytes or
        str, ``None`` when absent): they are only compared, never decoded here.
        """
        if query and self.handshake is not None and _mentions_clerk(query):
            return None  # a handshake or dev-browser parameter: the cold path reads it
        if authorization is None and cookie is None and self._no_credentials_warm:
            result = self._signed_out_result(self._missing)
            self.metrics.request(result)
            return result
        seen = self._seen((authorization, cookie))
        if seen is None:
            return None
        result = seen.result
        now = self._now()
        if (
            result is not None
            and seen.since <= now < seen.until
            and seen.generation == self._generation.generation
            and seen.held.live
        ):
            # Recency for both LRUs (the memo's and the token cache's), read with no lock.
            seen.used = seen.held.used = seen.verified.used = True
            self._totals.warm += 1
            return result  # type: ignore[no-any-return]
        return None

    # -- the cold path -------------------------------------------------------------------------

    def cold(self, request: RequestView) -> Generator[Op, Any, RequestAuth]:
        """Everything else, as one flow: handshake resolution, verification (maybe fetching
        keys), the handshake redirect, and the Tinybird token (maybe fetching it)."""
        try:
            result = yield from self._cold(request)
        except Exception:
            # A bug must not become a 500: log it, treat the request as signed out.
            logger.exception("clerk-tinybird: unexpected error while authenticating a request")
            result = self._signed_out_result(AuthResult.signed_out(Reason.TOKEN_INVALID, _CRASHED))
        self.metrics.request(result)
        return result

    def _cold(self, request: RequestView) -> Generator[Op, Any, RequestAuth]:
        located = locate(request.authorization, request.cookie, self._cookie_names)
        handshake = self.handshake if located.from_cookie else None
        if handshake is not None:
            resolved = yield from self._resolve(handshake, request, located)
            if resolved is not None:
                return resolved
        reason = None
        page_load = handshake is not None and self._page_load(request)
        if page_load and handshake is not None and handshake.development:
            reason = self._dev_browser(request, located)
        if reason is None:
            reason = cookie_rule(located)
        if reason is None and page_load and located.token and located.client_uat is None:
            # A cookie with no __client_uat: fine for an API client, stale for a page.
            reason = Reason.TOKEN_BUT_NO_UAT
        verified: Verified | None = None
        if reason is None:
            if not located.token:
                reason = Reason.TOKEN_MISSING
            else:
                found = yield from self._verified(located.token)
                if isinstance(found, str):
                    reason = found
                else:
                    verified = found
                    uat, iat = located.client_uat, found.iat
                    if uat and iat is not None and iat < uat:
                        reason = Reason.IAT_BEFORE_UAT
        if reason is not None:
            if handshake is not None:
                answer = self._redirect(handshake, request, located, reason)
                if answer is not None:
                    return answer
            return self._signed_out_result(signed_out(reason))
        assert verified is not None
        return (yield from self._signed_in(request, verified))

    def _verified(self, token: str) -> Generator[Op, Any, Verified | str]:
        """The memoized verification of ``token`` (time checks re-run), or a fresh one."""
        held = self.memo.get(token)
        now = self.clock.time()
        if isinstance(held, Verified) and self.verifier.still_valid(held):
            reason = times_failure(held.times, now, self.verifier.skew)
            if reason is not None:
                return reason
            held.generation = self._generation.generation
            return held
        found = yield from self.verifier.verify(token)
        if isinstance(found, Verified):
            return self.memo.remember_token(found)
        return found

    def _signed_in(
        self, request: RequestView, verified: Verified, set_cookies: tuple[str, ...] = ()
    ) -> Generator[Op, Any, RequestAuth]:
        session = verified.auth.session
        assert session is not None
        broker = self.broker
        until = verified.not_after
        held: Entry | None = _ALWAYS
        if broker is None:
            outcome = self._not_configured
        else:
            key = broker.key_of(session)
            warm = broker.warm(key, session, self.clock.time())
            if warm is not None:
                self.metrics.cache_result("hit")
            else:
                outcome = yield from broker.cold(key, session)
                warm = broker.warm(key, session, self.clock.time())  # what the fill left
            if warm is not None:
                outcome = warm.outcome
                until = min(until, warm.refresh_at, warm.expires_at)
            held = warm
        result = self._result(verified.auth, outcome, set_cookies)
        if held is not None and not set_cookies:
            # Remember the whole answer for these exact credentials, until the session's
            # window closes or the token is due for refresh.
            seen = self.memo.remember_request(
                request.credentials, request.credentials_size, verified
            )
            seen.result, seen.held, seen.until = result, held, until
        return result

    def _result(
        self, auth: AuthResult, outcome: TokenOutcome, set_cookies: tuple[str, ...] = ()
    ) -> RequestAuth:
        tail = response_tail(self.token_header, outcome.token, set_cookies)
        return RequestAuth(auth, outcome.token, outcome.error, outcome.retry_after, None, tail)

    def _signed_out_result(
        self, auth: AuthResult, set_cookies: tuple[str, ...] = ()
    ) -> RequestAuth:
        """Signed out: 401 under ``require_auth``, else the anonymous token if one is set
        (never past its exp). Memoized per reason."""
        anonymous = self._anonymous is not None and self.clock.time() < self._anonymous_until
        cacheable = not set_cookies and auth.status == "signed-out"
        key = f"{auth.reason}|{anonymous}"
        known = self._signed_out.get(key) if cacheable else None
        if known is not None and known.auth.message == auth.message:
            return known
        if self.require_auth:
            result = RequestAuth(auth, answer=unauthenticated_answer(auth, set_cookies))
        else:
            outcome = TokenOutcome(self._anonymous) if anonymous else NO_TOKEN
            result = self._result(auth, outcome, set_cookies)
        if cacheable:
            self._signed_out[key] = result
        return result

    # -- the handshake -------------------------------------------------------------------------

    @staticmethod
    def _page_load(request: RequestView) -> bool:
        return hs.eligible(
            request.method, request.header("sec-fetch-dest"), request.header("accept")
        )

    def _dev_browser(self, request: RequestView, located: Located) -> str | None:
        """Development instances, page loads only (other requests keep the cookie rules'
        answers): the dev-browser token in the URL must be synced, and a page without one
        needs it."""
        if hs.query_value(request.query, hs.DEV_BROWSER):
            return Reason.DEV_BROWSER_SYNC
        if not self._dev_browser_token(request, located):
            return Reason.DEV_BROWSER_MISSING
        return None

    def _dev_browser_token(self, request: RequestView, located: Located) -> str | None:
        names = [hs.DEV_BROWSER]
        if located.suffixed and self._cookie_names is not None:
            names.insert(0, f"{hs.DEV_BROWSER}_{self._cookie_names[0].rpartition('_')[2]}")
        from_query = hs.query_value(request.query, hs.DEV_BROWSER)
        return from_query or next(
            (located.cookies[n] for n in names if located.cookies.get(n)), None
        )

    def _redirect(
        self, handshake: hs.Handshake, request: RequestView, located: Located, reason: str
    ) -> RequestAuth | None:
        hs_reason = hs.TRIGGERS.get(reason)
        if hs_reason is None or not self._page_load(request):
            return None
        count = hs.redirect_count(located.cookies)
        answer = handshake.redirect(
            request.url(),
            hs_reason,
            session_token=located.token,
            dev_browser=self._dev_browser_token(request, located),
            suffixed=located.suffixed,
            count=count,
        )
        if answer is None:
            logger.warning(
                "clerk-tinybird: refreshing the session token resulted in a redirect loop; "
                "signing the request out. Do CLERK_PUBLISHABLE_KEY and CLERK_SECRET_KEY belong "
                "to the same Clerk instance?",
                extra={"clerk_tinybird_reason": reason},
            )
            return None
        auth = AuthResult("handshake", hs_reason, Reason.MESSAGES.get(reason), None)
        return RequestAuth(auth, answer=answer)

    def _resolve(
        self, handshake: hs.Handshake, request: RequestView, located: Located
    ) -> Generator[Op, Any, RequestAuth | None]:
        """A request coming back from the Frontend API: trade its nonce (or legacy handshake
        token) for cookie directives. None: there is nothing to resolve, or it failed in a
        way that leaves the normal cookie rules to decide."""
        nonce = hs.query_value(request.query, hs.NONCE) or located.cookies.get(hs.NONCE)
        legacy = hs.query_value(request.query, hs.LEGACY_TOKEN) or located.cookies.get(
            hs.LEGACY_TOKEN
        )
        if not nonce and not legacy:
            return None
        if nonce:
            directives = yield from self._payload(handshake, nonce)
        else:
            assert legacy
            directives = yield from self._legacy_directives(legacy)
        token = hs.directive_session(directives)
        cookies = tuple(directives)
        url = request.url()
        if not token:
            auth = signed_out(Reason.TOKEN_MISSING)
            if handshake.development:
                return RequestAuth(auth, answer=handshake.resolved(url, cookies))
            return self._signed_out_result(auth, cookies)
        found = yield from self._verified(token)
        if isinstance(found, str):
            logger.warning(
                "clerk-tinybird: the handshake returned a session token that does not verify "
                "(%s); continuing with the request's cookies",
                found,
                extra={"clerk_tinybird_reason": found},
            )
            return None
        if handshake.development:
            return RequestAuth(found.auth, answer=handshake.resolved(url, cookies))
        return (yield from self._signed_in(request, found, cookies))

    def _payload(self, handshake: hs.Handshake, nonce: str) -> Generator[Op, Any, list[str]]:
        """``GET /v1/clients/handshake_payload?nonce=`` → the directives; [] on any failure."""
        response = yield from request_with_retries(
            lambda timeout: handshake.payload_request(nonce, timeout), DEFAULT_RETRY, self.clock
        )
        if response.status != 200:
            logger.warning(
                "clerk-tinybird: the handshake payload could not be fetched (HTTP %s)",
                response.status or response.error,
                extra={"clerk_tinybird_reason": Reason.TOKEN_MISSING},
            )
            return []
        try:
            directives = json.loads(response.body)["directives"]
        except (ValueError, KeyError, TypeError, RecursionError):
            directives = None
        if not isinstance(directives, list) or not all(isinstance(d, str) for d in directives):
            logger.warning("clerk-tinybird: the handshake payload is malformed")
            return []
        return directives

    def _legacy_directives(self, token: str) -> Generator[Op, Any, list[str]]:
        payload = yield from self.verifier.verify_handshake(token)
        if isinstance(payload, str):
            logger.warning(
                "clerk-tinybird: the __clerk_handshake token does not verify (%s)",
                payload,
                extra={"clerk_tinybird_reason": payload},
            )
            return []
        directives = payload.get("handshake")
        if not isinstance(directives, list):
            return []
        return [d for d in directives if isinstance(d, str)]


class _NoKeys:
    generation = 0


def _mentions_clerk(query: Any) -> bool:
    return (b"__clerk" in query) if isinstance(query, bytes) else ("__clerk" in query)
