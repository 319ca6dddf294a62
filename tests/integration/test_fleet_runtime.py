"""Tenant runtimes on a fleet replica's shared services, in-process, against two real tenant kube-apiservers and the
CloudSigma emulator's Keycloak-style token exchange: one token for two clusters of one owner, a re-key that keeps
what another tenant still uses, and nothing of a stopped tenant left behind (its token, its metric series)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ccm.clusters.tenants import TenantSpec
from ccm.config import load_settings
from ccm.fencing import Fence
from ccm.fleet.runtime import TenantRuntime, tenant_connections
from ccm.fleet.shared import CredentialUsers, fleet_services
from ccm.logging import Redactor
from ccm.metrics import Metrics
from credentials.cache import CacheKey
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, BOB, CLIENT_ID, CLIENT_SECRET, two_users
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import delete_all_nodes, register_node, wait_for
from tests.reliability.support import LogSink, initialized

pytestmark = pytest.mark.integration


def fleet_settings(emulator: EmulatorServer, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "mode": "fleet", "impersonation_enabled": True, "oauth_url": emulator.realm_url(), "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "impersonation_api_url": emulator.api_url, "api_url": emulator.api_url,
        "metrics_bind_address": "", "server_cache_max_age": "1s", "node_monitor_period": "1s", "http_timeout": "3s",
    }
    values.update(overrides)
    return values


def spec(server: KubeAPIServer, name: str, user: str, *, region: str = "zrh") -> TenantSpec:
    data = server.kubeconfig(f"fleet-{name}", groups=["system:masters"]).read_bytes()
    return TenantSpec(namespace="team", name=name, uid=f"uid-{name}", cluster_name=name, user_email=user,
                      region=region, kubeconfig=data, kubeconfig_sha256=name, api_server=server.url)


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    two_users(emulator_state)
    emulator_state.add_client(CLIENT_ID, CLIENT_SECRET, may_exchange=True)
    return emulator_state


@pytest.fixture
async def tenant_servers(kube_apiserver: KubeAPIServer,
                         kube_apiserver_factory: Callable[..., KubeAPIServer]) -> list[KubeAPIServer]:
    servers = [kube_apiserver, kube_apiserver_factory("tenant")]
    for server in servers:
        api = await api_client_for(server.admin_kubeconfig)
        try:
            await delete_all_nodes(api)
        finally:
            await api.close()
    return servers


async def test_two_clusters_of_one_owner_share_a_token_and_a_stopped_tenant_leaves_nothing_behind(
        world: EmulatorState, emulator: EmulatorServer, tenant_servers: list[KubeAPIServer]) -> None:
    settings = load_settings(fleet_settings(emulator))
    for name, owner in (("rt-one", ALICE), ("rt-two", ALICE), ("rt-two-bob", BOB)):
        world.add_server(owner, name, nics=[public_dhcp_nic("auto")])
    redactor = Redactor()
    metrics = Metrics()
    sink = LogSink(redactor).__enter__()  # the production log pipeline (context variables merged), into memory
    services = fleet_services(settings, redactor, metrics)
    credentials = CredentialUsers(services)
    one = spec(tenant_servers[0], "one", ALICE)
    two = spec(tenant_servers[1], "two", ALICE)
    runtimes = [TenantRuntime(s, services, credentials=credentials, fence=_open_fence(),
                              metrics=metrics.for_cluster(s.key), replica="r1", fleet="test") for s in (one, two)]
    apis = [await api_client_for(s.admin_kubeconfig) for s in tenant_servers]
    try:
        for runtime in runtimes:
            runtime.start()
        await register_node(apis[0], "rt-one")
        await register_node(apis[1], "rt-two")
        for api, name in zip(apis, ("rt-one", "rt-two"), strict=True):
            await wait_for(lambda api=api, name=name: initialized(api, name), 20, message=f"{name} initialized")
        # Each tenant's client holds a bounded pool: its workers, its watches and one for Events.
        for runtime in runtimes:
            assert runtime.parts is not None
            assert runtime.parts.tenant.rest_client.pool_manager.connector.limit == tenant_connections(settings)
        # One owner in one region: one token exchange for both clusters.
        assert world.counters["token:token-exchange"] == 1
        alice = CacheKey.of(ALICE, "zrh", "keycloak-token-exchange")
        assert services.chain.cache.peek(alice) is not None
        text = metrics.render().decode()
        assert 'cluster="team/one"' in text and 'cluster="team/two"' in text

        # Re-key tenant two to bob: alice's token stays (tenant one uses it), bob's is acquired.
        runtimes[1].update(spec(tenant_servers[1], "two", BOB))
        await register_node(apis[1], "rt-two-bob")
        await wait_for(lambda: initialized(apis[1], "rt-two-bob"), 20, message="rt-two-bob initialized as bob")
        assert services.chain.cache.peek(alice) is not None
        assert services.chain.cache.peek(CacheKey.of(BOB, "zrh", "keycloak-token-exchange")) is not None

        # Tenant one stops: its token (nobody else uses alice's any more) and its metric series are gone.
        await runtimes[0].stop(1.0)
        runtimes[0].metrics.remove()
        credentials.release(one.key)
        assert services.chain.cache.peek(alice) is None
        text = metrics.render().decode()
        assert 'cluster="team/one"' not in text and 'cluster="team/two"' in text
        status = runtimes[1].status()
        assert status["state"] == "running" and status["nodes"] == 2 and status["uninitialized"] == 0
        assert status["credentials"]["state"] == "ok" and status["credentials"]["user"] == BOB
    finally:
        for runtime in runtimes:
            await runtime.stop(1.0)
        await services.close()
        for api in apis:
            await api.close()
        sink.__exit__()
    # Every line a tenant's tasks log carries its cluster (bound once in the runtime's task, inherited).
    for event in ("tenant_started", "nodes_listed", "initial_node_sync_done", "node_reconciled"):
        lines = sink.named(event)
        assert lines and all(line.get("cluster") in ("team/one", "team/two") for line in lines), (event, lines)
    assert {line["cluster"] for line in sink.named("nodes_listed")} == {"team/one", "team/two"}


def _open_fence() -> Fence:
    fence = Fence("test")
    fence.grant(float("inf"))
    return fence
