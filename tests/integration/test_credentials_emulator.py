"""Both impersonation strategies end in a server list in the impersonated user's account (emulator)."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from ccm.config import load_settings
from cloudsigma.client import CloudSigmaClient
from cloudsigma.errors import PermissionDenied
from credentials.base import ImpersonationSubjectMismatch, NoCredential
from credentials.factory import build_chain
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, ALICE_PW, BOB, BOB_PW, CLIENT_ID, CLIENT_SECRET, two_users


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    two_users(emulator_state)
    emulator_state.add_client(CLIENT_ID, CLIENT_SECRET, may_impersonate=True, may_exchange=True)
    emulator_state.add_server(ALICE, "alice-1", nics=[public_dhcp_nic("auto")])
    emulator_state.add_server(ALICE, "alice-2", nics=[public_dhcp_nic("auto")])
    emulator_state.add_server(BOB, "bob-1", nics=[public_dhcp_nic("auto")])
    return emulator_state


def settings_for(emulator: EmulatorServer, strategy: str, **extra: object) -> dict[str, object]:
    values: dict[str, object] = {
        "region": "zrh", "impersonation_enabled": True, "impersonation_strategy": strategy,
        "oauth_url": emulator.base_url, "oauth_realm": "cloudsigma", "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "user_email": ALICE, "impersonation_api_url": emulator.api_url,
        "service_provider_url": f"{emulator.base_url}/service_provider/api/v1/",
        "username": ALICE, "password": ALICE_PW, "api_url": emulator.api_url,
    }
    values.update(extra)
    return values


@pytest.mark.parametrize("strategy", ["keycloak-token-exchange", "cloudsigma-service-provider"])
async def test_strategy_lists_the_users_servers(world: EmulatorState, emulator: EmulatorServer,
                                                strategy: str) -> None:
    settings = load_settings(settings_for(emulator, strategy))
    chain = build_chain(settings)
    client = CloudSigmaClient(chain, user_email=ALICE, region="zrh")
    try:
        # many concurrent first calls: exactly one token acquisition (single-flight)
        listings = await asyncio.gather(*(client.list_servers() for _ in range(50)))
    finally:
        await client.close()
        await chain.aclose()
    assert all({s.name for s in listing.servers} == {"alice-1", "alice-2"} for listing in listings)
    assert all(listing.provider == strategy for listing in listings)
    api_calls = [r for r in world.requests if r.path.startswith("/api/2.0/servers")]
    assert api_calls and all(r.auth_kind == "bearer" and r.user == ALICE for r in api_calls)
    if strategy == "keycloak-token-exchange":
        assert world.counters["token:token-exchange"] == 1
    else:
        assert world.counters["token:client_credentials"] == 1
        assert world.counters["token:uma-ticket"] == 1
        assert world.counters["token:impersonate"] == 1


async def test_forbidden_with_impersonated_token_is_not_retried_with_password(
        world: EmulatorState, emulator: EmulatorServer) -> None:
    bobs = next(s for s in world.servers_of(BOB))
    settings = load_settings(settings_for(emulator, "keycloak-token-exchange"))
    chain = build_chain(settings)
    client = CloudSigmaClient(chain, user_email=ALICE, region="zrh")
    try:
        with pytest.raises(PermissionDenied) as denied:
            await client.get_server(bobs["uuid"])
    finally:
        await client.close()
        await chain.aclose()
    assert denied.value.context.provider == "keycloak-token-exchange"
    assert denied.value.context.token_subject == world.get_user(ALICE).uuid
    assert not [r for r in world.requests if r.auth_kind == "basic"]  # no silent retry as the password user


async def test_fallback_to_password_when_exchange_refused(world: EmulatorState, emulator: EmulatorServer) -> None:
    settings = load_settings(settings_for(emulator, "keycloak-token-exchange", client_secret="wrong-secret-x"))
    chain = build_chain(settings)
    client = CloudSigmaClient(chain, user_email=ALICE, region="zrh")
    try:
        listing = await client.list_servers()
    finally:
        await client.close()
        await chain.aclose()
    assert listing.provider == "password"
    assert {s.name for s in listing.servers} == {"alice-1", "alice-2"}


@pytest.mark.parametrize("allowed", [False, True])
async def test_opt_in_fallback_after_forbidden(world: EmulatorState, emulator: EmulatorServer, allowed: bool) -> None:
    """With global (bob's) password credentials behind impersonation, a 403 of alice's token is retried
    with them only when --allow-fallback-on-forbidden is set."""
    bobs = next(s for s in world.servers_of(BOB))
    settings = load_settings(settings_for(emulator, "keycloak-token-exchange", username=BOB, password=BOB_PW,
                                          allow_fallback_on_forbidden=allowed))
    chain = build_chain(settings)
    client = CloudSigmaClient(chain, user_email=ALICE, region="zrh")
    try:
        if allowed:
            server = await client.get_server(bobs["uuid"])
            assert server.uuid == bobs["uuid"]
        else:
            with pytest.raises(PermissionDenied):
                await client.get_server(bobs["uuid"])
    finally:
        await client.close()
        await chain.aclose()
    statuses = [(r.auth_kind, r.status) for r in world.requests if r.path.startswith("/api/2.0/servers/")]
    assert statuses == ([("bearer", 403), ("basic", 200)] if allowed else [("bearer", 403)])


@pytest.mark.parametrize("strategy", ["keycloak-token-exchange", "cloudsigma-service-provider"])
async def test_both_strategies_verify_the_impersonated_token(world: EmulatorState, emulator: EmulatorServer,
                                                             strategy: str) -> None:
    chain = build_chain(load_settings(settings_for(emulator, strategy)))
    try:
        credential = await chain.get(ALICE, "zrh")
    finally:
        await chain.aclose()
    verification = credential.identity.verification
    assert verification is not None and verification.status == "verified"
    assert verification.issuer == emulator.realm_url() and verification.kid == world.signing_key.kid
    assert verification.matched_claim == "preferred_username"
    assert credential.identity.answer["endpoint"].endswith(
        "/token" if strategy == "keycloak-token-exchange" else "/user/impersonate")


@pytest.mark.parametrize("strategy", ["keycloak-token-exchange", "cloudsigma-service-provider"])
async def test_a_token_for_another_user_is_refused_in_both_strategies(
        world: EmulatorState, emulator: EmulatorServer, strategy: str) -> None:
    world.impersonation_substitutes[ALICE] = BOB  # the identity provider answers with bob's token
    events: list[tuple[str, str]] = []
    with capture_logs() as logs:
        chain = build_chain(load_settings(settings_for(emulator, strategy, username=None, password=None)),
                            on_event=lambda event, provider: events.append((event, provider)))
        client = CloudSigmaClient(chain, user_email=ALICE, region="zrh")
        try:
            with pytest.raises(NoCredential) as caught:
                await client.list_servers()
        finally:
            await client.close()
            await chain.aclose()
    (failure,) = caught.value.failures
    assert isinstance(failure, ImpersonationSubjectMismatch) and failure.provider == strategy
    (line,) = [e for e in logs if e["event"] == "impersonation_subject_mismatch"]
    assert line["log_level"] == "error" and line["requested_user"] == ALICE
    assert line["token_preferred_username"] == BOB and line["token_sub"] == world.get_user(BOB).uuid
    assert line["token_azp"] == CLIENT_ID and line["idp_endpoint"]
    assert ("verify:subject_mismatch", strategy) in events
    # bob's token was never sent to the API
    assert not [r for r in world.requests if r.path.startswith("/api/2.0/")]
