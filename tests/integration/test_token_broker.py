"""The token broker (issue 28) against the real kube-apiserver and the real Keycloak.

The CCM runs in-process with ``--token-broker``, impersonating Alice through a dedicated Keycloak client whose tokens
live :data:`LIFESPAN` seconds (the client's ``access.token.lifespan``; the realm's other clients keep theirs), so
the chain refreshes every :data:`REFRESH_PERIOD` seconds (25 % before expiry). Its node controller resyncs a node
every 2 s, so the CloudSigma client (the emulator, trusting this Keycloak's keys) uses the same tokens all along.
Keycloak records every token exchange as an event: the count is Keycloak's, not ours.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubernetes_asyncio.client import ApiClient

from ccm.config import load_settings
from ccm.doctor import token_broker_check
from ccm.health import HealthState, create_app
from ccm.kube.errors import KubeNotFound
from ccm.kube.transport import KubeTransport
from ccm.logging import Redactor
from ccm.process.lifetime import kube_client
from ccm.tenant.controllers import TenantIdentity, build_tenant
from ccm.tenant.services import build_services
from ccm.tokenbroker import secret as s
from ccm.tokenbroker.secret import parse_target
from credentials.claims import decode_claims
from credentials.http import HttpClient
from credentials.jwks import IssuerKeys
from credentials.verify import TokenVerifier
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, ALICE_PW, RunningCCM, ccm_settings, running_ccm
from tests.realenv.keycloak import Keycloak
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]

CLIENT = "ccm-token-broker"
CLIENT_SECRET = "ccm-token-broker-secret-1"
LIFESPAN = 20
REFRESH_PERIOD = LIFESPAN * 0.75
#: A bearer token of somebody else in the chain after impersonation: it must never reach the Secret.
FOREIGN_TOKEN = "foreign-static-token-value-1"
PROVIDER = "keycloak-token-exchange"


@pytest.fixture(scope="module")
async def broker_keycloak(keycloak: Keycloak) -> Keycloak:
    """The session's Keycloak with the broker's client (short-lived tokens) and token-exchange events recorded."""
    if CLIENT not in keycloak.users:
        keycloak.users[CLIENT] = await keycloak.add_impersonating_client(
            CLIENT, secret=CLIENT_SECRET, attributes={"access.token.lifespan": str(LIFESPAN)})
    _, config, _ = await keycloak.admin_request("GET", f"/{keycloak.realm}/events/config")
    types = sorted({*(config.get("enabledEventTypes") or []), "TOKEN_EXCHANGE"})
    await keycloak.admin_request("PUT", f"/{keycloak.realm}/events/config",
                                 {**config, "eventsEnabled": True, "enabledEventTypes": types})
    return keycloak


async def exchanges_since(keycloak: Keycloak, since: float) -> int:
    """Token exchanges Keycloak performed for the broker's client since ``since`` (epoch seconds)."""
    _, events, _ = await keycloak.admin_request(
        "GET", f"/{keycloak.realm}/events?client={CLIENT}&type=TOKEN_EXCHANGE&max=10000")
    return len([e for e in events or [] if e["time"] / 1000 >= since])


@pytest.fixture
def world(emulator_state: EmulatorState, broker_keycloak: Keycloak) -> EmulatorState:
    emulator_state.add_user(ALICE, password=ALICE_PW)
    emulator_state.jwks_url = broker_keycloak.jwks_url
    emulator_state.add_server(ALICE, "broker-node", nics=[public_dhcp_nic("94.26.101.230")])
    return emulator_state


def namespace() -> str:
    return f"broker-{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def broker_ccm(keycloak: Keycloak, kube_apiserver: KubeAPIServer, kube_api: ApiClient,
                     emulator: EmulatorServer, target: str, **extra: Any) -> AsyncIterator[RunningCCM]:
    """The CCM with the broker on ``target``; its chain: impersonation, then a foreign static token, then Alice's
    password (both fallbacks the CloudSigma client may use, never the broker)."""
    await register_node(kube_api, "broker-node")
    values = {"impersonation_enabled": True, "oauth_url": keycloak.issuer, "client_id": CLIENT,
              "client_secret": CLIENT_SECRET, "user_email": ALICE, "static_token": FOREIGN_TOKEN,
              "token_broker": target, "node_status_update_frequency": "2s", **extra}
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, **values) as ccm:
        assert ccm.parts.settings.credential_chain == [PROVIDER, "static-token", "password"]
        yield ccm


@dataclass
class Seen:
    at: float
    data: dict[str, str]
    annotations: dict[str, str]
    resource_version: str

    @property
    def token(self) -> str:
        return self.data.get("access_token", "")


async def read(api: ApiClient, target: str) -> Seen | None:
    namespace, name = target.split("/")
    try:
        obj = await KubeTransport(api).request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    except KubeNotFound:
        return None
    meta = obj["metadata"]
    return Seen(time.time(), {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()},
                dict(meta.get("annotations") or {}), meta["resourceVersion"])


async def with_token(api: ApiClient, target: str) -> Seen | None:
    seen = await read(api, target)
    return seen if seen is not None and seen.token else None


def exp(token: str) -> float:
    return float(decode_claims(token)["exp"])


async def events_in(api: ApiClient, namespace: str) -> list[dict[str, Any]]:
    answer = await KubeTransport(api).request("GET", f"/api/v1/namespaces/{namespace}/events")
    return list(answer.get("items") or [])


def metric(ccm: RunningCCM, name: str, **labels: str) -> float:
    return ccm.parts.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_the_secret_holds_the_owners_verified_token_rotated_before_expiry_without_an_extra_exchange(
        broker_keycloak: Keycloak, world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
        kube_api: ApiClient, record_property: Any) -> None:
    target = f"{namespace()}/cloudsigma-token"  # its namespace does not exist yet: the broker may create it
    started = time.time()
    async with broker_ccm(broker_keycloak, kube_apiserver, kube_api, emulator, target,
                          token_broker_create_namespace=True) as ccm:
        first = await wait_for(lambda: with_token(kube_api, target), 30, interval=0.2)
        # Over three lifetimes: at every look the Secret holds a token that has not expired.
        seen: list[Seen] = [first]
        while time.time() < first.at + 3 * LIFESPAN + 2:
            await asyncio.sleep(0.5)
            current = await read(kube_api, target)
            assert current is not None and current.token, "the Secret lost its token"
            assert exp(current.token) > current.at, f"expired token held at {current.at:.1f}"
            seen.append(current)
        ended = time.time()
        exchanged = await exchanges_since(broker_keycloak, started)
        acquired = metric(ccm, "cloudsigma_ccm_token_acquisitions_total", provider=PROVIDER, result="success")
        assert ccm.parts.broker is not None
        health = HealthState(credentials=ccm.parts.chain.status, token_broker=ccm.parts.broker.status)
        async with TestClient(TestServer(create_app(health, ccm.parts.metrics))) as http:
            debug = await (await http.get("/debug/credentials")).json()
        doctor = await token_broker_check(KubeTransport(kube_api), parse_target(target))
    tokens = list(dict.fromkeys(x.token for x in seen))
    assert len(tokens) >= 3, f"rotated {len(tokens) - 1} times in {3 * LIFESPAN} s"
    # Each token was replaced before it expired, with the chain's refresh margin (25 % of the lifetime) to spare.
    for old, new in itertools.pairwise(tokens):
        replaced_at = next(x.at for x in seen if x.token == new)
        assert replaced_at < exp(old), (replaced_at, exp(old))

    # The token acts as the owner: verified with the issuer's published keys, as the chain does.
    verifier = TokenVerifier(broker_keycloak.issuer, IssuerKeys(broker_keycloak.issuer, HttpClient(provider="test")))
    try:
        verification = await verifier.verify(tokens[-1], requested_user=ALICE, provider="test")
    finally:
        await verifier.aclose()
    assert verification.status == "verified" and verification.matched_claim == "preferred_username"
    assert decode_claims(tokens[-1])["azp"] == CLIENT
    last = seen[-1]
    assert {k: v for k, v in last.data.items() if k not in ("access_token", "expires_at")} == {
        "region": "zrh", "user_email": ALICE, "cluster_name": "test", "api_url": emulator.api_url}
    expires_at = s.parse_time(last.data["expires_at"])
    assert expires_at is not None and abs(expires_at - exp(last.token)) <= 2  # expires_in from the exchange's start
    assert last.annotations[s.OWNER] == ALICE and last.annotations[s.REGION] == "zrh"
    assert last.annotations[s.EXPIRES_AT] == last.data["expires_at"]
    assert not [v for v in last.annotations.values() if any(t[:40] in v for t in tokens)]

    # No exchange beyond the chain's own: every exchange Keycloak made is one the shared cache made, at most one
    # per refresh period (the node controller used the same tokens all along).
    assert exchanged == acquired, (exchanged, acquired)
    assert exchanged <= (ended - started) / (REFRESH_PERIOD - 1) + 1, (exchanged, ended - started)
    # /debug/credentials and doctor show the target: what it holds, the last write, the token's expiry, no error.
    (status,) = debug["token_broker"]
    assert status["target"] == target and status["state"] in ("current", "written") and status["last_write"]
    assert s.format_time(status["token_expires_at"]) == last.data["expires_at"] and status["last_error"] is None
    assert doctor.status == "ok" and doctor.data["last_write"] and doctor.data["token_expires_at"]
    assert not [t for t in tokens if t[:40] in str(debug) or t[:40] in doctor.detail]
    record_property("token_broker", {"lifetime_s": LIFESPAN, "window_s": round(ended - started, 1),
                                     "exchanges": exchanged, "tokens_seen": len(tokens)})
    print("token broker:", {"window_s": round(ended - started, 1), "exchanges": exchanged, "tokens": len(tokens)})


async def test_failing_impersonation_never_writes_a_fallback_and_empties_the_token_once_it_expires(
        broker_keycloak: Keycloak, world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
        kube_api: ApiClient) -> None:
    ns = namespace()
    target = f"{ns}/cloudsigma-token"
    client = f"/{broker_keycloak.realm}/clients/{broker_keycloak.users[CLIENT]}"
    async with broker_ccm(broker_keycloak, kube_apiserver, kube_api, emulator, target,
                          token_broker_create_namespace=True) as ccm:
        first = await wait_for(lambda: with_token(kube_api, target), 30, interval=0.2)
        # Keycloak stops accepting the CCM's client: every later exchange is refused; the chain falls back to the
        # foreign static token and the password for the CloudSigma client.
        _, representation, _ = await broker_keycloak.admin_request("GET", client)
        await broker_keycloak.admin_request("PUT", client, {**representation, "secret": "changed-secret-value-9"})
        try:
            seen: list[Seen] = []
            while time.time() < exp(first.token) + 4:
                await asyncio.sleep(0.5)
                current = await read(kube_api, target)
                assert current is not None
                seen.append(current)
                values = [*current.data.values(), *current.annotations.values()]
                assert not [v for v in values if FOREIGN_TOKEN in v or ALICE_PW in v], current
                assert current.token in (first.token, ""), "a token other than the owner's last valid one"
                if current.token:
                    assert exp(current.token) > current.at, f"expired token held at {current.at:.1f}"
            assert ccm.parts.broker is not None
            for _ in range(2):  # passes after the expiry, impersonation still failing: nothing else is written
                await ccm.parts.broker.sync()
                current = await read(kube_api, target)
                assert current is not None
                seen.append(current)
                values = [*current.data.values(), *current.annotations.values()]
                assert not [v for v in values if FOREIGN_TOKEN in v or ALICE_PW in v], current
                assert current.token == "", "a token written after the owner's last valid one expired"
            await ccm.parts.events.flush()  # what shutdown flushes: the broker's Events are in it
            reasons = {(e["type"], e["reason"]) for e in await events_in(kube_api, ns)}
            failures = metric(ccm, "cloudsigma_ccm_token_broker_failures_total", cluster="test", target=target,
                              reason="invalid_client")
            emptied = metric(ccm, "cloudsigma_ccm_token_broker_writes_total", cluster="test", target=target,
                             state="empty")
        finally:
            await broker_keycloak.admin_request("PUT", client, {**representation, "secret": CLIENT_SECRET})
    kept = [x for x in seen if x.token == first.token and s.LAST_ERROR in x.annotations]
    assert kept, "the last valid token was not kept while impersonation failed"
    assert "invalid_client" in kept[0].annotations[s.LAST_ERROR]
    assert seen[-1].token == "" and seen[-1].data["expires_at"] == ""
    assert ("Warning", "TokenEmptied") in reasons and ("Warning", "TokenRefreshFailing") in reasons
    assert failures >= 1 and emptied == 1


async def test_a_secret_not_managed_by_the_ccm_is_left_alone(
        broker_keycloak: Keycloak, world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
        kube_api: ApiClient) -> None:
    ns = namespace()
    kube = KubeTransport(kube_api)
    await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    await kube.request("POST", f"/api/v1/namespaces/{ns}/secrets", body={
        "metadata": {"name": "cloudsigma-token"}, "stringData": {"access_token": "someone-elses-token"}})
    target = f"{ns}/cloudsigma-token"
    before = await read(kube_api, target)
    async with broker_ccm(broker_keycloak, kube_apiserver, kube_api, emulator, target) as ccm:
        broker = ccm.parts.broker
        assert broker is not None
        await wait_for(lambda: broker.status()[0]["state"] != "pending", 30, interval=0.2)  # its first pass
        for _ in range(2):
            await broker.sync()  # more passes: still one Event, still no write
        await ccm.parts.events.flush()  # what shutdown flushes: the broker's Events are in it
        after = await read(kube_api, target)
        events = await events_in(kube_api, ns)
        state = broker.status()[0]
        doctor = await token_broker_check(KubeTransport(kube_api), parse_target(target))
    assert before is not None and after is not None
    assert after.resource_version == before.resource_version and after.data == {"access_token": "someone-elses-token"}
    assert state["state"] == "not-managed" and state["last_error"]["reason"] == "not_managed"
    assert [(e["reason"], e["count"], e["involvedObject"]["name"]) for e in events] == [
        ("TokenSecretNotManaged", 1, "cloudsigma-token")]
    assert s.MANAGED_BY_LABEL in events[0]["message"]
    assert doctor.status == "fail" and "not managed" in doctor.detail and "someone-elses-token" not in doctor.detail


async def test_a_deleted_secret_comes_back_within_one_refresh_period(
        broker_keycloak: Keycloak, world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
        kube_api: ApiClient, record_property: Any) -> None:
    ns = namespace()
    target = f"{ns}/cloudsigma-token"
    await KubeTransport(kube_api).request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    async with broker_ccm(broker_keycloak, kube_apiserver, kube_api, emulator, target):
        await wait_for(lambda: with_token(kube_api, target), 30, interval=0.2)
        await KubeTransport(kube_api).request("DELETE", f"/api/v1/namespaces/{ns}/secrets/cloudsigma-token")
        deleted = time.time()
        # The next pass is at the refresh (or the check period, if sooner); a few seconds for the write itself.
        back = await wait_for(lambda: with_token(kube_api, target), REFRESH_PERIOD + 5, interval=0.2)
    assert exp(back.token) > back.at
    record_property("secret_back_after_s", round(back.at - deleted, 1))


async def test_two_tenants_of_one_owner_share_the_cached_token(
        broker_keycloak: Keycloak, world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
        kube_apiserver_factory: Any) -> None:
    """Fleet mode: each tenant's broker acts as its owner on the shared services; one exchange serves both."""
    target = f"{namespace()}/cloudsigma-token"
    settings = load_settings(ccm_settings(
        kube_apiserver.admin_kubeconfig, emulator, impersonation_enabled=True, oauth_url=broker_keycloak.issuer,
        client_id=CLIENT, client_secret=CLIENT_SECRET, user_email=ALICE, username=None, password=None,
        token_broker=target, token_broker_create_namespace=True))
    services = build_services(settings, Redactor())
    started = time.time()
    tenants = []
    try:
        for index, server in enumerate((kube_apiserver, kube_apiserver_factory("tenant"))):
            api = await kube_client(server.admin_kubeconfig, setting="kubeconfig", what="tenant kubeconfig")
            identity = TenantIdentity(cluster=f"capi/c{index}", user_email=ALICE.upper(), region="zrh", zone="zrh",
                                      workers=1, name=f"c{index}")
            tenants.append(build_tenant(services, api, identity, metrics=services.metrics.for_cluster(f"c{index}")))
        for parts in tenants:
            assert parts.broker is not None
            await parts.broker.sync()
        seen = []
        for server in (kube_apiserver, kube_apiserver_factory("tenant")):
            api = await api_client_for(server.admin_kubeconfig)
            try:
                seen.append(await read(api, target))
            finally:
                await api.close()
        exchanged = await exchanges_since(broker_keycloak, started)
    finally:
        for parts in tenants:
            await parts.close()
        await services.close()
    assert exchanged == 1
    first, second = seen
    assert first is not None and second is not None and first.token and first.token == second.token
    assert (first.data["cluster_name"], second.data["cluster_name"]) == ("c0", "c1")
    assert first.data["user_email"] == second.data["user_email"] == ALICE
