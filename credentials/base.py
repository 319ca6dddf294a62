"""What a credential is, what a provider does, and how providers fail.

A *provider* turns (user email, region) into a :class:`Credential`: how to authenticate a request,
which API endpoint to use, when it expires, and who it is for logs. The chain (:mod:`credentials.chain`)
tries providers in configured order; the cache (:mod:`credentials.cache`) keeps tokens per key.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import SecretStr

AuthScheme = Literal["bearer", "basic"]
VerificationStatus = Literal["verified", "opaque", "unverifiable"]

#: Called with every secret value a provider loads (at start and after a rotation), e.g. a log redactor's ``add``.
SecretSink = Callable[[str], None]


@dataclass(frozen=True)
class Verification:
    """What checking an impersonated token before its first use found (see :mod:`credentials.verify`)."""

    #: ``verified``: signature, times, issuer and subject checked; ``opaque``: not a JWT, nothing to check;
    #: ``unverifiable``: a JWT, but no issuer is configured to check it against.
    status: VerificationStatus
    issuer: str | None = None
    kid: str | None = None
    alg: str | None = None
    #: The claim that named the requested user (``preferred_username`` or ``email`` by default).
    matched_claim: str | None = None
    #: The issuer's keys had to be fetched again for this token (a key rotation, or the first token).
    keys_refreshed: bool = False
    #: Why a token could not be verified (``unverifiable``/``opaque``).
    detail: str | None = None
    #: Time spent verifying (signature, claims, and a JWKS fetch when ``keys_refreshed``).
    duration_ms: float = 0.0

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"token_verified": self.status}
        if self.matched_claim:
            fields["token_subject_claim"] = self.matched_claim
        if self.kid:
            fields["token_kid"] = self.kid
        if self.detail:
            fields["token_verification_detail"] = self.detail
        return fields


@dataclass(frozen=True)
class Identity:
    """Who a credential acts as, for logs and diagnosis. Never holds the secret itself."""

    provider: str
    #: The CloudSigma user the calls act for (the impersonated email, or the basic-auth username).
    user: str | None = None
    #: Token claims worth logging (``sub``, ``azp``, ``aud``, ``exp``, ``iss``, ``preferred_username``...).
    claims: dict[str, Any] = field(default_factory=dict)
    #: For impersonation: the subject that was requested (seed 001: which user did we ask for?).
    requested_subject: str | None = None
    #: What the identity provider answered besides the token (endpoint, ``issued_token_type``, ``scope``,
    #: ``expires_in``), for diagnosing a token that acts as the wrong user. Never holds a token.
    answer: Mapping[str, Any] = field(default_factory=dict)
    #: Set by the chain once an impersonated token was checked (see :mod:`credentials.verify`).
    verification: Verification | None = None

    @property
    def subject(self) -> str | None:
        sub = self.claims.get("sub")
        return str(sub) if sub is not None else None

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"credential_provider": self.provider}
        if self.user:
            fields["cs_user"] = self.user
        if self.requested_subject:
            fields["requested_subject"] = self.requested_subject
        for key in ("sub", "azp", "aud", "exp", "iss", "preferred_username"):
            if key in self.claims:
                fields[f"token_{key}"] = self.claims[key]
        if self.verification is not None:
            fields.update(self.verification.log_fields())
        return fields


@dataclass(frozen=True)
class Credential:
    """How to authenticate CloudSigma API requests, and against which endpoint."""

    scheme: AuthScheme
    secret: SecretStr
    #: Endpoint template with ``{region}``; impersonated tokens must go to the ``direct.`` host.
    api_url_template: str
    identity: Identity
    #: Epoch seconds; ``None`` means it does not expire (basic auth, static token).
    expires_at: float | None = None
    #: True when the credential acts as another user on behalf of the service account.
    impersonated: bool = False
    #: For basic auth: the username (the password is ``secret``).
    username: str | None = None

    def authorization_header(self) -> str:
        if self.scheme == "basic":
            raw = f"{self.username or ''}:{self.secret.get_secret_value()}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        return "Bearer " + self.secret.get_secret_value()

    def api_url(self, region: str) -> str:
        url = self.api_url_template.replace("{region}", region)
        return url if url.endswith("/") else url + "/"

    def seconds_left(self, now: float | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def __repr__(self) -> str:  # never print the secret, even by accident
        return (
            f"Credential(scheme={self.scheme!r}, provider={self.identity.provider!r}, "
            f"user={self.identity.user!r}, expires_at={self.expires_at!r}, impersonated={self.impersonated})"
        )


class CredentialError(Exception):
    """Base for credential failures. ``reason`` is a short stable code for metrics and branching."""

    reason: str = "error"

    def __init__(self, message: str, *, provider: str, user: str | None = None, reason: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.user = user
        self.request_id = request_id
        if reason is not None:
            self.reason = reason

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"credential_provider": self.provider, "reason": self.reason,
                                  "error": type(self).__name__}
        if self.user:
            fields["cs_user"] = self.user
        if self.request_id:
            fields["request_id"] = self.request_id
        return fields

    def __str__(self) -> str:
        return f"{self.provider}: {self.message}"


class CredentialUnavailable(CredentialError):
    """The provider cannot produce a credential right now (identity provider down, timeout, 5xx)."""

    reason = "unavailable"


class CredentialNotConfigured(CredentialError):
    """The provider is not configured for this deployment (missing client id, no password...)."""

    reason = "not_configured"


class ProviderNotInChain(CredentialNotConfigured):
    """A provider was asked for by name (:meth:`CredentialChain.get_from`) that the chain does not have."""


class CredentialRejected(CredentialError):
    """The identity provider refused: wrong client secret, exchange not permitted, unknown user.

    ``message`` says what to configure to fix it.
    """

    reason = "rejected"


class ImpersonationSubjectMismatch(CredentialRejected):
    """An impersonated token does not act as the requested user: it is never used.

    Carries what an operator needs to see which side is wrong: the requested user, the token's subject,
    username, email and authorized party, and what the identity provider answered.
    """

    reason = "impersonation_subject_mismatch"

    def __init__(self, message: str, *, provider: str, requested: str, claims: Mapping[str, Any],
                 accepted_claims: tuple[str, ...], answer: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, provider=provider, user=requested)
        self.requested = requested
        self.claims = dict(claims)
        self.accepted_claims = accepted_claims
        self.answer = dict(answer or {})

    def log_fields(self) -> dict[str, Any]:
        fields = super().log_fields()
        fields["requested_user"] = self.requested
        fields["accepted_claims"] = list(self.accepted_claims)
        for key in ("sub", "preferred_username", "email", "azp", "iss", "aud"):
            if key in self.claims:
                fields[f"token_{key}"] = self.claims[key]
        for key, value in self.answer.items():
            fields[f"idp_{key}"] = value
        return fields


class NoCredential(CredentialError):
    """Every provider in the chain failed; ``failures`` holds each one's error."""

    reason = "exhausted"

    def __init__(self, message: str, *, failures: list[CredentialError], user: str | None = None) -> None:
        super().__init__(message, provider="chain", user=user)
        self.failures = failures


@runtime_checkable
class CredentialProvider(Protocol):
    """A pluggable source of credentials. Register third-party ones under the entry-point group
    ``cloudsigma_ccm.credential_providers`` as ``name = "module:from_settings"``."""

    #: Stable name used in configuration (``--credential-chain``), logs and metrics.
    name: str

    async def acquire(self, user_email: str, region: str) -> Credential:
        """Return a fresh credential or raise a :class:`CredentialError`. Caching is the caller's job."""
        ...

    async def aclose(self) -> None:
        """Release HTTP sessions."""
        ...


@runtime_checkable
class Describable(Protocol):
    """A provider that can say how it is configured, for ``doctor`` and ``/debug/credentials``.

    ``describe()`` returns plain data, never a secret: ``configured`` (bool), ``missing`` (settings to set),
    and for OAuth clients ``client_auth`` (``client_secret``, ``client_assertion`` or ``private_key_jwt``)
    with where it comes from (``client_auth_source``: an env var or a file path).
    """

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class SecretHolder(Protocol):
    """A provider that loads secrets (from settings or watched files) and reports each value it loads to a
    sink, so the daemon's log redactor knows rotated secrets too."""

    def attach_secret_sink(self, sink: SecretSink) -> None: ...
