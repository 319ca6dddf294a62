"""What a credential is, what a provider does, and how providers fail.

A *provider* turns (user email, region) into a :class:`Credential`: how to authenticate a request,
which API endpoint to use, when it expires, and who it is for logs. The chain (:mod:`credentials.chain`)
tries providers in configured order; the cache (:mod:`credentials.cache`) keeps tokens per key.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import SecretStr

AuthScheme = Literal["bearer", "basic"]


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


class CredentialRejected(CredentialError):
    """The identity provider refused: wrong client secret, exchange not permitted, unknown user.

    ``message`` says what to configure to fix it.
    """

    reason = "rejected"


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
