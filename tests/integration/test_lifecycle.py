"""Node lifecycle against the real kube-apiserver: shutdown taint, and deletion only on proof."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from kubernetes_asyncio.client import ApiClient

from ccm.kube.errors import KubeNotFound
from ccm.kube.events import REQUEST_ID_ANNOTATION
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import (
    ALICE,
    BOB,
    CLIENT_ID,
    CLIENT_SECRET,
    events_for,
    impersonation_overrides,
    node_json,
    running_ccm,
    taint_keys,
    two_users,
)
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, set_ready, wait_for

SHUTDOWN = "node.cloudprovider.kubernetes.io/shutdown"
pytestmark = pytest.mark.usefixtures("clean_nodes")
FAST = {"node_monitor_period": "0.3s", "node_deletion_grace_period": "0s", "server_cache_max_age": "0.2s",
        "api_retry_attempts": 2, "http_timeout": "1s"}


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    two_users(emulator_state)
    emulator_state.add_client(CLIENT_ID, CLIENT_SECRET, may_exchange=True)
    return emulator_state


async def exists(api: ApiClient, name: str) -> bool:
    try:
        await node_json(api, name)
        return True
    except KubeNotFound:
        return False


async def test_shutdown_taint_added_and_removed(world: EmulatorState, emulator: EmulatorServer,
                                                kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "sleepy", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "sleepy", provider_id=f"cloudsigma://{server['uuid']}", taint=False)
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, **FAST):
        world.set_status(server["uuid"], "stopped")
        await set_ready(kube_api, "sleepy", False)

        async def tainted() -> bool:
            return SHUTDOWN in taint_keys(await node_json(kube_api, "sleepy"))

        await wait_for(tainted, 10)
        world.set_status(server["uuid"], "running")
        await set_ready(kube_api, "sleepy", True)

        async def untainted() -> bool:
            return SHUTDOWN not in taint_keys(await node_json(kube_api, "sleepy"))

        await wait_for(untainted, 10)
    assert await exists(kube_api, "sleepy")  # a stopped server is not a deleted one


async def sibling(world: EmulatorState, api: ApiClient, name: str = "sibling") -> dict[str, Any]:
    """A Ready node whose server is in the listing: what shows a listing is the cluster's account."""
    server = world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
    await register_node(api, name, provider_id=f"cloudsigma://{server['uuid']}", taint=False)
    return server


async def test_deleted_after_grace_on_fresh_404(world: EmulatorState, emulator: EmulatorServer,
                                                kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    # The genuine case: the server was deleted in the right account (a sibling's server is still listed).
    await sibling(world, kube_api)
    server = world.add_server(ALICE, "gone", nics=[public_dhcp_nic("auto")])
    registered = await register_node(kube_api, "gone", provider_id=f"cloudsigma://{server['uuid']}", taint=False,
                                     ready=False)
    world.remove_server(server["uuid"])
    with structlog.testing.capture_logs() as logs:
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, **FAST) as ccm:
            await wait_for(lambda: ccm.parts.lifecycle.deleted, 15)
    assert not await exists(kube_api, "gone")
    assert await exists(kube_api, "sibling")
    events = [e for e in await events_for(kube_api, "gone", uid=registered.metadata.uid)
              if e["reason"] == "DeletingNode"]
    assert events and "404" in events[0]["message"]
    not_found = [r for r in world.requests_to("GET /servers/{uuid}/") if r.status == 404]
    assert not_found
    # the evidence: CloudSigma's notexist with its request id, and the listing that confirmed the account
    deleted = [e for e in logs if e["event"] == "node_deleted"]
    assert deleted and deleted[0]["status"] == 404 and deleted[0]["error_type"] == "notexist"
    assert deleted[0]["request_id"] in {r.request_id for r in not_found}
    assert deleted[0]["account_confirmed_by"] == "sibling" and deleted[0]["listing_request_ids"]
    assert events[0]["metadata"]["annotations"][REQUEST_ID_ANNOTATION] == deleted[0]["request_id"]
    assert deleted[0]["request_id"] not in events[0]["message"]


async def test_no_deletion_while_grace_period_runs(world: EmulatorState, emulator: EmulatorServer,
                                                   kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "patient", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "patient", provider_id=f"cloudsigma://{server['uuid']}", taint=False, ready=False)
    world.remove_server(server["uuid"])
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator,
                           **(FAST | {"node_deletion_grace_period": "1h"})):
        await asyncio.sleep(2)
    assert await exists(kube_api, "patient")


# Each fault is injected on the direct GET of the node's server only: the listing stays healthy (and holds the
# sibling's server, so the account is confirmed) and really lacks the server. So the direct GET's answer is the
# one thing left to decide on, and none of these answers may count as proof. (A proxy's HTML 404 and another
# location's genuine 404s: tests/reliability/test_cloud_faults.py::test_wrong_endpoint_deletes_nothing.)


def _forbidden(world: EmulatorState, uuid: str) -> None:
    world.transfer_server(uuid, BOB)  # absent from alice's listing; the direct GET answers 403


def _rate_limited(world: EmulatorState, uuid: str) -> None:
    world.remove_server(uuid)
    world.rate_limit_next(None, retry_after=1, path_prefix=f"/servers/{uuid}/", method="GET")


def _server_errors(world: EmulatorState, uuid: str) -> None:
    world.remove_server(uuid)
    world.fail_next(None, status=503, path_prefix=f"/servers/{uuid}/", method="GET")


def _timeouts(world: EmulatorState, uuid: str) -> None:
    world.remove_server(uuid)
    world.hang_next(None, path_prefix=f"/servers/{uuid}/", method="GET")


def _unauthorized(world: EmulatorState, uuid: str) -> None:
    world.remove_server(uuid)
    world.fail_next(None, status=401, path_prefix=f"/servers/{uuid}/", method="GET")


@pytest.mark.parametrize(("fault", "answer"),
                         [(_forbidden, 403), (_rate_limited, 429), (_server_errors, 503), (_timeouts, None),
                          (_unauthorized, 401)],
                         ids=["403", "429", "5xx", "timeout", "401"])
async def test_never_deleted_without_proof(world: EmulatorState, emulator: EmulatorServer,
                                           kube_apiserver: KubeAPIServer, kube_api: ApiClient, fault: Any,
                                           answer: int | None) -> None:
    await sibling(world, kube_api)
    server = world.add_server(ALICE, "keep-me", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "keep-me", provider_id=f"cloudsigma://{server['uuid']}", taint=False, ready=False)
    fault(world, server["uuid"])

    with structlog.testing.capture_logs() as logs:
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, **FAST) as ccm:

            def decided() -> list[dict[str, Any]]:
                # the lifecycle's own direct GET failed with the injected answer, and it decided on that: twice
                return [e for e in logs if e["event"] == "lifecycle_cloud_unavailable" and e.get("node") == "keep-me"
                        and e.get("path") == f"/servers/{server['uuid']}/" and e.get("status") == answer]

            await wait_for(lambda: len(decided()) >= 2 or ccm.parts.lifecycle.deleted, 20,
                           message="two lifecycle decisions on the direct GET")
            assert not ccm.parts.lifecycle.deleted
    world.clear_faults()
    listings = world.requests_to("GET /servers/detail/")
    assert listings and all(r.status == 200 for r in listings), "the listing must stay healthy"
    assert await exists(kube_api, "keep-me")


async def test_partial_listing_is_no_proof(world: EmulatorState, emulator: EmulatorServer,
                                           kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    # A node without providerID can only be proven gone by complete listings; a page fails every time.
    for i in range(25):
        world.add_server(ALICE, f"other-{i}", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "no-pid", taint=False, ready=False)
    world.fail_page(10, status=500, n=None)
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, api_page_size=10, **FAST) as ccm:
        await asyncio.sleep(3)
        assert not ccm.parts.lifecycle.deleted
    assert await exists(kube_api, "no-pid")


async def test_absent_from_two_complete_listings_is_proof(world: EmulatorState, emulator: EmulatorServer,
                                                          kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    sibling = world.add_server(ALICE, "sibling", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "sibling", provider_id=f"cloudsigma://{sibling['uuid']}", taint=False)
    await register_node(kube_api, "orphan", taint=False, ready=False)
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, **FAST) as ccm:
        await wait_for(lambda: ccm.parts.lifecycle.deleted, 15)
    assert not await exists(kube_api, "orphan")
    assert await exists(kube_api, "sibling")


async def test_a_listing_of_the_wrong_account_is_no_proof(world: EmulatorState, emulator: EmulatorServer,
                                                          kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    # The cluster's servers belong to bob, but the CCM is (mis)configured as alice: her complete listing lacks
    # every server of the cluster. Nothing in it proves the orphan's server is gone rather than elsewhere.
    sibling = world.add_server(BOB, "sibling", nics=[public_dhcp_nic("auto")])
    world.add_server(BOB, "orphan", nics=[public_dhcp_nic("auto")])
    world.add_server(ALICE, "alices-own", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "sibling", provider_id=f"cloudsigma://{sibling['uuid']}", taint=False)
    await register_node(kube_api, "orphan", taint=False, ready=False)
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, **FAST) as ccm:
        await asyncio.sleep(3)
        assert not ccm.parts.lifecycle.deleted
    assert await exists(kube_api, "orphan")


async def test_404_through_a_fallback_credential_is_no_proof(world: EmulatorState, emulator: EmulatorServer,
                                                             kube_apiserver: KubeAPIServer,
                                                             kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "fallback", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "fallback", provider_id=f"cloudsigma://{server['uuid']}", taint=False, ready=False)
    world.remove_server(server["uuid"])
    # impersonation is preferred but refused (wrong client secret): the password fallback answers 404
    overrides = FAST | impersonation_overrides(emulator, client_secret="wrong-secret-value")
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, **overrides) as ccm:
        await asyncio.sleep(3)
        assert not ccm.parts.lifecycle.deleted
        assert world.counters["GET /servers/{uuid}/"] >= 1  # it did look, through the fallback
    assert await exists(kube_api, "fallback")


async def test_deletion_can_be_switched_off(world: EmulatorState, emulator: EmulatorServer,
                                            kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "kept", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "kept", provider_id=f"cloudsigma://{server['uuid']}", taint=False, ready=False)
    world.remove_server(server["uuid"])
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, node_deletion_enabled=False, **FAST):
        await asyncio.sleep(2)
    assert await exists(kube_api, "kept")


async def test_healthy_cluster_costs_no_lifecycle_calls(world: EmulatorState, emulator: EmulatorServer,
                                                        kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    server = world.add_server(ALICE, "healthy", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "healthy", provider_id=f"cloudsigma://{server['uuid']}", taint=False)
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, node_status_update_frequency="1h",
                           **FAST):
        await asyncio.sleep(1)
        before = sum(world.counters[k] for k in ("GET /servers/detail/", "GET /servers/{uuid}/"))
        await asyncio.sleep(2)  # ~6 monitor periods
        after = sum(world.counters[k] for k in ("GET /servers/detail/", "GET /servers/{uuid}/"))
    assert after == before


async def test_one_confirming_listing_serves_every_decision_of_a_pass(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    # Five NotReady nodes whose servers the configured location does not have (another location's API: genuine
    # 404 notexist on every direct GET, and a listing that holds none of the cluster's servers). Each pass must
    # look at each node (one direct GET each) but share one confirming listing between them.
    names = [f"lost-{i}" for i in range(5)]
    for name in names:
        server = world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
        await register_node(kube_api, name, provider_id=f"cloudsigma://{server['uuid']}", taint=False, ready=False)
    target = world.another_location("fra")
    target.add_server(ALICE, "fra-vm", nics=[public_dhcp_nic("auto")])
    async with EmulatorServer(target) as serving, running_ccm(kube_apiserver.admin_kubeconfig, serving, region="fra",
                                                              **FAST) as ccm:
        await wait_for(lambda: target.counters["GET /servers/{uuid}/"] >= 5 * 12, 30, message="twelve passes")
        assert not ccm.parts.lifecycle.deleted
    gets = target.counters["GET /servers/{uuid}/"]
    listings = target.counters["GET /servers/detail/"]
    # Each pass GETs every node once (so do the node controller's retries, with backoff: 1, 2, 4 s — a few
    # listings of their own, each shared by the five nodes).
    passes = gets / len(names)
    assert listings <= passes + 5, f"{listings} listings in at most {passes:.0f} passes ({gets} direct GETs)"
    for name in names:
        assert await exists(kube_api, name)
