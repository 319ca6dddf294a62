"""TokenVerifier + IssuerKeys against an in-test issuer that signs real tokens (joserfc) and serves OIDC metadata
and a JWKS like Keycloak: signature, unknown keys, rotation, times, issuer, and whom the token acts as."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from credentials.base import CredentialRejected, CredentialUnavailable, ImpersonationSubjectMismatch
from credentials.http import HttpClient
from credentials.jwks import IssuerKeys
from credentials.verify import TokenInvalid, TokenVerifier

USER = "alice@example.com"


class Issuer:
    """A realm with a current signing key; ``rotate()`` publishes a new one (the old one stays published)."""

    def __init__(self) -> None:
        self.base = ""
        self.keys = [RSAKey.generate_key(2048, {"use": "sig", "alg": "RS256"}, auto_kid=True)]
        self.jwks_requests = 0
        self.metadata_issuer: str | None = None
        self.jwks_status = 200

    @property
    def issuer(self) -> str:
        return f"{self.base}/realms/cloudsigma"

    def rotate(self) -> RSAKey:
        key = RSAKey.generate_key(2048, {"use": "sig", "alg": "RS256"}, auto_kid=True)
        self.keys.append(key)
        return key

    def token(self, key: RSAKey | None = None, **claims: Any) -> str:
        key = key or self.keys[-1]
        now = int(time.time())
        body = {"iss": self.issuer, "iat": now, "exp": now + 300, "sub": "user-uuid", "azp": "cloudsigma-ccm",
                "preferred_username": USER, "email": USER, **claims}
        return jwt.encode({"alg": "RS256", "kid": key.kid}, {k: v for k, v in body.items() if v is not None}, key)

    def app(self) -> web.Application:
        async def metadata(_: web.Request) -> web.Response:
            return web.json_response({"issuer": self.metadata_issuer or self.issuer,
                                      "jwks_uri": f"{self.issuer}/protocol/openid-connect/certs"})

        async def certs(_: web.Request) -> web.Response:
            self.jwks_requests += 1
            if self.jwks_status != 200:
                return web.Response(status=self.jwks_status, text="down")
            keys = [k.as_dict(private=False) for k in self.keys]
            # Keycloak also publishes an encryption key; it must be ignored.
            enc = RSAKey.generate_key(2048, {"use": "enc", "alg": "RSA-OAEP"}, auto_kid=True).as_dict(private=False)
            return web.json_response({"keys": [*keys, enc]})

        app = web.Application()
        app.router.add_get("/realms/cloudsigma/.well-known/openid-configuration", metadata)
        app.router.add_get("/realms/cloudsigma/protocol/openid-connect/certs", certs)
        return app


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    idp = Issuer()
    server = TestServer(idp.app(), host="127.0.0.1")
    await server.start_server()
    idp.base = str(server.make_url("")).rstrip("/")
    try:
        yield idp
    finally:
        await server.close()


def verifier_for(issuer: Issuer, **kwargs: Any) -> TokenVerifier:
    keys = IssuerKeys(issuer.issuer, HttpClient(provider="token-verifier", timeout=5),
                      min_refresh_interval=kwargs.pop("min_refresh_interval", 0.0))
    return TokenVerifier(issuer.issuer, keys, **kwargs)


async def test_the_right_user_passes_and_keys_are_cached(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    first = await verifier.verify(issuer.token(), requested_user=USER.upper(), provider="kc")
    second = await verifier.verify(issuer.token(email=None), requested_user=USER, provider="kc")
    assert (first.status, first.matched_claim, first.keys_refreshed) == ("verified", "preferred_username", True)
    assert (second.status, second.keys_refreshed) == ("verified", False)
    assert first.kid == issuer.keys[-1].kid and first.issuer == issuer.issuer
    assert issuer.jwks_requests == 1
    await verifier.aclose()


async def test_a_token_for_another_user_is_refused_with_its_claims(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    token = issuer.token(sub="bob-uuid", preferred_username="bob@example.com", email="bob@example.com")
    with pytest.raises(ImpersonationSubjectMismatch) as caught:
        await verifier.verify(token, requested_user=USER, provider="kc",
                              answer={"endpoint": "https://kc/token", "issued_token_type": "access_token"})
    fields = caught.value.log_fields()
    assert fields["requested_user"] == USER and fields["token_sub"] == "bob-uuid"
    assert fields["token_preferred_username"] == "bob@example.com" and fields["token_azp"] == "cloudsigma-ccm"
    assert fields["idp_endpoint"] == "https://kc/token"
    assert caught.value.reason == "impersonation_subject_mismatch"
    await verifier.aclose()


async def test_accepted_claims_are_a_setting(issuer: Issuer) -> None:
    # The username matches but the email does not: accepted only when preferred_username counts.
    token = issuer.token(preferred_username=USER, email="someone-else@example.com")
    assert (await verifier_for(issuer).verify(token, requested_user=USER, provider="kc")).status == "verified"
    with pytest.raises(ImpersonationSubjectMismatch):
        await verifier_for(issuer, subject_claims=["email"]).verify(token, requested_user=USER, provider="kc")


async def test_unknown_key_refetches_once_then_refuses(issuer: Issuer) -> None:
    verifier = verifier_for(issuer, min_refresh_interval=60)
    await verifier.verify(issuer.token(), requested_user=USER, provider="kc")
    foreign = RSAKey.generate_key(2048, {"use": "sig"}, auto_kid=True)
    with pytest.raises(TokenInvalid) as caught:
        await verifier.verify(issuer.token(key=foreign), requested_user=USER, provider="kc")
    assert caught.value.reason == "token_unknown_key"
    # First token: one fetch; the foreign key: at most one more (none here: fetched < 60 s ago).
    assert issuer.jwks_requests == 1
    verifier.keys.min_refresh_interval = 0
    with pytest.raises(TokenInvalid):
        await verifier.verify(issuer.token(key=foreign), requested_user=USER, provider="kc")
    assert issuer.jwks_requests == 2


async def test_a_key_rotation_is_followed_without_a_restart(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    await verifier.verify(issuer.token(), requested_user=USER, provider="kc")
    new_key = issuer.rotate()
    result = await verifier.verify(issuer.token(key=new_key), requested_user=USER, provider="kc")
    assert (result.status, result.kid, result.keys_refreshed) == ("verified", new_key.kid, True)
    assert issuer.jwks_requests == 2


@pytest.mark.parametrize(("claims", "reason"), [
    # Times relative to now, resolved when the test runs (not when it is collected).
    ({"exp": -120}, "token_expired"),
    ({"nbf": 600}, "token_not_yet_valid"),
    ({"iss": "https://evil.example/realms/cloudsigma"}, "token_wrong_issuer"),
    ({"exp": None}, "token_malformed"),
])
async def test_claims_are_checked(issuer: Issuer, claims: dict[str, Any], reason: str) -> None:
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") and isinstance(v, int) else v for k, v in claims.items()}
    with pytest.raises(TokenInvalid) as caught:
        await verifier_for(issuer).verify(issuer.token(**claims), requested_user=USER, provider="kc")
    assert caught.value.reason == reason
    assert "it was not used" in caught.value.message


async def test_small_clock_skew_is_tolerated(issuer: Issuer) -> None:
    token = issuer.token(exp=int(time.time()) - 5, nbf=int(time.time()) + 5)
    assert (await verifier_for(issuer).verify(token, requested_user=USER, provider="kc")).status == "verified"


async def test_forged_and_symmetric_tokens_are_refused(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    header, _payload, signature = issuer.token().split(".")
    forged = f"{header}.{issuer.token(preferred_username='root').split('.')[1]}.{signature}"
    with pytest.raises(TokenInvalid) as caught:
        await verifier.verify(forged, requested_user=USER, provider="kc")
    assert caught.value.reason == "token_bad_signature"
    hs = jwt.encode({"alg": "HS256"}, {"iss": issuer.issuer, "exp": int(time.time()) + 60,
                                       "preferred_username": USER}, OctKey.generate_key(256))
    with pytest.raises(TokenInvalid) as caught:
        await verifier.verify(hs, requested_user=USER, provider="kc")
    assert caught.value.reason == "token_algorithm"


async def test_opaque_tokens_cannot_be_checked(issuer: Issuer) -> None:
    result = await verifier_for(issuer).verify("opaque-access-token", requested_user=USER, provider="kc")
    assert result.status == "opaque"
    assert issuer.jwks_requests == 0


async def test_issuer_metadata_must_name_the_configured_issuer(issuer: Issuer) -> None:
    issuer.metadata_issuer = "https://auth.example/realms/cloudsigma"
    with pytest.raises(CredentialRejected) as caught:
        await verifier_for(issuer).verify(issuer.token(), requested_user=USER, provider="kc")
    assert caught.value.reason == "issuer_metadata_mismatch"
    assert "CLOUDSIGMA_TOKEN_ISSUER" in caught.value.message


async def test_keys_that_cannot_be_fetched_make_the_provider_unavailable(issuer: Issuer) -> None:
    issuer.jwks_status = 503
    with pytest.raises(CredentialUnavailable) as caught:
        await verifier_for(issuer).verify(issuer.token(), requested_user=USER, provider="kc")
    assert caught.value.reason == "jwks_unavailable" and caught.value.provider == "kc"


async def test_without_an_issuer_only_the_subject_is_checked() -> None:
    verifier = TokenVerifier(None, None)
    key = RSAKey.generate_key(2048, auto_kid=True)
    token = jwt.encode({"alg": "RS256"}, {"preferred_username": USER}, key)
    assert (await verifier.verify(token, requested_user=USER, provider="static-token")).status == "unverifiable"
    other = jwt.encode({"alg": "RS256"}, {"preferred_username": "bob@example.com"}, key)
    with pytest.raises(ImpersonationSubjectMismatch):
        await verifier.verify(other, requested_user=USER, provider="static-token")
