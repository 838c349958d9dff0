"""JWTs: strict pre-checks of our own, the JWS layer from PyJWT.

The pre-checks are stricter than a generic decoder on purpose, and run before any key is
looked up: at most 16 KiB, three base64url segments with no padding or stray bytes, a
canonical signature encoding (no two strings verify as the same token), and header and payload
that are UTF-8 JSON objects — no BOM, no UTF-16/32, no ``NaN``/``Infinity`` (Python's ``json``
accepts both), no nesting that exhausts the parser. Any failure is :class:`MalformedJWT`,
never another exception.

Signatures are checked by PyJWT's JWS algorithms, from a :class:`jwt.api_jws.PyJWS` pinned to
RS256/384/512, with key objects built once — over the segments the pre-checks already decoded
(PyJWT's own decoder would decode them a second time, at ~150 µs a token); Tinybird tokens are
signed with :func:`jwt.encode`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.api_jws import PyJWS

__all__ = [
    "MAX_TOKEN_BYTES",
    "RSA_ALGORITHMS",
    "MalformedJWT",
    "ParsedJWT",
    "b64url_decode",
    "b64url_encode",
    "encode_hs256",
    "parse",
    "read_payload",
    "verify_rsa",
]

MAX_TOKEN_BYTES = 16 * 1024
RSA_ALGORITHMS = ("RS256", "RS384", "RS512")
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_JWS = PyJWS(algorithms=list(RSA_ALGORITHMS))


class MalformedJWT(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ParsedJWT:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


_URLSAFE = bytes.maketrans(b"-_", b"+/")
_PADDING = ("", "", "==", "=")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: The bits of the last character that encode no data, by segment length modulo 4.
_SPARE_BITS = (0, 0, 0x0F, 0x03)


def b64url_decode(segment: str) -> bytes:
    rest = len(segment) % 4
    if rest == 1:
        raise MalformedJWT("bad base64url length")
    try:
        data = (segment + _PADDING[rest]).encode("ascii").translate(_URLSAFE)
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise MalformedJWT("bad base64url") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def strict_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a UTF-8 JSON object, or :class:`MalformedJWT`."""
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError, MemoryError):  # UnicodeDecodeError is a ValueError
        raise MalformedJWT("not a UTF-8 JSON object") from None
    if not isinstance(value, dict):
        raise MalformedJWT("not a JSON object")
    return value


def parse(token: str) -> ParsedJWT:
    """Split and decode ``token`` without verifying anything; raise :class:`MalformedJWT`.

    Every segment must be the canonical encoding of its bytes, so no two strings are the same
    token (and a flipped spare bit is ``token-invalid``, as in Clerk's SDK, not a signature
    failure)."""
    if len(token) > MAX_TOKEN_BYTES or _SHAPE.fullmatch(token) is None:
        raise MalformedJWT("not three base64url segments")
    head, body, sig = token.split(".")
    raw_header, raw_payload, signature = (_canonical(part) for part in (head, body, sig))
    return ParsedJWT(
        strict_json_object(raw_header),
        strict_json_object(raw_payload),
        f"{head}.{body}".encode(),
        signature,
    )


def _canonical(segment: str) -> bytes:
    """The bytes of ``segment`` if it is their one canonical base64url encoding (no spare bits
    set in the last character, as Clerk's decoder requires), else :class:`MalformedJWT`.
    ``segment`` is already known to be base64url characters only."""
    spare = _SPARE_BITS[len(segment) % 4]
    if spare and _ALPHABET.index(segment[-1]) & spare:
        raise MalformedJWT("non-canonical base64url")
    return b64url_decode(segment)


def read_payload(segment: str) -> dict[str, Any]:
    return strict_json_object(b64url_decode(segment))


def verify_rsa(parsed: ParsedJWT, alg: str, key: RSAPublicKey) -> bool:
    """PyJWT's JWS check of the signature with ``alg`` (one of :data:`RSA_ALGORITHMS`)."""
    try:
        algorithm = _JWS.get_algorithm_by_name(alg)
    except NotImplementedError:
        return False
    try:
        return bool(algorithm.verify(parsed.signing_input, key, parsed.signature))
    except (ValueError, TypeError):
        return False


def encode_hs256(claims: Mapping[str, Any], secret: str) -> str:
    """Sign ``claims`` as Tinybird expects: HS256 keyed with the workspace admin token."""
    return pyjwt.encode(dict(claims), secret, algorithm="HS256")
