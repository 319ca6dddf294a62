"""Providers against a small in-test HTTP server answering like Keycloak and CloudSigma."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from structlog.testing import capture_logs

from credentials.base import (
    Credential,
    CredentialError,
    CredentialNotConfigured,
    CredentialRejected,
    CredentialUnavailable,
)
from credentials.cache import TokenCache
from credentials.chain import CredentialChain
from credentials.claims import DEFAULT_TOKEN_LIFETIME, decode_claims, expiry_from, token_claims
from credentials.config_protocol import issuer_url
from credentials.http import redact, safe_url
from credentials.providers import keycloak, password, service_provider, static
from credentials.providers.keycloak import KeycloakTokenExchangeProvider
from credentials.providers.password import PasswordProvider
from credentials.providers.service_provider import ServiceProviderProvider
from credentials.providers.static import StaticTokenProvider

CLIENT_ID = "kube-dc-partner"
CLIENT_SECRET = "s3cr3t-client-value-7f2a"
USER = "tsap@shalb.com"
USER_UUID = "4705fb9a-0591-4ead-9d42-b2e86493f9b4"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
REFRESH = "urn:ietf:params:oauth:token-type:refresh_token"


def jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256', 'typ': 'JWT', 'kid': 'k1'})}.{part(claims)}.c2lnbmF0dXJlLW5vdC1jaGVja2Vk"


class FakeIdP:
    """Keycloak (realm ``cloudsigma``) plus CloudSigma's service-provider endpoint."""

    def __init__(self) -> None:
        self.base = ""
        self.mode = "ok"
        self.discovery = True
        self.expires_in: int | None = 300
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.issued: list[str] = []
        self.service_tokens: set[str] = set()
        self.rpts: set[str] = set()
        self.n = 0

    def mint(self, claims: dict[str, Any]) -> str:
        self.n += 1
        token = jwt({"iss": f"{self.base}/realms/cloudsigma", "iat": int(time.time()),
                     "exp": int(time.time()) + 300, "jti": f"j{self.n}", **claims})
        self.issued.append(token)
        return token

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/realms/{realm}/.well-known/openid-configuration", self.discovery_doc)
        app.router.add_post("/realms/{realm}/protocol/openid-connect/token", self.token)
        app.router.add_post("/kc/discovered-token", self.token)
        app.router.add_post("/{region}/service_provider/api/v1/user/impersonate", self.impersonate)
        return app

    async def discovery_doc(self, request: web.Request) -> web.Response:
        if not self.discovery:
            return web.json_response({"error": "not found"}, status=404)
        realm = request.match_info["realm"]
        return web.json_response({"issuer": f"{self.base}/realms/{realm}",
                                  "token_endpoint": f"{self.base}/kc/discovered-token"})

    def _token_response(self, token: str, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", **extra}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return body

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append((request.path, form, dict(request.headers)))
        grant = form.get("grant_type")
        if self.mode == "slow":
            await asyncio.sleep(2)
        if self.mode == "unavailable":
            return web.Response(status=503, text="<html>Service Unavailable</html>")
        if grant == "urn:ietf:params:oauth:grant-type:uma-ticket":
            auth = request.headers.get("Authorization", "")
            if auth.removeprefix("Bearer ") not in self.service_tokens:
                return web.json_response({"error": "invalid_grant", "error_description": "Invalid bearer token"},
                                         status=401)
            if self.mode == "uma_denied":
                return web.json_response({"error": "access_denied", "error_description": "not_authorized"},
                                         status=403)
            rpt = self.mint({"sub": "sa-uuid", "azp": CLIENT_ID, "authorization": {"permissions": []}})
            self.rpts.add(rpt)
            return web.json_response(self._token_response(rpt, upgraded=False))
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            # A careless server echoing the secret back: it must not reach our messages.
            return web.json_response({"error": "invalid_client",
                                      "error_description": f"Invalid client credentials {form.get('client_secret')}"},
                                     status=401)
        if grant == "client_credentials":
            token = self.mint({"sub": "sa-uuid", "azp": CLIENT_ID, "preferred_username": "service-account-ccm"})
            self.service_tokens.add(token)
            return web.json_response(self._token_response(token))
        if grant != "urn:ietf:params:oauth:grant-type:token-exchange":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if self.mode == "v2_only":
            return web.json_response({"error": "invalid_request", "error_description":
                                      "Parameter 'requested_subject' is not supported for standard token exchange"},
                                     status=400)
        if self.mode == "denied":
            return web.json_response({"error": "access_denied", "error_description": "Client not allowed to exchange"},
                                     status=403)
        if self.mode == "refresh" or form.get("requested_token_type") != ACCESS:
            token = self.mint({"typ": "Refresh", "sub": USER_UUID})
            return web.json_response({"access_token": token, "token_type": "Bearer", "issued_token_type": REFRESH,
                                      "expires_in": 1800})
        subject = form.get("requested_subject")
        token = self.mint({"sub": USER_UUID, "azp": CLIENT_ID, "aud": form.get("audience", "account"),
                           "preferred_username": subject, "email": subject})
        return web.json_response(self._token_response(token, issued_token_type=ACCESS))

    async def impersonate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body, dict(request.headers)))
        auth = request.headers.get("Authorization", "").removeprefix("Bearer ")
        headers = {"X-Request-ID": "c78c2720-fdc6-4b5c-8871-5f4109df24e7"}
        if auth not in self.rpts:
            return web.json_response([{"error_type": "permission", "error_message": "Invalid RPT",
                                       "error_point": None}], status=401, headers=headers)
        if body.get("subject_token") not in self.service_tokens:
            return web.json_response([{"error_type": "validation", "error_message": "bad subject_token",
                                       "error_point": "subject_token"}], status=400, headers=headers)
        if self.mode == "sp_forbidden":
            return web.json_response([{"error_type": "permission", "error_message":
                                       f"User {body.get('user_email')} is not managed by this service provider",
                                       "error_point": None}], status=403, headers=headers)
        token = self.mint({"sub": USER_UUID, "email": body["user_email"], "azp": "cloudsigma"})
        return web.json_response(self._token_response(token, token_type="Bearer"))


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdP]:
    fake = FakeIdP()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.base = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        await server.close()


def kc_provider(idp: FakeIdP, **kw: Any) -> KeycloakTokenExchangeProvider:
    args: dict[str, Any] = {"oauth_url": idp.base, "client_id": CLIENT_ID, "client_secret": SecretStr(CLIENT_SECRET),
                            "timeout": 5.0}
    args.update(kw)
    return KeycloakTokenExchangeProvider(**args)


def sp_provider(idp: FakeIdP, **kw: Any) -> ServiceProviderProvider:
    args: dict[str, Any] = {"oauth_url": idp.base, "client_id": CLIENT_ID, "client_secret": SecretStr(CLIENT_SECRET),
                            "service_provider_url": idp.base + "/{region}/service_provider/api/v1/", "timeout": 5.0}
    args.update(kw)
    return ServiceProviderProvider(**args)


# -- claims -----------------------------------------------------------------------------------------------


def test_claims_of_jwt_and_opaque_tokens() -> None:
    token = jwt({"sub": "u", "azp": "c", "aud": ["a", "b"], "exp": 123, "secret_claim": "x", "email": "e@x"})
    assert token_claims(token) == {"sub": "u", "azp": "c", "aud": ["a", "b"], "exp": 123, "email": "e@x"}
    assert decode_claims(token)["secret_claim"] == "x"
    for opaque in ("", "opaque-token", "a.b", "a.!!!.c", "a.b.c.d.e", jwt({}).replace(".", "", 1)):
        assert token_claims(opaque) == {}
    assert decode_claims("x." + base64.urlsafe_b64encode(b"[1,2]").decode() + ".y") == {}


def test_expiry_prefers_expires_in_then_exp_then_default() -> None:
    assert expiry_from(1000.0, expires_in=300, claims={"exp": 5000}) == 1300.0
    assert expiry_from(1000.0, expires_in="60", claims={}) == 1060.0
    assert expiry_from(1000.0, expires_in=None, claims={"exp": 5000}) == 5000.0
    assert expiry_from(1000.0, expires_in=0, claims={"exp": True}) == 1000.0 + DEFAULT_TOKEN_LIFETIME
    assert DEFAULT_TOKEN_LIFETIME == 900.0


def test_issuer_url() -> None:
    assert issuer_url("https://oauth.example.com/", "cloudsigma") == "https://oauth.example.com/realms/cloudsigma"
    assert issuer_url("https://oauth.example.com/realms/other", "cloudsigma") == "https://oauth.example.com/realms/other"
    assert issuer_url("https://o.example.com/realms/r/protocol/openid-connect/token") == "https://o.example.com/realms/r"


def test_redaction_helpers() -> None:
    token = jwt({"sub": "x"})
    assert redact(f"bad secret {CLIENT_SECRET} and {token}", [CLIENT_SECRET]) == "bad secret *** and <token>"
    assert safe_url("https://user:pw@host.example/path?token=abc#frag") == "https://host.example/path"


# -- Keycloak token exchange ------------------------------------------------------------------------------


async def test_keycloak_exchange_success(idp: FakeIdP) -> None:
    provider = kc_provider(idp, audience="cloudsigma-api")
    try:
        before = time.time()
        cred = await provider.acquire(USER, "next")
    finally:
        await provider.aclose()
    path, form, _ = idp.requests[-1]
    assert path == "/kc/discovered-token"  # found through OIDC discovery
    assert form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "requested_subject": USER, "requested_token_type": ACCESS,
        "audience": "cloudsigma-api",
    }
    assert cred.scheme == "bearer"
    assert cred.impersonated is True
    assert cred.api_url("next") == "https://direct.next.cloudsigma.com/api/2.0/"
    assert cred.secret.get_secret_value() == idp.issued[-1]
    assert cred.authorization_header() == "Bearer " + idp.issued[-1]
    assert cred.identity.provider == "keycloak-token-exchange"
    assert cred.identity.requested_subject == USER
    assert cred.identity.claims["sub"] == USER_UUID
    assert cred.identity.claims["azp"] == CLIENT_ID
    assert cred.identity.claims["aud"] == "cloudsigma-api"
    assert cred.expires_at is not None
    assert before + 299 <= cred.expires_at <= time.time() + 301


async def test_keycloak_discovery_is_cached_and_falls_back(idp: FakeIdP) -> None:
    provider = kc_provider(idp)
    try:
        await provider.acquire(USER, "next")
        await provider.acquire(USER, "next")
        assert [p for p, _, _ in idp.requests] == ["/kc/discovered-token"] * 2
    finally:
        await provider.aclose()
    idp.discovery = False
    provider = kc_provider(idp)
    try:
        await provider.acquire(USER, "next")
    finally:
        await provider.aclose()
    assert idp.requests[-1][0] == "/realms/cloudsigma/protocol/openid-connect/token"


async def test_keycloak_without_audience_sends_none(idp: FakeIdP) -> None:
    provider = kc_provider(idp, oauth_url=idp.base + "/realms/cloudsigma")
    try:
        await provider.acquire(USER, "next")
    finally:
        await provider.aclose()
    assert "audience" not in idp.requests[-1][1]


async def _kc_error(idp: FakeIdP, **kw: Any) -> CredentialError:
    provider = kc_provider(idp, **kw)
    try:
        with pytest.raises(CredentialError) as caught:
            await provider.acquire(USER, "next")
    finally:
        await provider.aclose()
    return caught.value


async def test_keycloak_v2_only_server(idp: FakeIdP) -> None:
    idp.mode = "v2_only"
    err = await _kc_error(idp)
    assert isinstance(err, CredentialRejected)
    assert err.reason == "legacy_exchange_disabled"
    assert "--features=token-exchange,admin-fine-grained-authz:v1" in err.message


async def test_keycloak_invalid_client(idp: FakeIdP) -> None:
    err = await _kc_error(idp, client_secret=SecretStr("wrong-secret-value"))
    assert isinstance(err, CredentialRejected)
    assert err.reason == "invalid_client"
    assert "CLOUDSIGMA_CLIENT_ID" in err.message
    assert "CLOUDSIGMA_CLIENT_SECRET" in err.message
    assert "wrong-secret-value" not in str(err)  # the server echoed it; we do not


async def test_keycloak_access_denied_explains_both_causes(idp: FakeIdP) -> None:
    idp.mode = "denied"
    err = await _kc_error(idp)
    assert isinstance(err, CredentialRejected)
    assert err.reason == "access_denied"
    assert "impersonate" in err.message
    assert "username" in err.message
    assert "user id" in err.message
    assert USER in err.message


async def test_keycloak_refresh_token_answer_is_refused(idp: FakeIdP) -> None:
    idp.mode = "refresh"
    err = await _kc_error(idp)
    assert isinstance(err, CredentialRejected)
    assert err.reason == "refresh_token_returned"
    assert "requested_token_type" in err.message


async def test_keycloak_unavailable_timeout_and_connection(idp: FakeIdP) -> None:
    idp.mode = "unavailable"
    err = await _kc_error(idp)
    assert isinstance(err, CredentialUnavailable)
    assert err.reason == "server_error"
    assert "503" in err.message

    idp.mode = "slow"
    err = await _kc_error(idp, timeout=0.2)
    assert isinstance(err, CredentialUnavailable)
    assert err.reason == "timeout"

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = await _kc_error(idp, oauth_url=f"http://127.0.0.1:{port}")
    assert isinstance(err, CredentialUnavailable)
    assert err.reason == "connection"


async def test_keycloak_not_configured() -> None:
    provider = KeycloakTokenExchangeProvider(oauth_url=None, client_id="c", client_secret=None)
    with pytest.raises(CredentialNotConfigured) as caught:
        await provider.acquire(USER, "next")
    assert "CLOUDSIGMA_OAUTH_URL" in caught.value.message
    assert "CLOUDSIGMA_CLIENT_SECRET" in caught.value.message
    assert "CLOUDSIGMA_CLIENT_ID" not in caught.value.message


def test_keycloak_from_settings() -> None:
    from types import SimpleNamespace

    provider = keycloak.from_settings(SimpleNamespace(  # type: ignore[arg-type]
        oauth_url="https://oauth.example.com", oauth_realm="r1", client_id="c", client_secret="plain-secret",
        token_audience="api", impersonation_api_url="https://direct.{region}.x/api/2.0/", http_timeout=3))
    assert provider.issuer == "https://oauth.example.com/realms/r1"
    assert provider.audience == "api"
    assert provider.api_url_template == "https://direct.{region}.x/api/2.0/"
    assert "plain-secret" not in repr(provider)


# -- CloudSigma service-provider flow ---------------------------------------------------------------------


async def test_service_provider_flow(idp: FakeIdP) -> None:
    provider = sp_provider(idp)
    try:
        cred = await provider.acquire(USER, "next")
        second = await provider.acquire("other@example.com", "next")
    finally:
        await provider.aclose()
    paths = [p for p, _, _ in idp.requests]
    # (a) and (b) once, then the impersonation per user: the service token and RPT are cached.
    assert paths == ["/realms/cloudsigma/protocol/openid-connect/token"] * 2 + [
        "/next/service_provider/api/v1/user/impersonate"] * 2
    _, cc_form, _ = idp.requests[0]
    assert cc_form == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    _, uma_form, uma_headers = idp.requests[1]
    assert uma_form == {"grant_type": "urn:ietf:params:oauth:grant-type:uma-ticket",
                        "audience": "service_provider_api"}
    service_token = next(iter(idp.service_tokens))
    assert uma_headers["Authorization"] == "Bearer " + service_token
    _, body, headers = idp.requests[2]
    assert body == {"user_email": USER, "subject_token": service_token}
    assert headers["Authorization"] == "Bearer " + next(iter(idp.rpts))
    assert cred.impersonated
    assert cred.identity.provider == "cloudsigma-service-provider"
    assert cred.identity.requested_subject == USER
    assert cred.identity.claims["email"] == USER
    assert cred.api_url("next") == "https://direct.next.cloudsigma.com/api/2.0/"
    assert second.identity.claims["email"] == "other@example.com"


async def test_service_provider_default_expiry_is_15_minutes(idp: FakeIdP) -> None:
    idp.expires_in = None
    now = 1_000.0
    provider = sp_provider(idp, clock=lambda: now)
    try:
        cred = await provider.acquire(USER, "next")
    finally:
        await provider.aclose()
    # No expires_in: the token's exp claim wins when present...
    assert cred.expires_at == decode_claims(cred.secret.get_secret_value())["exp"]
    # ...and 15 minutes when there is neither.
    assert expiry_from(now, expires_in=None, claims={}) == now + 900


async def test_service_provider_tokens_share_the_chain_cache(idp: FakeIdP) -> None:
    cache = TokenCache()
    provider = sp_provider(idp)
    chain = CredentialChain([provider], cache)
    try:
        await chain.get(USER, "next")
        keys = {(e["provider"], e["region"]) for e in cache.snapshot()}
        assert keys == {("cloudsigma-service-provider", "next"),
                        ("cloudsigma-service-provider/client-credentials", "next"),
                        ("cloudsigma-service-provider/rpt", "next")}
    finally:
        await chain.aclose()


async def test_service_provider_forbidden(idp: FakeIdP) -> None:
    idp.mode = "sp_forbidden"
    provider = sp_provider(idp)
    try:
        with pytest.raises(CredentialRejected) as caught:
            await provider.acquire(USER, "next")
    finally:
        await provider.aclose()
    err = caught.value
    assert err.reason == "impersonation_denied"
    assert err.request_id == "c78c2720-fdc6-4b5c-8871-5f4109df24e7"
    assert "not managed by this service provider" in err.message
    assert "request id c78c2720" in err.message


async def test_service_provider_uma_denied_and_bad_client(idp: FakeIdP) -> None:
    idp.mode = "uma_denied"
    provider = sp_provider(idp)
    try:
        with pytest.raises(CredentialRejected) as caught:
            await provider.acquire(USER, "next")
    finally:
        await provider.aclose()
    assert caught.value.reason == "uma_denied"
    assert "service_provider_api" in caught.value.message

    idp.mode = "ok"
    provider = sp_provider(idp, client_secret=SecretStr("wrong-secret-value"))
    try:
        with pytest.raises(CredentialRejected) as caught:
            await provider.acquire(USER, "next")
    finally:
        await provider.aclose()
    assert caught.value.reason == "invalid_client"
    assert "CLOUDSIGMA_CLIENT_SECRET" in caught.value.message


async def test_service_provider_refused_rpt_is_dropped_and_refetched(idp: FakeIdP) -> None:
    provider = sp_provider(idp)
    try:
        await provider.acquire(USER, "next")
        idp.rpts.clear()  # the service-provider API no longer accepts the cached RPT
        with pytest.raises(CredentialRejected) as caught:
            await provider.acquire(USER, "next")
        assert caught.value.reason == "service_token_refused"
        cred = await provider.acquire(USER, "next")  # fresh service token and RPT
    finally:
        await provider.aclose()
    assert cred.impersonated
    assert len(idp.service_tokens) == 2


def test_service_provider_from_settings() -> None:
    from types import SimpleNamespace

    provider = service_provider.from_settings(SimpleNamespace(  # type: ignore[arg-type]
        oauth_url="https://oauth.example.com", oauth_realm=None, client_id="c", client_secret=SecretStr("x"),
        uma_audience="spa", service_provider_url="https://direct.{region}.cloudsigma.com/service_provider/api/v1"))
    assert provider.token_endpoint == "https://oauth.example.com/realms/cloudsigma/protocol/openid-connect/token"
    assert provider.uma_audience == "spa"
    assert provider.impersonate_url("zrh") == \
        "https://direct.zrh.cloudsigma.com/service_provider/api/v1/user/impersonate"


# -- password ---------------------------------------------------------------------------------------------


async def test_password_provider() -> None:
    provider = PasswordProvider(username="ops@example.com", password=SecretStr("pw-value-123"))
    cred = await provider.acquire(USER, "zrh")
    assert cred.scheme == "basic"
    assert cred.impersonated is False
    assert cred.expires_at is None
    assert cred.api_url("zrh") == "https://zrh.cloudsigma.com/api/2.0/"
    assert cred.authorization_header() == "Basic " + base64.b64encode(b"ops@example.com:pw-value-123").decode()
    assert cred.identity.user == "ops@example.com"
    assert "pw-value-123" not in repr(cred) + str(cred) + repr(provider)


@pytest.mark.parametrize(("username", "pw"), [(None, SecretStr("x")), ("ops@example.com", None),
                                              ("ops@example.com", SecretStr(""))])
async def test_password_provider_not_configured(username: str | None, pw: SecretStr | None) -> None:
    provider = PasswordProvider(username=username, password=pw)
    with pytest.raises(CredentialNotConfigured) as caught:
        await provider.acquire(USER, "zrh")
    assert "CLOUDSIGMA_" in caught.value.message


def test_password_from_settings() -> None:
    from types import SimpleNamespace

    provider = password.from_settings(SimpleNamespace(  # type: ignore[arg-type]
        username="ops@example.com", password="plain", api_url="https://{region}.example.org/api/2.0/"))
    assert provider.api_url_template == "https://{region}.example.org/api/2.0/"


# -- static token -----------------------------------------------------------------------------------------


async def test_static_token_value() -> None:
    provider = StaticTokenProvider(token=SecretStr("opaque-static-token"))
    cred = await provider.acquire(USER, "zrh")
    assert cred.secret.get_secret_value() == "opaque-static-token"
    assert cred.impersonated is False
    assert cred.api_url("zrh") == "https://zrh.cloudsigma.com/api/2.0/"
    assert cred.identity.claims == {}
    assert "opaque-static-token" not in repr(provider) + repr(cred)
    with pytest.raises(CredentialNotConfigured):
        await StaticTokenProvider().acquire(USER, "zrh")


async def test_static_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("token-one\n")
    provider = StaticTokenProvider(token_file=path, check_interval=0)
    seen: list[str] = []
    provider.attach_secret_sink(seen.append)
    first = await provider.acquire(USER, "zrh")
    assert first.secret.get_secret_value() == "token-one"
    assert await provider.acquire(USER, "zrh") is first  # unchanged: same credential

    path.write_text("token-two-longer\n")  # a rotation changes size and mtime
    second = await provider.acquire(USER, "zrh")
    assert second.secret.get_secret_value() == "token-two-longer"

    # Kubernetes Secret volumes swap a symlink: the new inode is noticed.
    new = tmp_path / "token.new"
    new.write_text("token-four\n")
    os.replace(new, path)
    assert (await provider.acquire(USER, "zrh")).secret.get_secret_value() == "token-four"
    assert seen == ["token-one", "token-two-longer", "token-four"]  # the redactor learns each

    # A file that disappears after a good read keeps serving the last good token (WatchedFile) ...
    path.unlink()
    assert (await provider.acquire(USER, "zrh")).secret.get_secret_value() == "token-four"
    # ... an empty one is an error, and one never read is unavailable.
    path.write_text("   \n")
    with pytest.raises(CredentialUnavailable) as caught:
        await provider.acquire(USER, "zrh")
    assert caught.value.reason == "file_empty"
    with pytest.raises(CredentialUnavailable) as caught:
        await StaticTokenProvider(token_file=tmp_path / "missing").acquire(USER, "zrh")
    assert caught.value.reason == "file_unreadable"


async def test_static_token_expired_jwt_and_impersonated_endpoint(tmp_path: Path) -> None:
    from types import SimpleNamespace

    path = tmp_path / "token"
    path.write_text(jwt({"sub": USER_UUID, "email": USER, "exp": 500}))
    provider = static.from_settings(SimpleNamespace(  # type: ignore[arg-type]
        static_token=None, static_token_file=str(path), static_token_impersonated=True,
        api_url="https://{region}.cloudsigma.com/api/2.0/",
        impersonation_api_url="https://direct.{region}.cloudsigma.com/api/2.0/"))
    provider._clock = lambda: 100.0
    cred = await provider.acquire(USER, "zrh")
    assert cred.impersonated
    assert cred.api_url("zrh") == "https://direct.zrh.cloudsigma.com/api/2.0/"
    assert cred.expires_at == 500.0
    assert cred.identity.user == USER
    provider._clock = lambda: 600.0
    with pytest.raises(CredentialRejected) as caught:
        await provider.acquire(USER, "zrh")
    assert caught.value.reason == "expired"


# -- nothing secret leaks ---------------------------------------------------------------------------------


async def test_no_secret_in_logs_reprs_or_errors(idp: FakeIdP, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("static-file-token-value")
    texts: list[str] = []
    with capture_logs() as logs:
        for mode in ("ok", "v2_only", "denied", "refresh", "unavailable"):
            idp.mode = mode
            providers: list[Any] = [
                kc_provider(idp), sp_provider(idp),
                StaticTokenProvider(token_file=token_file),
                PasswordProvider(username="ops@example.com", password=SecretStr("pw-value-123")),
            ]
            chain = CredentialChain(providers, TokenCache())
            wrong = KeycloakTokenExchangeProvider(oauth_url=idp.base, client_id=CLIENT_ID,
                                                  client_secret=SecretStr("wrong-secret-value"))
            bad_chain = CredentialChain([wrong], TokenCache())
            try:
                for user in (USER, "nobody@example.com"):
                    cred: Credential | None = None
                    try:
                        cred = await chain.get(user, "next")
                    except CredentialError as exc:
                        texts += [str(exc), repr(exc), exc.message]
                    if cred is not None:
                        texts += [repr(cred), str(cred), repr(cred.identity)]
                        chain.invalidate(cred)
                        await chain.fallback_after_forbidden(user, "next", cred)
                    try:
                        await bad_chain.get(user, "next")
                    except CredentialError as exc:
                        texts += [str(exc), repr(exc)]
                    for provider in [*providers, wrong]:
                        try:
                            await provider.acquire(user, "next")
                        except CredentialError as exc:
                            texts += [str(exc), repr(exc), repr(exc.log_fields())]
                        texts.append(repr(provider))
                texts.append(repr(chain.diagnostics()))
            finally:
                await chain.aclose()
                await bad_chain.aclose()
    assert logs, "expected captured log lines"
    assert any(e["event"] == "credential_acquired" for e in logs)
    haystack = repr(logs) + "\n".join(texts)
    secrets = [CLIENT_SECRET, "wrong-secret-value", "pw-value-123", "static-file-token-value", *idp.issued]
    assert idp.issued
    for secret in secrets:
        assert secret not in haystack
