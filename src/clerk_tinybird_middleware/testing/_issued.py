"""Every secret the fakes hand out, so a test suite can prove none of them reaches a log.

The fakes register their secret keys, admin tokens and every JWT they mint here; a log
handler (see this repository's ``tests/conftest.py``) looks for them in every record.
"""

from __future__ import annotations

import re
import threading

__all__ = ["find_issued", "issue"]

_lock = threading.Lock()
_jwts: set[str] = set()
_keys: set[str] = set()
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


def issue(secret: str, *, jwt: bool = False) -> str:
    """Remember ``secret`` (returned unchanged, for ``return issue(token, jwt=True)``)."""
    with _lock:
        (_jwts if jwt else _keys).add(secret)
    return secret


def find_issued(text: str) -> list[str]:
    """The secrets of the fakes found in ``text`` (JWTs by shape, keys by substring)."""
    found = [m for m in _JWT_SHAPE.findall(text) if m in _jwts]
    with _lock:
        keys = list(_keys)
    found.extend(k for k in keys if k in text)
    return found
