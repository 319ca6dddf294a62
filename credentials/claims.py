"""Read a token's claims for logging, and decide when it expires.

Nothing here verifies a signature (that is :mod:`credentials.verify`): the claims read here are logged
(who is this token for?) and used as an expiry hint. The JWS compact form is parsed by ``joserfc``.
Opaque (non-JWT) tokens are fine: they simply have no claims.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError

#: Claims worth logging: enough to answer "which user does this token act as, issued to which client?"
LOGGED_CLAIMS: tuple[str, ...] = ("sub", "azp", "aud", "exp", "iss", "preferred_username", "email")

#: Lifetime assumed when neither ``expires_in`` nor an ``exp`` claim says otherwise (kube-dc assumes 15 min).
DEFAULT_TOKEN_LIFETIME = 15 * 60.0

_MAX_TOKEN_LENGTH = 64 * 1024


def parse_jws(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The (header, claims) of a JWS compact token, unverified; ``None`` for anything that is not one.

    A token "claims to be a JWT" when this returns something: three segments, a JSON header naming an
    ``alg`` and a JSON object as payload. Encrypted (5-segment) tokens are unreadable by design.
    """
    if not token or len(token) > _MAX_TOKEN_LENGTH or token.count(".") != 2:
        return None
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        header = dict(compact.headers())
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError, TypeError):
        return None
    if not isinstance(claims, dict) or not isinstance(header.get("alg"), str):
        return None
    return header, claims


def decode_claims(token: str) -> dict[str, Any]:
    """All claims of a JWS compact token, unverified; ``{}`` for anything that is not one."""
    parsed = parse_jws(token)
    return parsed[1] if parsed is not None else {}


def loggable_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """Only the claims in :data:`LOGGED_CLAIMS`, with simple (loggable) values."""
    out: dict[str, Any] = {}
    for key in LOGGED_CLAIMS:
        value = claims.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            out[key] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[key] = list(value)
    return out


def token_claims(token: str) -> dict[str, Any]:
    """The loggable claims of ``token`` (empty for opaque tokens)."""
    return loggable_claims(decode_claims(token))


def _positive_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def expiry_from(
    now: float,
    *,
    expires_in: Any = None,
    claims: Mapping[str, Any] | None = None,
    default_lifetime: float = DEFAULT_TOKEN_LIFETIME,
) -> float:
    """Epoch seconds at which a token expires.

    Prefers the token response's ``expires_in`` (relative, so immune to clock skew between us and the
    identity provider), then the token's ``exp`` claim, then ``now + default_lifetime``.
    """
    lifetime = _positive_number(expires_in)
    if lifetime is not None:
        return now + lifetime
    exp = _positive_number((claims or {}).get("exp"))
    if exp is not None:
        return exp
    return now + default_lifetime
