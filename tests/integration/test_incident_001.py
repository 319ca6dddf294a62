"""Seed 001 as tests: a 403 on a server from an earlier attempt must lose nothing and be diagnosable.

Real kube-apiserver, the emulator with two users, impersonation through the emulator's token exchange.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from kubernetes_asyncio.client import ApiClient

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
    two_users,
)
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for

pytestmark = pytest.mark.usefixtures("clean_nodes")
NAME = "metal-worker-pool-1-hl9tl-qbrcf"
FAST = {"node_monitor_period": "0.3s", "node_deletion_grace_period": "0s", "server_cache_max_age": "0.2s"}


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    two_users(emulator_state)
    emulator_state.add_client(CLIENT_ID, CLIENT_SECRET, may_exchange=True)
    return emulator_state


async def warning(api: ApiClient, node: str, reason: str) -> dict[str, Any] | None:
    found = [e for e in await events_for(api, node) if e["reason"] == reason and e["type"] == "Warning"]
    return found[0] if found else None


async def test_403_on_provider_id_server_deletes_and_modifies_nothing(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    # The old VM of an earlier attempt, owned by somebody else: the impersonated user cannot LIST it.
    old = world.add_server(BOB, NAME, nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, NAME, provider_id=f"cloudsigma://{old['uuid']}", ready=False)
    before = await node_json(kube_api, NAME)
    with structlog.testing.capture_logs() as logs:
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator,
                               **(FAST | impersonation_overrides(emulator))) as ccm:
            event = await wait_for(lambda: warning(kube_api, NAME, "ServerInaccessible"), 15)
            await asyncio.sleep(1.5)  # several lifecycle periods past the (zero) grace period
            assert not ccm.parts.lifecycle.deleted
    after = await node_json(kube_api, NAME)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # not modified
    forbidden = [r for r in world.requests if r.status == 403]
    assert forbidden, "the emulator saw the 403"
    request_id = forbidden[0].request_id
    alice_uuid = world.get_user(ALICE).uuid
    # the request id is in the Event's annotation (and the log), not in its message: repeats stay one Event
    assert event["metadata"]["annotations"][REQUEST_ID_ANNOTATION] in {r.request_id for r in forbidden}
    assert request_id not in event["message"] and old["uuid"] in event["message"]
    assert ALICE in event["message"] and alice_uuid in event["message"]  # email, token sub (= user uuid)
    errors = [e for e in logs if e["event"] == "server_forbidden"]
    assert errors and errors[0]["log_level"] == "error"
    line = errors[0]
    assert line["request_id"] in {r.request_id for r in forbidden}
    assert line["cs_user"] == ALICE and line["token_sub"] == alice_uuid
    assert line["resource"] == old["uuid"] and "LIST" in line["error_message"]
    assert line["credential_provider"] == "keycloak-token-exchange"
    # the token's claims were logged on acquisition, never the token
    acquired = [e for e in logs if e["event"] == "credential_acquired"]
    assert acquired and acquired[0]["requested_subject"] == ALICE and acquired[0]["token_sub"] == alice_uuid


async def test_two_servers_share_the_name_one_inaccessible(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    old = world.add_server(BOB, NAME, nics=[public_dhcp_nic("auto")])
    new = world.add_server(ALICE, NAME, nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, NAME, provider_id=f"cloudsigma://{old['uuid']}")
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, **(FAST | impersonation_overrides(emulator))):
        event = await wait_for(lambda: warning(kube_api, NAME, "ServerInaccessible"), 15)
    message = event["message"]
    assert old["uuid"] in message and new["uuid"] in message
    assert "stale" in message and "delete this Node" in message


async def test_recreated_server_reports_stale_provider_id_and_keeps_ready_node(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    old = world.add_server(ALICE, NAME, nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, NAME, provider_id=f"cloudsigma://{old['uuid']}", ready=True)
    world.remove_server(old["uuid"])
    new = world.add_server(ALICE, NAME, nics=[public_dhcp_nic("auto")])
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator,
                           **(FAST | impersonation_overrides(emulator))) as ccm:
        event = await wait_for(lambda: warning(kube_api, NAME, "ServerNotFound"), 15)
        await asyncio.sleep(1)
        assert not ccm.parts.lifecycle.deleted  # Ready: the lifecycle leaves it alone
    assert old["uuid"] in event["message"] and new["uuid"] in event["message"]
    node = await node_json(kube_api, NAME)
    assert node["spec"]["providerID"] == f"cloudsigma://{old['uuid']}"  # never rewritten


async def test_recreated_server_old_node_deleted_only_when_provably_gone(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    old = world.add_server(ALICE, NAME, nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, NAME, provider_id=f"cloudsigma://{old['uuid']}", ready=False)
    # another node of the cluster, whose server the listing holds: it shows the listing is the cluster's account
    other = world.add_server(ALICE, "metal-worker-pool-1-hl9tl-g2b7h", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, other["name"], provider_id=f"cloudsigma://{other['uuid']}")
    world.remove_server(old["uuid"])
    world.add_server(ALICE, NAME, nics=[public_dhcp_nic("auto")])
    with structlog.testing.capture_logs() as logs:
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator,
                               **(FAST | impersonation_overrides(emulator))) as ccm:
            await wait_for(lambda: ccm.parts.lifecycle.deleted, 15)
    deleted = [e for e in logs if e["event"] == "node_deleted"]
    assert deleted and deleted[0]["status"] == 404 and deleted[0]["error_type"] == "notexist"
    assert deleted[0]["request_id"] and deleted[0]["server_uuid"] == old["uuid"]
    assert deleted[0]["account_confirmed_by"] == other["name"]
