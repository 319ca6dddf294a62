"""Helpers shared by the built-in providers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from pydantic import SecretStr

from credentials.base import (
    Credential,
    CredentialNotConfigured,
    CredentialRejected,
    CredentialUnavailable,
    Identity,
    SecretSink,
)
from credentials.claims import decode_claims, expiry_from, loggable_claims
from credentials.clientauth import ClientAuthentication, ClientSecret
from credentials.config_protocol import DEFAULT_REALM, issuer_url
from credentials.http import HttpClient, safe_url
from credentials.secrets import SecretSource

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
UMA_TICKET_GRANT = "urn:ietf:params:oauth:grant-type:uma-ticket"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"


def require(provider: str, user: str | None, settings: Mapping[str, object]) -> None:
    """Raise :class:`CredentialNotConfigured` naming every missing setting (env var → value)."""
    missing = [name for name, value in settings.items() if value is None or value == ""]
    if missing:
        raise CredentialNotConfigured(f"not configured: set {', '.join(missing)}", provider=provider,
                                      user=user, reason="not_configured")


def require_secret(secret: SecretStr | None) -> SecretStr | None:
    """``None`` for a missing or empty secret (for :func:`require`)."""
    return secret if secret is not None and secret.get_secret_value() else None


def access_token_from(data: Mapping[str, Any], *, provider: str, user: str | None, what: str,
                      keys: tuple[str, ...] = ("access_token",)) -> tuple[str, dict[str, Any]]:
    """The access token of a token response and its (unverified) claims.

    Refuses refresh tokens: legacy Keycloak token exchange returns one when ``requested_token_type`` is
    missing, and a refresh token sent to CloudSigma would only ever answer 401.
    """
    token: Any = None
    for key in keys:
        if isinstance(data.get(key), str) and data[key]:
            token = data[key]
            break
    claims = decode_claims(token) if isinstance(token, str) else {}
    issued = data.get("issued_token_type")
    if issued == REFRESH_TOKEN_TYPE or str(claims.get("typ", "")).lower() in ("refresh", "offline") or (
            token is None and data.get("refresh_token")):
        raise CredentialRejected(
            f"{what} returned a refresh token instead of an access token: the request must carry "
            f"requested_token_type={ACCESS_TOKEN_TYPE} (Keycloak's legacy token exchange returns a refresh "
            "token without it); check that no proxy rewrites the request",
            provider=provider, user=user, reason="refresh_token_returned")
    if token is None:
        fields = ", ".join(sorted(str(k) for k in data)) or "nothing"
        raise CredentialUnavailable(f"{what} answered without an access token (fields: {fields})",
                                    provider=provider, user=user, reason="bad_response")
    token_type = data.get("token_type")
    if isinstance(token_type, str) and token_type and token_type.lower() != "bearer":
        raise CredentialRejected(f"{what} returned a token of type {token_type[:40]!r}, not a Bearer access "
                                 "token", provider=provider, user=user, reason="wrong_token_type")
    return token, claims


#: Fields of a token answer that help diagnose it and are never secret.
_ANSWER_FIELDS = ("issued_token_type", "token_type", "expires_in", "scope")


def answer_context(data: Mapping[str, Any], *, what: str, endpoint: str) -> dict[str, Any]:
    """What the identity provider answered besides the token, for logs (never a token)."""
    context: dict[str, Any] = {"request": what, "endpoint": safe_url(endpoint)}
    for key in _ANSWER_FIELDS:
        value = data.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            context[key] = value
    return context


def impersonated_credential(data: Mapping[str, Any], *, provider: str, user: str, api_url_template: str, now: float,
                            what: str, endpoint: str) -> Credential:
    """The bearer credential of an impersonation answer (``access_token`` + ``expires_in``/``exp``)."""
    token, claims = access_token_from(data, provider=provider, user=user, what=what)
    logged = loggable_claims(claims)
    act = claims.get("act")
    if isinstance(act, dict):  # RFC 8693: who acts for the user (the CCM's client)
        logged["act"] = {k: v for k, v in act.items() if isinstance(v, str)}
    return Credential(
        scheme="bearer",
        secret=SecretStr(token),
        api_url_template=api_url_template,
        identity=Identity(provider=provider, user=user, claims=logged, requested_subject=user,
                          answer=answer_context(data, what=what, endpoint=endpoint)),
        expires_at=expiry_from(now, expires_in=data.get("expires_in"), claims=claims),
        impersonated=True,
    )


def auth_hint(method: str) -> str:
    """What to check when Keycloak refuses the client, per client-authentication method."""
    if method == "client_assertion":
        return ("the client's federated credentials (authenticator 'Signed JWT - Federated', its identity provider "
                "and federated subject system:serviceaccount:<namespace>:<name>, the provider's issuer and maximum "
                "assertion expiration) and the projected token's audience")
    if method == "private_key_jwt":
        return ("the public key registered for the client (authenticator 'Signed JWT') and "
                "CLOUDSIGMA_CLIENT_PRIVATE_KEY_FILE")
    return "CLOUDSIGMA_CLIENT_SECRET (or its _FILE; a confidential client of this realm)"


class OAuthClientProvider:
    """What both impersonation strategies share: the OAuth client, its realm, the HTTP client and the clock."""

    name = "oauth-client"

    def __init__(self, *, oauth_url: str | None, client_id: str | None, client_secret: SecretStr | None,
                 realm: str, api_url_template: str, timeout: float, session: aiohttp.ClientSession | None,
                 clock: Callable[[], float], client_auth: ClientAuthentication | None = None) -> None:
        self.oauth_url = oauth_url
        self.realm = realm or DEFAULT_REALM
        self.client_id = client_id
        self.client_auth: ClientAuthentication = client_auth if client_auth is not None else ClientSecret(
            client_id, SecretSource(what="client secret", env="CLOUDSIGMA_CLIENT_SECRET",
                                    value=require_secret(client_secret)))
        self.api_url_template = api_url_template
        self._clock = clock
        self._http = HttpClient(provider=self.name, timeout=timeout, session=session)

    @property
    def issuer(self) -> str | None:
        return issuer_url(self.oauth_url, self.realm) if self.oauth_url else None

    def require_configured(self, user_email: str) -> None:
        """Raise :class:`CredentialNotConfigured` naming every missing setting."""
        missing = [] if self.oauth_url else ["CLOUDSIGMA_OAUTH_URL"]
        missing += self.client_auth.missing()
        if not user_email:
            missing.append("CLOUDSIGMA_USER_EMAIL (the user to impersonate)")
        if missing:
            raise CredentialNotConfigured(f"not configured: set {', '.join(dict.fromkeys(missing))}",
                                          provider=self.name, user=user_email or None, reason="not_configured")

    def client_form(self, form: Mapping[str, str], *, token_endpoint: str, user: str | None) -> dict[str, str]:
        """``form`` with the client's authentication (secret, assertion or signed JWT) added."""
        return self.client_auth.apply(form, token_endpoint=token_endpoint, provider=self.name, user=user)

    def describe(self) -> dict[str, Any]:
        """Configuration for diagnostics (see :class:`credentials.base.Describable`); never a secret."""
        missing = [] if self.oauth_url else ["CLOUDSIGMA_OAUTH_URL"]
        missing += self.client_auth.missing()
        return {"configured": not missing, "missing": missing, "issuer": self.issuer, "client_id": self.client_id,
                **self.client_auth.describe()}

    def attach_secret_sink(self, sink: SecretSink) -> None:
        self.client_auth.attach_secret_sink(sink)

    async def aclose(self) -> None:
        await self._http.aclose()
