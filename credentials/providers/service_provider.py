"""CloudSigma's service-provider impersonation flow.

(a) ``client_credentials`` at ``{issuer}/protocol/openid-connect/token`` → service-account token;
(b) a UMA RPT from the same endpoint (``grant_type=uma-ticket``, ``audience=service_provider_api``,
    bearer = token (a));
(c) ``POST {service_provider_url}user/impersonate`` with ``{"user_email", "subject_token": <token (a)>}``
    and bearer = the RPT → ``{"access_token", "token_type", "expires_in"}`` (15 minutes if missing).

Tokens (a) and (b) are kept in the chain's :class:`TokenCache` (per region) under the sub-keys
``cloudsigma-service-provider/client-credentials`` and ``cloudsigma-service-provider/rpt``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
from pydantic import SecretStr

from credentials.base import Credential, CredentialError, CredentialRejected, Identity
from credentials.cache import CacheKey, TokenCache
from credentials.claims import expiry_from, loggable_claims
from credentials.clientauth import ClientAuthentication, client_authentication_from
from credentials.config_protocol import (
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_IMPERSONATION_API_URL,
    DEFAULT_REALM,
    DEFAULT_SERVICE_PROVIDER_URL,
    DEFAULT_UMA_AUDIENCE,
    CredentialSettings,
    setting,
    str_setting,
)
from credentials.http import HttpErrorInfo
from credentials.providers._common import (
    UMA_TICKET_GRANT,
    OAuthClientProvider,
    access_token_from,
    auth_hint,
    impersonated_credential,
)

__all__ = ["ServiceProviderProvider", "from_settings"]


class ServiceProviderProvider(OAuthClientProvider):
    name = "cloudsigma-service-provider"

    def __init__(
        self,
        *,
        oauth_url: str | None,
        client_id: str | None,
        client_secret: SecretStr | None = None,
        realm: str = DEFAULT_REALM,
        uma_audience: str = DEFAULT_UMA_AUDIENCE,
        service_provider_url: str = DEFAULT_SERVICE_PROVIDER_URL,
        api_url_template: str = DEFAULT_IMPERSONATION_API_URL,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
        cache: TokenCache | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        client_auth: ClientAuthentication | None = None,
    ) -> None:
        super().__init__(oauth_url=oauth_url, client_id=client_id, client_secret=client_secret, realm=realm,
                         api_url_template=api_url_template, timeout=timeout, session=session, clock=clock,
                         client_auth=client_auth)
        self.uma_audience = uma_audience or DEFAULT_UMA_AUDIENCE
        self.service_provider_url = service_provider_url
        self._cache = cache if cache is not None else TokenCache(maxsize=64, clock=clock)

    def attach_cache(self, cache: TokenCache) -> None:
        """Keep the intermediate tokens in the chain's cache (see :class:`credentials.cache.CacheAware`)."""
        self._cache = cache

    @property
    def token_endpoint(self) -> str | None:
        issuer = self.issuer
        return f"{issuer}/protocol/openid-connect/token" if issuer else None

    def impersonate_url(self, region: str) -> str:
        base = self.service_provider_url.replace("{region}", region)
        return (base if base.endswith("/") else base + "/") + "user/impersonate"

    def __repr__(self) -> str:
        return (f"ServiceProviderProvider(issuer={self.issuer!r}, client_id={self.client_id!r}, "
                f"uma_audience={self.uma_audience!r}, service_provider_url={self.service_provider_url!r})")


    def _keys(self, region: str) -> tuple[CacheKey, CacheKey]:
        return (CacheKey.of(self.client_id, region, f"{self.name}/client-credentials"),
                CacheKey.of(self.client_id, region, f"{self.name}/rpt"))

    def forget_service_tokens(self, region: str) -> None:
        """Drop the cached service-account token and RPT of ``region`` (after they were refused)."""
        for key in self._keys(region):
            self._cache.invalidate(key)

    # -- the three steps ---------------------------------------------------------------------------------

    async def acquire(self, user_email: str, region: str) -> Credential:
        self.require_configured(user_email)
        sa_key, rpt_key = self._keys(region)
        service_token = await self._cache.get(sa_key, lambda: self._client_credentials(region))
        rpt = await self._cache.get(rpt_key, lambda: self._rpt(service_token, region))
        now = self._clock()
        try:
            data = await self._http.post_json(
                self.impersonate_url(region),
                {"user_email": user_email, "subject_token": service_token.secret.get_secret_value()},
                what="CloudSigma service-provider impersonation", user=user_email, bearer=rpt.secret,
                explain=self._explain_impersonate(user_email, region),
            )
        except CredentialRejected as exc:
            if exc.reason == "service_token_refused":
                self.forget_service_tokens(region)
            raise
        return impersonated_credential(data, provider=self.name, user=user_email,
                                       endpoint=self.impersonate_url(region),
                                       api_url_template=self.api_url_template, now=now,
                                       what="CloudSigma service-provider impersonation")

    async def _client_credentials(self, region: str) -> Credential:
        assert self.token_endpoint is not None
        form = self.client_form({"grant_type": "client_credentials"}, token_endpoint=self.token_endpoint, user=None)
        now = self._clock()
        data = await self._http.post_form(self.token_endpoint, form, what="Keycloak client_credentials grant",
                                          explain=self._explain_client_credentials)
        token, claims = access_token_from(data, provider=self.name, user=None,
                                          what="Keycloak client_credentials grant")
        return Credential(
            scheme="bearer", secret=SecretStr(token), api_url_template=self.token_endpoint,
            identity=Identity(provider=f"{self.name}/client-credentials", user=self.client_id,
                              claims=loggable_claims(claims)),
            expires_at=expiry_from(now, expires_in=data.get("expires_in"), claims=claims),
        )

    async def _rpt(self, service_token: Credential, region: str) -> Credential:
        assert self.token_endpoint is not None
        now = self._clock()
        try:
            data = await self._http.post_form(
                self.token_endpoint,
                {"grant_type": UMA_TICKET_GRANT, "audience": self.uma_audience},
                what="Keycloak UMA ticket (RPT) grant", bearer=service_token.secret, explain=self._explain_uma,
            )
        except CredentialRejected as exc:
            if exc.reason == "service_token_refused":
                self._cache.invalidate(self._keys(region)[0])
            raise
        token, claims = access_token_from(data, provider=self.name, user=None,
                                          what="Keycloak UMA ticket (RPT) grant", keys=("access_token", "rpt"))
        return Credential(
            scheme="bearer", secret=SecretStr(token), api_url_template=self.token_endpoint,
            identity=Identity(provider=f"{self.name}/rpt", user=self.client_id, claims=loggable_claims(claims)),
            expires_at=expiry_from(now, expires_in=data.get("expires_in"), claims=claims),
        )

    # -- error explanations ------------------------------------------------------------------------------

    def _explain_client_credentials(self, info: HttpErrorInfo) -> CredentialError | None:
        if info.error == "invalid_client" or info.status == 401:
            return info.rejected(
                f"Keycloak refused client {self.client_id!r} ({info.detail()}): check CLOUDSIGMA_CLIENT_ID and "
                f"{auth_hint(self.client_auth.method)}", reason="invalid_client")
        if info.error == "unauthorized_client":
            return info.rejected(
                f"client {self.client_id!r} may not use the client_credentials grant ({info.detail()}): enable "
                "its service account (Service accounts roles) in Keycloak", reason="unauthorized_client")
        return None

    def _explain_uma(self, info: HttpErrorInfo) -> CredentialError | None:
        if info.status == 401:
            return info.rejected(
                f"Keycloak refused the service-account token when asking for an RPT ({info.detail()}); the "
                "cached token was dropped and will be fetched again", reason="service_token_refused")
        if info.status == 403 or info.error == "access_denied":
            return info.rejected(
                f"Keycloak denied an RPT for audience {self.uma_audience!r} ({info.detail()}): the service "
                f"account of client {self.client_id!r} needs a permission on that resource server "
                "(CLOUDSIGMA_UMA_AUDIENCE)", reason="uma_denied")
        if info.status == 400:
            return info.rejected(
                f"Keycloak rejected the RPT request for audience {self.uma_audience!r} ({info.detail()}): check "
                "CLOUDSIGMA_UMA_AUDIENCE names a client with authorization services enabled",
                reason="uma_invalid")
        return None

    def _explain_impersonate(self, user: str, region: str) -> Callable[[HttpErrorInfo], CredentialError | None]:
        def explain(info: HttpErrorInfo) -> CredentialError | None:
            if info.status == 401:
                return info.rejected(
                    f"the service-provider API refused the RPT or service-account token ({info.detail()}); "
                    "they were dropped and will be fetched again", reason="service_token_refused")
            if info.status == 403:
                return info.rejected(
                    f"the service-provider API denied impersonating {user!r} in region {region!r} "
                    f"({info.detail()}): client {self.client_id!r} must be the user's service provider with "
                    "the impersonate permission", reason="impersonation_denied")
            if info.status == 404:
                return info.rejected(
                    f"the service-provider API found no user {user!r} or no such endpoint ({info.detail()}): "
                    f"check the user exists in region {region!r} and CLOUDSIGMA_SERVICE_PROVIDER_URL",
                    reason="not_found")
            if info.status == 400:
                return info.rejected(
                    f"the service-provider API rejected the impersonation request for {user!r} "
                    f"({info.detail()}): check CLOUDSIGMA_USER_EMAIL", reason="bad_request")
            return None

        return explain


def from_settings(settings: CredentialSettings) -> ServiceProviderProvider:
    return ServiceProviderProvider(
        oauth_url=str_setting(settings, "oauth_url"),
        realm=setting(settings, "oauth_realm", DEFAULT_REALM),
        client_id=str_setting(settings, "client_id"),
        client_auth=client_authentication_from(settings),
        uma_audience=setting(settings, "uma_audience", DEFAULT_UMA_AUDIENCE),
        service_provider_url=setting(settings, "service_provider_url", DEFAULT_SERVICE_PROVIDER_URL),
        api_url_template=setting(settings, "impersonation_api_url", DEFAULT_IMPERSONATION_API_URL),
        timeout=float(setting(settings, "http_timeout", DEFAULT_HTTP_TIMEOUT)),
    )
