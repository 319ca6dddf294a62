"""Read a token's claims for logging, and decide when it expires.

Nothing here verifies a signature: the claims are only logged (who is this token for?) and used as an
expiry hint. The API that receives the token does the verifying. Opaque (non-JWT) tokens are fine: they
simply have no claims.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

#: Claims worth logging: enough to answer "which user does this token act as, issued to which client?"
LOGGED_CLAIMS: tuple[str, ...] = ("sub", "azp", "aud", "exp", "iss", "preferred_username", "email")

#: Lifetime assumed when neither ``expires_in`` nor an ``exp`` claim says otherwise (kube-dc assumes 15 min).
DEFAULT_TOKEN_LIFETIME = 15 * 60.0

_MAX_TOKEN_LENGTH = 64 * 1024


def decode_claims(token: str) -> dict[str, Any]:
    """All claims of a JWS compact token, unverified; ``{}`` for anything that is not one."""
    if not token or len(token) > _MAX_TOKEN_LENGTH:
        return {}
    parts = token.split(".")
    if len(parts) != 3:  # 5 parts would be an encrypted JWE: unreadable by design
        return {}
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


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
