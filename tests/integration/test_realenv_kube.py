"""The real kube-apiserver fixture behaves like a cluster a cloud controller manager talks to."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio.client import ApiClient, CoreV1Api, RbacAuthorizationV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import new_client_from_config_dict

from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import (
    PROVIDED_NODE_IP_ANNOTATION,
    UNINITIALIZED_TAINT_KEY,
    get_node,
    has_uninitialized_taint,
    node_addresses,
    node_ready_status,
    patch_node_status,
    register_node,
    set_ready,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]

UUID = "2f0ae6b6-1b8f-4c51-9d5e-0c1b7a3f6a11"


async def test_register_node_with_taint_and_no_addresses(kube_api: ApiClient) -> None:
    await register_node(kube_api, "node-a", provided_node_ip="10.9.0.7", system_uuid=UUID)

    node = await get_node(kube_api, "node-a")
    assert node is not None
    assert has_uninitialized_taint(node)
    taint = next(t for t in node.spec.taints if t.key == UNINITIALIZED_TAINT_KEY)
    assert (taint.value, taint.effect) == ("true", "NoSchedule")
    assert node_addresses(node) == []
    assert node.spec.provider_id is None
    assert node.status.node_info.system_uuid == UUID
    assert node.metadata.annotations[PROVIDED_NODE_IP_ANNOTATION] == "10.9.0.7"
    assert node_ready_status(node) == "True"
    assert await get_node(kube_api, "no-such-node") is None


async def test_register_without_taint_with_addresses_and_not_ready(kube_api: ApiClient) -> None:
    node = await register_node(
        kube_api,
        "node-b",
        taint=False,
        addresses=[("InternalIP", "10.9.0.8"), ("Hostname", "node-b")],
        ready=None,
        labels={"pool": "blue"},
        provider_id="cloudsigma://" + UUID,
    )
    assert not has_uninitialized_taint(node)
    assert node_addresses(node) == [("InternalIP", "10.9.0.8"), ("Hostname", "node-b")]
    assert node_ready_status(node) == "Unknown"
    assert node.metadata.labels["pool"] == "blue"
    assert node.spec.provider_id == "cloudsigma://" + UUID


async def test_status_addresses_replaced_with_merge_patch(kube_api: ApiClient) -> None:
    await register_node(kube_api, "node-c", addresses=[("InternalIP", "10.9.0.9"), ("Hostname", "node-c")])
    core = CoreV1Api(kube_api)

    # A patch of the main resource ignores status: only the status subresource may change it.
    await core.patch_node("node-c", {"status": {"addresses": [{"type": "InternalIP", "address": "1.1.1.1"}]}})
    node = await get_node(kube_api, "node-c")
    assert node is not None
    assert node_addresses(node) == [("InternalIP", "10.9.0.9"), ("Hostname", "node-c")]

    new = [
        {"type": "InternalIP", "address": "10.9.1.1"},
        {"type": "InternalIP", "address": "10.9.1.2"},
        {"type": "ExternalIP", "address": "185.12.5.6"},
    ]
    await patch_node_status(kube_api, "node-c", {"status": {"addresses": new}})
    node = await get_node(kube_api, "node-c")
    assert node is not None
    # A merge patch replaces the whole list (a strategic merge keyed on "type" would have collapsed
    # the two InternalIPs and kept the Hostname).
    assert node_addresses(node) == [
        ("InternalIP", "10.9.1.1"),
        ("InternalIP", "10.9.1.2"),
        ("ExternalIP", "185.12.5.6"),
    ]
    # The rest of the status is untouched.
    assert node_ready_status(node) == "True"


async def test_set_ready_changes_only_the_ready_condition(kube_api: ApiClient) -> None:
    await register_node(kube_api, "node-d")
    node = await set_ready(kube_api, "node-d", False)
    assert node_ready_status(node) == "False"
    types = sorted(c.type for c in node.status.conditions)
    assert types == ["DiskPressure", "MemoryPressure", "PIDPressure", "Ready"]
    node = await set_ready(kube_api, "node-d", None)
    assert node_ready_status(node) == "Unknown"


async def test_provider_id_is_immutable_once_set(kube_api: ApiClient) -> None:
    await register_node(kube_api, "node-e")
    core = CoreV1Api(kube_api)

    # Unset -> set is what the CCM does at initialisation: allowed.
    await core.patch_node("node-e", {"spec": {"providerID": "cloudsigma://" + UUID}})
    node = await get_node(kube_api, "node-e")
    assert node is not None
    assert node.spec.provider_id == "cloudsigma://" + UUID

    with pytest.raises(ApiException) as excinfo:
        await core.patch_node("node-e", {"spec": {"providerID": "cloudsigma://other"}})
    assert excinfo.value.status == 422
    assert "providerID" in str(excinfo.value.body)

    node = await get_node(kube_api, "node-e")
    assert node is not None
    assert node.spec.provider_id == "cloudsigma://" + UUID


async def test_rbac_denies_unprivileged_identity(kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    await register_node(kube_api, "node-f")
    limited = await api_client_for(kube_apiserver.kubeconfig(user="limited", groups=[]))
    try:
        with pytest.raises(ApiException) as excinfo:
            await CoreV1Api(limited).list_node()
        assert excinfo.value.status == 403
        assert 'User "limited" cannot list' in json.loads(excinfo.value.body or "{}")["message"]

        # Granting the permission through RBAC makes the same identity succeed: it is authenticated
        # as "limited" and authorised by RBAC, not rejected wholesale.
        rbac = RbacAuthorizationV1Api(kube_api)
        role: Any = {
            "metadata": {"name": "test-node-reader"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}],
        }
        binding: Any = {
            "metadata": {"name": "test-node-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test-node-reader"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "limited"}],
        }
        await rbac.create_cluster_role(role)
        await rbac.create_cluster_role_binding(binding)
        try:
            nodes = await wait_for(lambda: CoreV1Api(limited).list_node(), timeout=10)
            assert [n.metadata.name for n in nodes.items] == ["node-f"]
            with pytest.raises(ApiException) as excinfo:
                await CoreV1Api(limited).delete_node("node-f")
            assert excinfo.value.status == 403
        finally:
            await rbac.delete_cluster_role_binding("test-node-reader")
            await rbac.delete_cluster_role("test-node-reader")
    finally:
        await limited.close()


async def test_restart_keeps_nodes_port_and_credentials(kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    created = await register_node(kube_api, "node-g", system_uuid=UUID)
    port, pid = kube_apiserver.port, kube_apiserver.pid

    await kube_apiserver.arestart()

    assert kube_apiserver.port == port
    assert kube_apiserver.pid != pid
    assert kube_apiserver.running
    # The same client (same kubeconfig, same serving CA) works against the restarted server.
    node = await wait_for(lambda: get_node(kube_api, "node-g"), timeout=30)
    assert node is not None
    assert node.metadata.uid == created.metadata.uid
    assert node.status.node_info.system_uuid == UUID
    assert has_uninitialized_taint(node)


async def test_two_independent_clusters(
    kube_apiserver: KubeAPIServer,
    kube_apiserver_factory: Callable[[str], KubeAPIServer],
    kube_api: ApiClient,
) -> None:
    tenant = kube_apiserver_factory("tenant")
    assert tenant.port != kube_apiserver.port
    assert tenant.running
    assert kube_apiserver.running
    tenant_api = await api_client_for(tenant.admin_kubeconfig)
    try:
        await register_node(tenant_api, "tenant-node")
        await register_node(kube_api, "main-node")
        assert await get_node(tenant_api, "main-node") is None
        assert await get_node(kube_api, "tenant-node") is None
        await CoreV1Api(tenant_api).delete_node("tenant-node")

        # TLS verification is on: main's serving CA does not vouch for the tenant's server.
        cross = await api_client_for(kube_apiserver.admin_kubeconfig)
        cross.configuration.host = tenant.url
        try:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await CoreV1Api(cross).list_node()
        finally:
            await cross.close()

        # Each cluster trusts only its own client CA: main's admin certificate is anonymous-rejected
        # by the tenant (401), even with the tenant's serving CA trusted.
        config = yaml.safe_load(kube_apiserver.admin_kubeconfig.read_text())
        config["clusters"][0]["cluster"] = {
            "server": tenant.url,
            "certificate-authority-data": base64.b64encode(tenant.serving_ca_pem).decode(),
        }
        cross = await new_client_from_config_dict(config)
        try:
            with pytest.raises(ApiException) as excinfo:
                await CoreV1Api(cross).list_node()
            assert excinfo.value.status == 401
        finally:
            await cross.close()
    finally:
        await tenant_api.close()


async def test_wait_for_times_out_with_last_value() -> None:
    with pytest.raises(TimeoutError, match="last value: 0"):
        await wait_for(lambda: 0, timeout=0.3, message="zero")
