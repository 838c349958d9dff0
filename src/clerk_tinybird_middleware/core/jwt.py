"""Strict JWT parsing and RSA signature checks with pre-built key objects.

Stricter than a generic decoder on purpose: base64url only (no padding, no stray bytes), and
the signature segment must be the canonical encoding of its bytes, so no two different
strings verify as the same token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = ["MAX_TOKEN_BYTES", "RSA_HASHES", "ParsedJWT", "b64url_decode", "parse", "verify_rsa"]

MAX_TOKEN_BYTES = 16 * 1024
RSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "RS256": hashes.SHA256,
    "RS384": hashes.SHA384,
    "RS512": hashes.SHA512,
}
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PKCS1 = padding.PKCS1v15()


class MalformedJWT(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ParsedJWT:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def b64url_decode(segment: str) -> bytes:
    if len(segment) % 4 == 1:
        raise MalformedJWT("bad base64url length")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise MalformedJWT("bad base64url") from None


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(segment))
    except (UnicodeDecodeError, ValueError):
        raise MalformedJWT("segment is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedJWT("segment is not a JSON object")
    return value


def parse(token: str) -> ParsedJWT:
    """Split and decode ``token`` without verifying anything; raise MalformedJWT."""
    if len(token) > MAX_TOKEN_BYTES or _SHAPE.fullmatch(token) is None:
        raise MalformedJWT("not three base64url segments")
    head, body, sig = token.split(".")
    signature = b64url_decode(sig)
    if base64.urlsafe_b64encode(signature).rstrip(b"=") != sig.encode():
        raise MalformedJWT("non-canonical signature encoding")
    return ParsedJWT(_json_object(head), _json_object(body), f"{head}.{body}".encode(), signature)


def verify_rsa(parsed: ParsedJWT, alg: str, key: RSAPublicKey) -> bool:
    try:
        key.verify(parsed.signature, parsed.signing_input, _PKCS1, RSA_HASHES[alg]())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_hs256(claims: dict[str, Any], secret: str) -> str:
    """Sign ``claims`` as Tinybird expects: HS256 keyed with the workspace admin token."""
    head = b64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    body = b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{head}.{body}".encode()
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{head}.{body}.{b64url_encode(signature)}"
