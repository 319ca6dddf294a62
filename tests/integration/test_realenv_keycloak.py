"""The real Keycloak of the integration tests (tests/realenv/keycloak.py) does the legacy token exchange the CCM uses.

The error answers asserted here are those of the pinned Keycloak (scripts/fetch-keycloak.sh), checked by hand.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import aiohttp
import pytest

from tests.realenv.keycloak import ACCESS_TOKEN_TYPE, REFRESH_TOKEN_TYPE, Keycloak
from tests.realenv.keycloak_fixtures import ALICE, BOB

with warnings.catch_warnings():
    # "authlib.jose module is deprecated" (Authlib >= 1.6); authlib.deprecate installs an "always" filter on import.
    import authlib.deprecate  # noqa: F401

    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.jose import JsonWebKey, jwt
    from authlib.jose.errors import BadSignatureError

pytestmark = pytest.mark.integration


def verified_claims(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """Claims of ``token`` after checking its signature against ``jwks`` and its exp/iat/nbf."""
    claims = jwt.decode(token, JsonWebKey.import_key_set(jwks))
    claims.validate(leeway=5)
    return dict(claims)


def audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    return [aud] if isinstance(aud, str) else list(aud or [])


async def test_exchange_for_alice_returns_a_verified_access_token(keycloak: Keycloak) -> None:
    response = await keycloak.exchange(ALICE)

    assert response.status == 200, response.body
    assert response.issued_token_type == ACCESS_TOKEN_TYPE
    assert "refresh_token" not in response.body
    assert response.body["token_type"].lower() == "bearer"
    claims = verified_claims(response.access_token, await keycloak.jwks())
    assert claims["preferred_username"] == ALICE
    assert claims["email"] == ALICE
    assert claims["sub"] == keycloak.users[ALICE]
    assert claims["azp"] == keycloak.client_id == "cloudsigma-ccm"
    assert "cloudsigma-api" in audiences(claims)
    assert claims["iss"] == keycloak.issuer == f"http://127.0.0.1:{keycloak.http_port}/realms/cloudsigma"
    assert isinstance(claims["exp"], int)
    assert claims["exp"] > time.time()


async def test_a_tampered_token_fails_verification(keycloak: Keycloak) -> None:
    token = (await keycloak.exchange(ALICE)).access_token
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"

    with pytest.raises(BadSignatureError):
        verified_claims(forged, await keycloak.jwks())


async def test_requested_subject_may_be_the_user_id(keycloak: Keycloak) -> None:
    response = await keycloak.exchange(keycloak.users[BOB])

    claims = verified_claims(response.access_token, await keycloak.jwks())
    assert claims["preferred_username"] == BOB
    assert claims["sub"] == keycloak.users[BOB]


async def test_a_wrong_client_secret_is_refused_with_401(keycloak: Keycloak) -> None:
    response = await keycloak.exchange(ALICE, client_secret="not-the-secret")

    assert response.status == 401
    # Keycloak 26 answers unauthorized_client for a known client with bad credentials ...
    assert response.error == "unauthorized_client"
    assert response.error_description == "Invalid client or Invalid client credentials"
    assert "access_token" not in response.body


async def test_an_unknown_client_is_refused_with_401_invalid_client(keycloak: Keycloak) -> None:
    response = await keycloak.exchange(ALICE, client_id="no-such-client")

    # ... and invalid_client for a client it does not know.
    assert response.status == 401
    assert response.error == "invalid_client"
    assert response.error_description == "Invalid client or Invalid client credentials"


async def test_an_unknown_user_is_denied_with_403(keycloak: Keycloak) -> None:
    response = await keycloak.exchange("nobody@example.com")

    assert response.status == 403
    assert response.error == "access_denied"
    assert response.error_description == "Client not allowed to exchange"


async def test_without_requested_token_type_a_refresh_token_is_issued(keycloak: Keycloak) -> None:
    response = await keycloak.exchange(ALICE, requested_token_type=None)

    assert response.status == 200, response.body
    assert response.issued_token_type == REFRESH_TOKEN_TYPE
    assert isinstance(response.body.get("refresh_token"), str)


async def test_a_new_user_can_be_impersonated(keycloak: Keycloak) -> None:
    user_id = await keycloak.add_user("carol@example.com", "carol-password-1")

    claims = verified_claims((await keycloak.exchange("carol@example.com")).access_token, await keycloak.jwks())
    assert claims["sub"] == user_id
    assert claims["preferred_username"] == "carol@example.com"


async def test_the_access_token_lifespan_is_a_realm_setting(keycloak: Keycloak) -> None:
    await keycloak.set_access_token_lifespan(45)
    try:
        response = await keycloak.exchange(ALICE)
        claims = verified_claims(response.access_token, await keycloak.jwks())
        assert claims["exp"] - claims["iat"] == 45
        # expires_in is exp minus Keycloak's clock when it answers: a second boundary crossed in between gives 44.
        assert response.body["expires_in"] in (44, 45)
    finally:
        await keycloak.set_access_token_lifespan(300)
    claims = verified_claims((await keycloak.exchange(ALICE)).access_token, await keycloak.jwks())
    assert claims["exp"] - claims["iat"] == 300


async def test_stop_and_start_keep_port_realm_users_and_keys(keycloak: Keycloak) -> None:
    jwks_before = await keycloak.jwks()
    port = keycloak.http_port

    await keycloak.stop()
    assert not keycloak.running
    with pytest.raises(aiohttp.ClientConnectionError):
        await keycloak.exchange(ALICE)

    await keycloak.start()
    print(f"Keycloak restarted in {keycloak.last_start_seconds:.1f} s")
    assert keycloak.running
    assert keycloak.http_port == port
    for user in (ALICE, BOB):
        claims = verified_claims((await keycloak.exchange(user)).access_token, jwks_before)
        assert claims["preferred_username"] == user
        assert "cloudsigma-api" in audiences(claims)
    assert (await keycloak.exchange("nobody@example.com")).status == 403
