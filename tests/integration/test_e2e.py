"""End to end: the built ``cloudsigma-ccm`` as a subprocess, configured only by env vars as a Deployment is,
under an identity holding only the tenant RBAC from ``deploy/tenant``, electing itself leader with a Lease as
the ServiceAccount holding only the management RBAC from ``deploy/overlays/example-tenant``, impersonating the user
through a token from the real Keycloak's exchange, against the CloudSigma emulator trusting that Keycloak's keys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import ApiClient

from ccm.kube.transport import KubeTransport
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import addresses, node_json, taint_keys
from tests.realenv.apply import applied
from tests.realenv.keycloak import Keycloak
from tests.realenv.keycloak_fixtures import ALICE
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.kustomize import render
from tests.realenv.nodes import register_node, wait_for

ROOT = Path(__file__).resolve().parents[2]
UNINIT = "node.cloudprovider.kubernetes.io/uninitialized"
MANAGEMENT_NAMESPACE = "cloudsigma-example-3415fbd3"  # deploy/overlays/example-tenant
SERVICE_ACCOUNT = "cloudsigma-ccm"
LEASE = "cloudsigma-ccm"
pytestmark = pytest.mark.usefixtures("clean_nodes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ccm_binary() -> str:
    found = shutil.which("cloudsigma-ccm", path=str(Path(sys.executable).parent))
    assert found, "the console script cloudsigma-ccm is not installed in this environment"
    return found


@pytest.fixture
async def tenant_rbac(kube_api: ApiClient) -> AsyncIterator[None]:
    """The tenant RBAC from deploy/tenant, applied for real, removed afterwards."""
    async with applied(KubeTransport(kube_api), render(ROOT / "deploy" / "tenant")):
        yield


@pytest.fixture
async def management_rbac(kube_api: ApiClient, kube_apiserver: KubeAPIServer) -> AsyncIterator[Path]:
    """The ServiceAccount, Role and RoleBinding of deploy/overlays/example-tenant applied for real (the same API
    server plays the management cluster); yields a kubeconfig carrying that ServiceAccount's identity."""
    kube = KubeTransport(kube_api)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MANAGEMENT_NAMESPACE}}
    with contextlib.suppress(Exception):
        await kube.request("POST", "/api/v1/namespaces", body=namespace)
    lease = f"/apis/coordination.k8s.io/v1/namespaces/{MANAGEMENT_NAMESPACE}/leases/{LEASE}"
    with contextlib.suppress(Exception):
        await kube.request("DELETE", lease)
    objects = [o for o in render(ROOT / "deploy" / "overlays" / "example-tenant")
               if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    async with applied(kube, objects):
        yield kube_apiserver.kubeconfig(
            f"system:serviceaccount:{MANAGEMENT_NAMESPACE}:{SERVICE_ACCOUNT}",
            ["system:serviceaccounts", f"system:serviceaccounts:{MANAGEMENT_NAMESPACE}"])
        with contextlib.suppress(Exception):
            await kube.request("DELETE", lease)


@pytest.fixture
def e2e_world(emulator_state: EmulatorState, keycloak: Keycloak) -> EmulatorState:
    emulator_state.add_user(ALICE, password="not-used-by-the-ccm")
    emulator_state.add_user("bob@example.com", password="bob-not-used")
    emulator_state.jwks_url = keycloak.jwks_url
    return emulator_state


def ccm_env(kubeconfig: Path, keycloak: Keycloak, emulator: EmulatorServer, metrics_port: int,
            **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSIGMA_") and k != "KUBECONFIG"}
    env.update({
        "CLOUDSIGMA_IMPERSONATION_ENABLED": "true",
        "CLOUDSIGMA_OAUTH_URL": keycloak.issuer,
        "CLOUDSIGMA_CLIENT_ID": "cloudsigma-ccm",
        "CLOUDSIGMA_CLIENT_SECRET": keycloak.client_secret,
        "CLOUDSIGMA_TOKEN_AUDIENCE": "cloudsigma-api",
        "CLOUDSIGMA_USER_EMAIL": ALICE,
        "CLOUDSIGMA_REGION": "zrh",
        "CLOUDSIGMA_IMPERSONATION_API_URL": emulator.api_url,
        "CLOUDSIGMA_API_URL": emulator.api_url,
        "KUBECONFIG": str(kubeconfig),
        "CLOUDSIGMA_LEADER_ELECT": "false",
        "CLOUDSIGMA_METRICS_BIND_ADDRESS": f"127.0.0.1:{metrics_port}",
        "CLOUDSIGMA_LOG_FORMAT": "json",
        "CLOUDSIGMA_NODE_DELETION_ENABLED": "true",
    })
    env.update(extra)
    return env


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
        return resp.status, await resp.text()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_subprocess_initializes_node_through_real_keycloak_with_tenant_rbac_only(
        e2e_world: EmulatorState, emulator: EmulatorServer, keycloak: Keycloak, kube_apiserver: KubeAPIServer,
        kube_api: ApiClient, tenant_rbac: None, management_rbac: Path, tmp_path: Path) -> None:
    server = e2e_world.add_server(ALICE, "e2e-worker", cpu=2000, smp=1, nics=[public_dhcp_nic("94.26.101.200")])
    await register_node(kube_api, "e2e-worker")
    port = free_port()
    kubeconfig = kube_apiserver.kubeconfig("cloudsigma-ccm", [])
    log_path = tmp_path / "ccm.log"
    admin = KubeTransport(kube_api)
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{MANAGEMENT_NAMESPACE}/leases/{LEASE}"
    # Leader election as the Deployment does it: in-cluster identity replaced by the ServiceAccount's kubeconfig.
    env = ccm_env(kubeconfig, keycloak, emulator, port, CLOUDSIGMA_LEADER_ELECT="true",
                  CLOUDSIGMA_LEADER_ELECT_KUBECONFIG=str(management_rbac), POD_NAMESPACE=MANAGEMENT_NAMESPACE,
                  CLOUDSIGMA_LEADER_ELECT_IDENTITY="e2e-pod_1")
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(ccm_binary(), env=env, stdout=log_file, stderr=log_file)
        try:
            async def initialized() -> dict[str, Any] | None:
                node = await node_json(kube_api, "e2e-worker")
                return node if UNINIT not in taint_keys(node) else None

            node = await wait_for(initialized, 60)
            status, _ready = await wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz"), 10)
            assert status == 200
            _, metrics = await http_get(f"http://127.0.0.1:{port}/metrics")
            held = await admin.request("GET", lease_path)
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = await asyncio.wait_for(proc.wait(), 30)
            stop_seconds = time.monotonic() - started
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    logs = log_path.read_text()
    assert code == 0, logs[-3000:]
    assert stop_seconds < 25
    # It led with the Lease the management Role allows (created, renewed) and gave it up on SIGTERM.
    assert held["spec"]["holderIdentity"] == "e2e-pod_1"
    assert metric(metrics, "cloudsigma_ccm_leader") == 1
    assert (await admin.request("GET", lease_path))["spec"].get("holderIdentity", "") == ""
    assert '"event": "leader_released"' in logs
    assert node["spec"]["providerID"] == f"cloudsigma://{server['uuid']}"
    assert ("ExternalIP", "94.26.101.200") in addresses(node)
    # the emulator served the calls to a bearer token minted by the real Keycloak for alice
    bearer = [r for r in e2e_world.requests if r.auth_kind == "bearer" and r.path.startswith("/api/2.0/servers")]
    assert bearer and all(r.user == ALICE for r in bearer)
    assert all(r.token_azp == "cloudsigma-ccm" for r in bearer)
    assert metric(metrics, "cloudsigma_ccm_token_acquisitions_total", provider="keycloak-token-exchange",
                  result="success") >= 1
    assert metric(metrics, "cloudsigma_api_requests_total", code="200") >= 1
    assert metric(metrics, "cloudsigma_ccm_reconciles_total", controller="node") >= 1
    assert '"event": "credential_acquired"' in logs and '"requested_subject": "alice@example.com"' in logs
    assert keycloak.client_secret not in logs
    assert "eyJ" not in logs  # no JWT, whole or in part


async def test_tenant_identity_cannot_do_what_it_must_not(kube_apiserver: KubeAPIServer, tenant_rbac: None) -> None:
    from tests.realenv.kube_fixtures import api_client_for

    api = await api_client_for(kube_apiserver.kubeconfig("cloudsigma-ccm", []))
    kube = KubeTransport(api)
    try:
        async def allowed(verb: str, resource: str, sub: str = "") -> bool:
            review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                      "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "subresource": sub}}}
            answer = await kube.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
            return bool(answer["status"].get("allowed"))

        assert await allowed("patch", "nodes", "status")
        assert await allowed("watch", "nodes")
        assert not await allowed("get", "secrets")
        assert not await allowed("delete", "pods")
        assert not await allowed("create", "nodes")
    finally:
        await api.close()
