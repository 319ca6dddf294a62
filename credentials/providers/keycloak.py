"""Keycloak legacy token exchange (RFC 8693 "direct naked impersonation").

``POST {token_endpoint}`` authenticated as the CCM's client (a secret, a projected service-account token as
client assertion, or a private-key JWT: :mod:`credentials.clientauth`), ``requested_subject=<user>`` and
``requested_token_type=access_token``; the answer is an access token acting as that user, to be used
against the ``direct.`` API host. Only the *legacy* exchange supports ``requested_subject``
(``--features=token-exchange,admin-fine-grained-authz:v1``); Keycloak's standard V2 exchange refuses it.

The token endpoint comes from OIDC discovery of the issuer (cached), with
``{issuer}/protocol/openid-connect/token`` as the fallback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from pydantic import SecretStr
from yarl import URL

from credentials.base import Credential, CredentialError
from credentials.clientauth import ClientAuthentication, client_authentication_from
from credentials.config_protocol import (
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_IMPERSONATION_API_URL,
    DEFAULT_REALM,
    CredentialSettings,
    setting,
    str_setting,
)
from credentials.http import HttpErrorInfo
from credentials.providers._common import (
    ACCESS_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    OAuthClientProvider,
    auth_hint,
    impersonated_credential,
)

__all__ = ["KeycloakTokenExchangeProvider", "from_settings"]

LEGACY_FEATURES = "--features=token-exchange,admin-fine-grained-authz:v1"


class KeycloakTokenExchangeProvider(OAuthClientProvider):
    name = "keycloak-token-exchange"

    def __init__(
        self,
        *,
        oauth_url: str | None,
        client_id: str | None,
        client_secret: SecretStr | None = None,
        realm: str = DEFAULT_REALM,
        audience: str | None = None,
        api_url_template: str = DEFAULT_IMPERSONATION_API_URL,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        discovery_ttl: float = 3600.0,
        discovery_retry: float = 60.0,
        client_auth: ClientAuthentication | None = None,
    ) -> None:
        super().__init__(oauth_url=oauth_url, client_id=client_id, client_secret=client_secret, realm=realm,
                         api_url_template=api_url_template, timeout=timeout, session=session, clock=clock,
                         client_auth=client_auth)
        self.audience = audience or None
        self.discovery_ttl = discovery_ttl
        self.discovery_retry = discovery_retry
        self._endpoint: str | None = None
        self._endpoint_until = 0.0
        self._discovery_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (f"KeycloakTokenExchangeProvider(issuer={self.issuer!r}, client_id={self.client_id!r}, "
                f"audience={self.audience!r}, client_auth={self.client_auth.method!r})")

    # -- token endpoint ----------------------------------------------------------------------------------

    async def token_endpoint(self) -> str:
        """The realm's token endpoint: discovered (and cached), else the conventional Keycloak path."""
        issuer = self.issuer
        if issuer is None:
            raise ValueError("oauth_url is not configured")
        async with self._discovery_lock:
            now = self._clock()
            if self._endpoint is not None and now < self._endpoint_until:
                return self._endpoint
            fallback = f"{issuer}/protocol/openid-connect/token"
            try:
                doc = await self._http.get_json(f"{issuer}/.well-known/openid-configuration",
                                                what="OIDC discovery")
            except CredentialError:
                self._endpoint, self._endpoint_until = fallback, now + self.discovery_retry
                return fallback
            endpoint = doc.get("token_endpoint")
            if isinstance(endpoint, str) and _acceptable_endpoint(endpoint, issuer):
                self._endpoint, self._endpoint_until = endpoint, now + self.discovery_ttl
            else:
                self._endpoint, self._endpoint_until = fallback, now + self.discovery_retry
            return self._endpoint

    # -- exchange ----------------------------------------------------------------------------------------

    async def acquire(self, user_email: str, region: str) -> Credential:
        self.require_configured(user_email)
        endpoint = await self.token_endpoint()
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "requested_subject": user_email,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }
        if self.audience:
            form["audience"] = self.audience
        form = self.client_form(form, token_endpoint=endpoint, user=user_email)
        now = self._clock()
        data = await self._http.post_form(endpoint, form, what="Keycloak token exchange", user=user_email,
                                          explain=self._explain(user_email))
        return impersonated_credential(data, provider=self.name, user=user_email, endpoint=endpoint,
                                       api_url_template=self.api_url_template, now=now, what="Keycloak token exchange")

    def _explain(self, user: str) -> Callable[[HttpErrorInfo], CredentialError | None]:
        client = self.client_id
        audience = self.audience
        hint = auth_hint(self.client_auth.method)

        def explain(info: HttpErrorInfo) -> CredentialError | None:
            desc = (info.description or "").lower()
            if info.status == 400 and info.error == "invalid_request" and "requested_subject" in desc \
                    and "not supported" in desc:
                return info.rejected(
                    f"Keycloak offers only the standard (V2) token exchange, which refuses requested_subject "
                    f"({info.detail()}): enable the legacy token exchange on the Keycloak server with "
                    f"{LEGACY_FEATURES} (V1 and V2 can be enabled together)", reason="legacy_exchange_disabled")
            if info.error == "invalid_client" or info.status == 401:
                return info.rejected(
                    f"Keycloak refused client {client!r} ({info.detail()}): check CLOUDSIGMA_CLIENT_ID and "
                    f"{hint}", reason="invalid_client")
            if info.status == 403 or info.error == "access_denied":
                aud = (f", and the token-exchange permission of the audience client {audience!r} must allow it"
                       if audience else "")
                return info.rejected(
                    f"Keycloak denied exchanging a token for {user!r} ({info.detail()}). Keycloak answers this "
                    f"way on purpose both when client {client!r} lacks the 'impersonate' permission (Users → "
                    f"Permissions → impersonate: add a client policy naming {client!r}{aud}) and when no user "
                    f"has that username or id: requested_subject must be the user's username (= email) or "
                    "user id", reason="access_denied")
            if info.error == "unauthorized_client":
                return info.rejected(
                    f"Keycloak does not let client {client!r} exchange tokens ({info.detail()}): it must be a "
                    "confidential client allowed to use token exchange", reason="unauthorized_client")
            if info.status == 400 and "audience" in desc:
                return info.rejected(
                    f"Keycloak rejected the requested audience {audience!r} ({info.detail()}): check "
                    "CLOUDSIGMA_TOKEN_AUDIENCE (an existing client of this realm) or leave it unset",
                    reason="invalid_audience")
            return None

        return explain


def _acceptable_endpoint(endpoint: str, issuer: str) -> bool:
    """Send the client secret only over HTTPS, or to the very host the issuer names."""
    try:
        url, base = URL(endpoint), URL(issuer)
    except ValueError:
        return False
    if not url.is_absolute():
        return False
    if url.scheme == "https":
        return True
    return url.scheme == base.scheme and url.host == base.host and url.port == base.port


def from_settings(settings: CredentialSettings) -> KeycloakTokenExchangeProvider:
    return KeycloakTokenExchangeProvider(
        oauth_url=str_setting(settings, "oauth_url"),
        realm=setting(settings, "oauth_realm", DEFAULT_REALM),
        client_id=str_setting(settings, "client_id"),
        client_auth=client_authentication_from(settings),
        audience=str_setting(settings, "token_audience"),
        api_url_template=setting(settings, "impersonation_api_url", DEFAULT_IMPERSONATION_API_URL),
        timeout=float(setting(settings, "http_timeout", DEFAULT_HTTP_TIMEOUT)),
    )
