"""What the warm path remembers: verified tokens, and requests by their exact credentials.

Two kinds of entry share one byte budget and one least-recently-used order (:class:`LRU`):

* :class:`Verified` — a token string that passed every check, with its time window and the key
  that verified it (a JWKS reload that drops the key ends it);
* :class:`Seen` — the exact ``(Authorization, Cookie)`` pair of a request whose cookie rules
  passed and whose token is a :class:`Verified`, with the whole answer it got (session and
  Tinybird token), so a repeat costs one dictionary read.

Nobody can flush other users out: a user keeps at most ``tokens_per_user`` tokens (their oldest
goes first) and a token at most ``requests_per_token`` credential pairs (further pairs are
simply not remembered: 4,095 cookie variants of one token cost 4 entries, not 4,095).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from .lru import LRU, Entry

if TYPE_CHECKING:
    from ..models import AuthResult

__all__ = ["DEFAULT_MEMO_BYTES", "SessionMemo", "Verified"]

DEFAULT_MEMO_BYTES = 128 * 1024 * 1024
#: What one entry costs beyond the bytes of its strings (measured with tracemalloc, see
#: ``benchmarks/run.py`` row j): for a token, the entry, its map slot and the session and
#: result objects (its claims are not kept, only the token); for a request, the entry, its
#: slot and its answer (state, headers). A session costs ~2.3 KB + its cookie + its token.
VERIFIED_OVERHEAD = 1600
SEEN_OVERHEAD = 700


class Verified(Entry):
    """A token that passed every check; its claims' times are kept, not its claims."""

    __slots__ = (
        "auth",
        "generation",
        "key",
        "kid",
        "not_after",
        "not_before",
        "times",
        "token",
        "variants",
    )

    def __init__(
        self,
        token: str,
        auth: AuthResult,
        times: tuple[float, float | None, float | None],
        skew: float,
        kid: str | None,
        key: RSAPublicKey,
        generation: int,
    ) -> None:
        super().__init__(VERIFIED_OVERHEAD + len(token))
        self.token = token
        self.auth = auth
        self.times = times  # (exp, nbf, iat) in whole seconds
        exp, nbf, iat = times
        starts = [t for t in (nbf, iat) if t is not None]
        self.not_before = max(starts) - skew if starts else float("-inf")
        self.not_after = exp + skew  # the time checks pass in [not_before, not_after)
        self.kid = kid
        self.key = key
        self.generation = generation
        self.variants: list[Hashable] = []

    @property
    def iat(self) -> float | None:
        return self.times[2]

    @property
    def user_id(self) -> str:
        session = self.auth.session
        assert session is not None
        return session.user_id

    def __repr__(self) -> str:
        return f"Verified(user={self.user_id!r}, until={self.not_after})"


class Seen(Entry):
    """A request's credentials → everything its answer needs; ``result`` is the answer while
    ``since <= now < until`` and ``held`` (the token cache entry) is live."""

    __slots__ = ("cache_key", "generation", "held", "result", "since", "until", "verified")

    def __init__(self, credentials_size: int, verified: Verified) -> None:
        super().__init__(SEEN_OVERHEAD + credentials_size)
        self.verified = verified
        self.generation = verified.generation
        self.cache_key: str | None = None
        self.result: Any = None
        self.held: Entry | None = None
        self.since = verified.not_before
        self.until = verified.not_after

    def __repr__(self) -> str:
        return f"Seen({self.verified!r})"


class SessionMemo:
    def __init__(
        self,
        max_bytes: int = DEFAULT_MEMO_BYTES,
        *,
        tokens_per_user: int = 8,
        requests_per_token: int = 4,
    ) -> None:
        self.max_bytes = max_bytes
        self.tokens_per_user = tokens_per_user
        self.requests_per_token = requests_per_token
        self._lru: LRU[Hashable, Entry] = LRU(max_bytes, on_evict=self._evicted)
        #: A read that does not mark the entry used (the caller does, when it uses it).
        self.peek: Callable[[Hashable], Any] = self._lru.peek
        self._by_user: dict[str, list[str]] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"SessionMemo(entries={len(self._lru)}, bytes={self._lru.weight})"

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def bytes(self) -> int:
        return self._lru.weight

    def get(self, key: Hashable) -> Any:
        """A :class:`Seen` (by credentials) or :class:`Verified` (by token string), or None."""
        return self._lru.get(key)

    def remember_token(self, verified: Verified) -> Verified:
        """Remember ``verified``; returns the entry to use (an equal one already held wins)."""
        with self._lock:
            held = self._lru.get(verified.token)
            if isinstance(held, Verified) and held.live:
                return held
            tokens = self._by_user.setdefault(verified.user_id, [])
            tokens.append(verified.token)
            self._lru.put(verified.token, verified)
            while len(tokens) > self.tokens_per_user:
                # The user's oldest token; evicted() unlists it (or it was already gone).
                if self._lru.pop(tokens[0]) is None:
                    tokens.pop(0)
            return verified

    def remember_request(self, credentials: Hashable, size: int, verified: Verified) -> Seen:
        """The :class:`Seen` of ``credentials`` (remembered unless the token has enough)."""
        with self._lock:
            known = self._lru.get(credentials)
            if isinstance(known, Seen) and known.verified is verified:
                known.generation = verified.generation
                return known
            seen = Seen(size, verified)
            if not verified.live or len(verified.variants) >= self.requests_per_token:
                return seen  # used for this request only
            if known is not None:
                self._lru.pop(credentials)
            verified.variants.append(credentials)
            self._lru.put(credentials, seen)
            return seen

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._lru.pop(key)

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()

    def _evicted(self, key: Hashable, entry: Entry) -> None:
        # Called under self._lock (every write goes through it).
        if isinstance(entry, Verified):
            tokens = self._by_user.get(entry.user_id)
            if tokens is not None and entry.token in tokens:
                tokens.remove(entry.token)
                if not tokens:
                    del self._by_user[entry.user_id]
            for variant in list(entry.variants):
                self._lru.pop(variant)
            entry.variants = []
        elif isinstance(entry, Seen):
            variants = entry.verified.variants
            if key in variants:
                variants.remove(key)
