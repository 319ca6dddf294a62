"""Where each credential provider stands, for ``/debug/credentials`` and ``doctor``: no token, no secret.

The chain records every real acquisition (not cache hits): the last success with the verified identity of the
token it produced and its expiry, and the last failure with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from credentials.base import Credential, CredentialError

__all__ = ["ProviderStatus"]

_IDENTITY_CLAIMS = ("sub", "preferred_username", "email", "azp", "iss", "aud")


@dataclass
class _Failure:
    at: float
    reason: str
    error: str
    message: str
    request_id: str | None


@dataclass
class _Success:
    at: float
    region: str
    credential: Credential


class ProviderStatus:
    """The last success and failure of one provider."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.acquisitions = 0
        self.failures = 0
        self._success: _Success | None = None
        self._failure: _Failure | None = None

    def acquired(self, at: float, credential: Credential, region: str) -> None:
        self.acquisitions += 1
        self._success = _Success(at, region, credential)

    def failed(self, at: float, error: CredentialError) -> None:
        self.failures += 1
        self._failure = _Failure(at, error.reason, type(error).__name__, error.message, error.request_id)

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain data; times are epoch seconds."""
        out: dict[str, Any] = {"provider": self.name, "acquisitions": self.acquisitions, "failures": self.failures,
                               "last_success": None, "last_failure": None, "current": None}
        if self._failure is not None:
            f = self._failure
            out["last_failure"] = {"at": round(f.at, 3), "reason": f.reason, "error": f.error, "message": f.message,
                                   "request_id": f.request_id}
        if self._success is not None:
            s = self._success
            out["last_success"] = {"at": round(s.at, 3), "region": s.region}
            out["current"] = _describe(s.credential, now)
        return out


def _describe(credential: Credential, now: float) -> dict[str, Any]:
    identity = credential.identity
    left = credential.seconds_left(now)
    current: dict[str, Any] = {
        "user": identity.user,
        "requested_subject": identity.requested_subject,
        "impersonated": credential.impersonated,
        "scheme": credential.scheme,
        "expires_at": credential.expires_at,
        "expires_in": None if left is None else round(left, 1),
        "expired": left is not None and left <= 0,
        "claims": {k: identity.claims[k] for k in _IDENTITY_CLAIMS if k in identity.claims},
    }
    verification = identity.verification
    if verification is not None:
        current["verification"] = {
            "status": verification.status, "issuer": verification.issuer, "kid": verification.kid,
            "alg": verification.alg, "matched_claim": verification.matched_claim, "detail": verification.detail,
            "duration_ms": verification.duration_ms,
        }
    return current
