"""Check an impersonated token before its first use: who signed it, whether it is current, whom it acts as.

A token that claims to be a JWT (a JWS compact token with an ``alg``) is verified with ``joserfc``:

* its signature against the configured issuer's keys (:class:`credentials.jwks.IssuerKeys`), asymmetric
  algorithms only;
* ``exp`` (required) and ``nbf``/``iat`` with a small leeway for clock skew;
* ``iss`` equal to the configured issuer;
* that it **acts as the requested user**: one of the accepted claims (``preferred_username`` or ``email`` by
  default) equals the requested email, case-insensitively.

A token for another subject raises :class:`credentials.base.ImpersonationSubjectMismatch`; a forged, foreign,
expired or otherwise invalid token raises :class:`TokenInvalid`. Both are provider failures like any other:
the chain never hands such a token out. An opaque (non-JWT) token cannot be checked and is reported as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwt import JWTClaimsRegistry

from credentials.base import CredentialRejected, ImpersonationSubjectMismatch, Verification
from credentials.claims import parse_jws
from credentials.jwks import IssuerKeys

__all__ = ["ALGORITHMS", "DEFAULT_LEEWAY", "DEFAULT_SUBJECT_CLAIMS", "TokenInvalid", "TokenVerifier",
           "matching_claim"]

#: Asymmetric signature algorithms only: a token signed with a shared secret (HS*) or "none" is refused.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_SUBJECT_CLAIMS: tuple[str, ...] = ("preferred_username", "email")
#: Clock skew tolerated on ``exp``/``nbf``/``iat`` (seconds).
DEFAULT_LEEWAY = 30.0


class TokenInvalid(CredentialRejected):
    """The token is not one the configured issuer signed, or no longer (or not yet) valid. ``reason`` says which:
    ``token_unknown_key``, ``token_bad_signature``, ``token_wrong_issuer``, ``token_expired``,
    ``token_not_yet_valid``, ``token_algorithm``, ``token_malformed``."""

    reason = "token_invalid"


def matching_claim(claims: Mapping[str, Any], requested: str, accepted: Iterable[str]) -> str | None:
    """The first of ``accepted`` whose value equals ``requested`` (case-insensitive, trimmed), else ``None``."""
    wanted = requested.strip().lower()
    for name in accepted:
        value = claims.get(name)
        if isinstance(value, str) and value.strip().lower() == wanted:
            return name
    return None


class TokenVerifier:
    """Verifies impersonated tokens of one issuer.

    Without an issuer (``keys`` is ``None``: no OAuth URL or token issuer configured, e.g. a static impersonated
    token) the signature cannot be checked; the token is then ``unverifiable`` but must still name the
    requested user in its (unverified) claims.
    """

    def __init__(self, issuer: str | None, keys: IssuerKeys | None, *,
                 subject_claims: Iterable[str] = DEFAULT_SUBJECT_CLAIMS, leeway: float = DEFAULT_LEEWAY,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer.rstrip("/") if issuer else None
        self.keys = keys if self.issuer else None
        self.subject_claims = tuple(subject_claims) or DEFAULT_SUBJECT_CLAIMS
        self.leeway = leeway
        self._clock = clock

    async def aclose(self) -> None:
        if self.keys is not None:
            await self.keys.aclose()

    async def verify(self, token: str, *, requested_user: str | None, provider: str,
                     answer: Mapping[str, Any] | None = None) -> Verification:
        """Check ``token``; returns how, or raises :class:`TokenInvalid` / ``ImpersonationSubjectMismatch`` /
        :class:`credentials.base.CredentialUnavailable` (keys could not be fetched)."""
        started = time.perf_counter()
        parsed = parse_jws(token)
        if parsed is None:
            return Verification("opaque", detail="not a JWT: nothing to verify")
        header, unverified = parsed
        alg = str(header.get("alg"))
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        user = requested_user or None
        if self.keys is None or self.issuer is None:
            matched = self._check_subject(unverified, requested_user, provider, answer)
            return Verification("unverifiable", kid=kid, alg=alg, matched_claim=matched,
                                detail="no issuer configured to check its signature against (CLOUDSIGMA_OAUTH_URL "
                                "or CLOUDSIGMA_TOKEN_ISSUER); its claims name the requested user")
        if alg not in ALGORITHMS:
            raise self._invalid(f"is signed with {alg!r}; only asymmetric signatures ({', '.join(ALGORITHMS)}) are "
                                "accepted", "token_algorithm", provider, user, unverified)
        lookup = await self.keys.lookup(kid, provider=provider, user=user)
        try:
            decoded = jwt.decode(token, lookup.keys, algorithms=list(ALGORITHMS))
        except InvalidKeyIdError:
            raise self._invalid(
                f"is signed by key {kid!r}, which the issuer {self.issuer!r} does not publish (its keys, fetched "
                f"{'for this token' if lookup.refreshed else 'moments ago'}: "
                f"{', '.join(sorted(self.keys.kids)) or 'none'}): the token was not issued by the configured issuer",
                "token_unknown_key", provider, user, unverified) from None
        except BadSignatureError:
            raise self._invalid(f"has a signature that does not verify with the issuer's key {kid!r}: forged or "
                                "altered", "token_bad_signature", provider, user, unverified) from None
        except (JoseError, ValueError, TypeError) as exc:
            raise self._invalid(f"cannot be verified ({type(exc).__name__})", "token_malformed", provider, user,
                                unverified) from None
        claims = decoded.claims
        registry = JWTClaimsRegistry(now=int(self._clock()), leeway=int(self.leeway),
                                     iss={"essential": True, "value": self.issuer}, exp={"essential": True})
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise self._invalid(f"expired at {claims.get('exp')} (now {self._clock():.0f}, leeway {self.leeway:g}s)",
                                "token_expired", provider, user, claims) from None
        except MissingClaimError as exc:
            raise self._invalid(f"lacks the claim(s) {exc.claim}", "token_malformed", provider, user,
                                claims) from None
        except InvalidClaimError as exc:
            if exc.claim == "iss":
                raise self._invalid(f"was issued by {str(claims.get('iss'))[:200]!r}, not the configured issuer "
                                    f"{self.issuer!r}", "token_wrong_issuer", provider, user, claims) from None
            if exc.claim in ("nbf", "iat"):
                raise self._invalid(f"is not valid yet ({exc.claim} {claims.get(exc.claim)}, now "
                                    f"{self._clock():.0f}): check the clocks", "token_not_yet_valid", provider, user,
                                    claims) from None
            raise self._invalid(f"has an invalid {exc.claim!r} claim", "token_malformed", provider, user,
                                claims) from None
        matched = self._check_subject(claims, requested_user, provider, answer)
        return Verification("verified", issuer=self.issuer, kid=kid, alg=alg, matched_claim=matched,
                            keys_refreshed=lookup.refreshed,
                            duration_ms=round((time.perf_counter() - started) * 1000, 3))

    def _check_subject(self, claims: Mapping[str, Any], requested_user: str | None, provider: str,
                       answer: Mapping[str, Any] | None) -> str | None:
        """The claim naming ``requested_user``; raises ``ImpersonationSubjectMismatch`` when none does."""
        if not requested_user:
            return None
        matched = matching_claim(claims, requested_user, self.subject_claims)
        if matched is None:
            shown = {c: claims.get(c) for c in self.subject_claims}
            raise ImpersonationSubjectMismatch(
                f"the identity provider returned a token that does not act as {requested_user!r}: its "
                f"{', '.join(f'{c}={v!r}' for c, v in shown.items())} (sub {claims.get('sub')!r}, issued to "
                f"{claims.get('azp')!r}); it was not used",
                provider=provider, requested=requested_user, claims=_shown_claims(claims),
                accepted_claims=self.subject_claims, answer=answer)
        return matched

    def _invalid(self, what: str, reason: str, provider: str, user: str | None,
                 claims: Mapping[str, Any]) -> TokenInvalid:
        subject = claims.get("sub")
        about = f" (sub {subject!r})" if isinstance(subject, str) else ""
        return TokenInvalid(f"the impersonated token{about} {what}; it was not used", provider=provider, user=user,
                            reason=reason)


def _shown_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("sub", "preferred_username", "email", "azp", "iss", "aud"):
        value = claims.get(key)
        if isinstance(value, str | int) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            out[key] = value
    return out
