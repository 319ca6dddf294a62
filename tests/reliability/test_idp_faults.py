"""Identity-provider faults with a real Keycloak: outage → password fallback, one warning per episode, and
impersonation again by itself; short-lived tokens refreshed ahead of expiry without a failed call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from tests.emulator import EmulatorServer, EmulatorState, RequestRecord, public_dhcp_nic
from tests.integration.harness import ALICE
from tests.realenv.keycloak import Keycloak
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for
from tests.reliability import registry
from tests.reliability.support import CCMRun, initialized, missing, running

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]
PROVIDER = "keycloak-token-exchange"
LIFESPAN = 6  # seconds: tokens expire within the test; refresh-ahead starts at 25 % = 1.5 s before


@pytest.fixture
async def idp_world(world: EmulatorState, keycloak: Keycloak) -> AsyncIterator[EmulatorState]:
    """The emulator trusts the real Keycloak's keys; Keycloak issues short-lived tokens. Afterwards Keycloak is
    running again with its original token lifespan, whatever happened."""
    world.jwks_url = keycloak.jwks_url
    registry.add_secret(keycloak.client_secret, "Keycloak client secret")
    _, realm, _ = await keycloak.admin_request("GET", f"/{keycloak.realm}")
    original = int(realm.get("accessTokenLifespan") or 300)
    await keycloak.set_access_token_lifespan(LIFESPAN)
    try:
        yield world
    finally:
        await keycloak.start()
        await keycloak.set_access_token_lifespan(original)


def idp_settings(keycloak: Keycloak, emulator: EmulatorServer) -> dict[str, Any]:
    """Impersonation through the real Keycloak, alice's username/password (harness defaults) as the fallback,
    and steady traffic: initialized nodes re-sync every 0.5 s from a snapshot at most 0.3 s old."""
    return {
        "impersonation_enabled": True, "oauth_url": keycloak.issuer, "client_id": "cloudsigma-ccm",
        "client_secret": keycloak.client_secret, "token_audience": "cloudsigma-api", "user_email": ALICE,
        "impersonation_api_url": emulator.api_url, "http_timeout": "2s",
        "node_status_update_frequency": "0.5s", "server_cache_max_age": "0.3s",
    }


def api_calls(world: EmulatorState, since: float = 0.0) -> list[RequestRecord]:
    return [r for r in world.requests if r.path.startswith("/api/2.0/servers") and r.started_at >= since]


async def add_node(world: EmulatorState, api: ApiClient, name: str) -> None:
    world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
    await register_node(api, name)


def keycloak_lines(ccm: CCMRun, event: str) -> list[dict[str, Any]]:
    return ccm.logs.named(event, credential_provider=PROVIDER)


async def test_short_lived_tokens_are_refreshed_ahead(idp_world: EmulatorState, emulator: EmulatorServer,
                                                      keycloak: Keycloak, kube_apiserver: KubeAPIServer,
                                                      kube_api: ApiClient) -> None:
    await add_node(idp_world, kube_api, "refresh-1")
    registry.record("fault/idp", "short-lived tokens",
                    injected=f"Keycloak access-token lifespan {LIFESPAN} s; steady API traffic for "
                             f"{2.4 * LIFESPAN:.0f} s",
                    verified="tokens replaced ahead of expiry (refresh-ahead ≥ 2, none expired in the cache, ≥ 3 "
                             "tokens); no 401 in the emulator's log; every call bearer, none fell back",
                    faults=1, nodes_checked=1)
    async with running(kube_apiserver.admin_kubeconfig, emulator, **idp_settings(keycloak, emulator)) as ccm:
        await wait_for(lambda: initialized(kube_api, "refresh-1"), 30)
        started = time.time()
        await asyncio.sleep(2.4 * LIFESPAN)  # a few token lifetimes of steady traffic
        assert ccm.alive
        acquired = keycloak_lines(ccm, "credential_acquired")
        refreshes = ccm.metric(ccm.parts.metrics.token_cache, "refresh", PROVIDER)
        expired = ccm.metric(ccm.parts.metrics.token_cache, "expired", PROVIDER)
        fallbacks = ccm.logs.named("credential_fallback")
        bearer_tokens = len(ccm.tokens)
    assert bearer_tokens >= 3, f"{bearer_tokens} tokens used"
    calls = api_calls(idp_world)
    during = api_calls(idp_world, since=started)
    assert len(during) >= 2 * LIFESPAN, f"too little traffic to test refreshes: {len(during)} calls"
    assert not [r for r in idp_world.requests if r.status == 401], "a call failed with 401 (expired token)"
    assert all(r.auth_kind == "bearer" and r.status == 200 for r in calls), {(r.auth_kind, r.status) for r in calls}
    assert len(acquired) >= 3 and all(a.get("expires_in", 99) <= LIFESPAN for a in acquired), acquired
    assert refreshes >= 2, f"{refreshes} refresh-ahead acquisitions"
    assert expired == 0, "a token expired in the cache before it was replaced"
    assert not fallbacks
    lost = await missing(kube_api, ["refresh-1"])
    registry.lost(len(lost))
    assert not lost


async def test_keycloak_outage_falls_back_once_and_recovers(idp_world: EmulatorState, emulator: EmulatorServer,
                                                            keycloak: Keycloak, kube_apiserver: KubeAPIServer,
                                                            kube_api: ApiClient) -> None:
    await add_node(idp_world, kube_api, "idp-before")
    registry.record("fault/idp", "Keycloak stopped mid-run, then started again",
                    injected=f"Keycloak stopped (tokens of {LIFESPAN} s expire during the outage); a node "
                             "registered during the outage; Keycloak started again",
                    verified="password fallback served the outage (≥ 5 basic-auth calls) with ONE "
                             "`credential_fallback` warning; node registered meanwhile initialized; bearer calls "
                             "again by themselves after the restart, one `credential_provider_recovered`; a node "
                             "registered afterwards initialized; daemon running",
                    faults=1, nodes_checked=3)
    async with running(kube_apiserver.admin_kubeconfig, emulator, **idp_settings(keycloak, emulator)) as ccm:
        await wait_for(lambda: initialized(kube_api, "idp-before"), 30)
        assert all(r.auth_kind == "bearer" for r in api_calls(idp_world))
        stopped_at = time.time()
        await keycloak.stop()
        await add_node(idp_world, kube_api, "idp-during")  # registered while the IdP is down

        def basic_since(t: float) -> list[RequestRecord]:
            return [r for r in api_calls(idp_world, since=t) if r.auth_kind == "basic" and r.status == 200]

        await wait_for(lambda: basic_since(stopped_at), 4 * LIFESPAN, message="calls through the password fallback")
        await wait_for(lambda: initialized(kube_api, "idp-during"), 20)
        await asyncio.sleep(3)  # a stretch of the outage with steady traffic
        fallback_calls = len(basic_since(stopped_at))
        await keycloak.start()
        back_at = time.time()

        def bearer_since(t: float) -> list[RequestRecord]:
            return [r for r in api_calls(idp_world, since=t) if r.auth_kind == "bearer" and r.status == 200]

        await wait_for(lambda: bearer_since(back_at), 75, message="impersonation resumed after Keycloak came back")
        resumed_after = min(r.started_at for r in bearer_since(back_at)) - back_at
        await add_node(idp_world, kube_api, "idp-after")
        await wait_for(lambda: initialized(kube_api, "idp-after"), 20)
        await asyncio.sleep(1)
        assert ccm.alive
        fallback_lines = keycloak_lines(ccm, "credential_fallback")
        recovered = keycloak_lines(ccm, "credential_provider_recovered")
        exhausted = ccm.logs.named("credential_chain_exhausted")
        latest = api_calls(idp_world, since=time.time() - 1)
    assert fallback_calls >= 5, f"only {fallback_calls} calls during the outage"
    assert len(fallback_lines) == 1, f"{len(fallback_lines)} credential_fallback warnings for one outage"
    line = fallback_lines[0]
    assert line["level"] == "warning" and line["next_provider"] == "password" and line["cs_user"] == ALICE
    assert len(recovered) == 1 and recovered[0]["failures"] >= 1
    assert not exhausted
    assert latest and all(r.auth_kind == "bearer" for r in latest), "still on the fallback after recovery"
    lost = await missing(kube_api, ["idp-before", "idp-during", "idp-after"])
    registry.lost(len(lost))
    assert not lost
    assert resumed_after < 75
