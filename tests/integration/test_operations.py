"""Day two: leader election between two daemon processes, probes, metrics and ``doctor``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubernetes_asyncio.client import ApiClient

from ccm.health import HealthState, create_app
from ccm.kube.permissions import TENANT, needed, rbac_rules
from ccm.kube.transport import KubeTransport
from ccm.metrics import Metrics
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, ALICE_PW, CLIENT_ID, CLIENT_SECRET, node_json, taint_keys, two_users
from tests.integration.test_e2e import ccm_binary, free_port, http_get, metric
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for
from tests.realenv.processes import stop_process

UNINIT = "node.cloudprovider.kubernetes.io/uninitialized"
pytestmark = pytest.mark.usefixtures("clean_nodes")


def base_env(kubeconfig: Path, emulator: EmulatorServer, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSIGMA_") and k != "KUBECONFIG"}
    env.update({
        "CLOUDSIGMA_REGION": "zrh", "CLOUDSIGMA_USERNAME": ALICE, "CLOUDSIGMA_PASSWORD": ALICE_PW,
        "CLOUDSIGMA_API_URL": emulator.api_url, "CLOUDSIGMA_KUBECONFIG": str(kubeconfig),
        "CLOUDSIGMA_METRICS_BIND_ADDRESS": f"127.0.0.1:{port}", "CLOUDSIGMA_LOG_FORMAT": "json",
        "CLOUDSIGMA_SERVER_CACHE_MAX_AGE": "1s",
    })
    env.update(extra)
    return env


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    two_users(emulator_state)
    emulator_state.add_client(CLIENT_ID, CLIENT_SECRET, may_exchange=True)
    return emulator_state


class Daemon:
    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        self.env, self.log, self.port = env, log, port
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        handle = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(ccm_binary(), env=self.env, stdout=handle, stderr=handle)
        handle.close()

    async def metrics(self) -> str:
        return (await http_get(f"http://127.0.0.1:{self.port}/metrics"))[1]

    async def stop(self) -> int | None:
        return await stop_process(self.proc)


@pytest.fixture
async def daemons() -> AsyncIterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        await daemon.stop()


async def test_one_leader_reconciles_and_hands_over(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient,
        kube_apiserver_factory: Callable[[str], KubeAPIServer], daemons: list[Daemon], tmp_path: Path) -> None:
    management = kube_apiserver_factory("management")
    for i in range(6):
        world.add_server(ALICE, f"ha-{i}", nics=[public_dhcp_nic("auto")])
    lease = {"CLOUDSIGMA_LEADER_ELECT": "true", "CLOUDSIGMA_LEADER_ELECT_KUBECONFIG": str(management.admin_kubeconfig),
             "CLOUDSIGMA_LEADER_ELECT_RESOURCE_NAMESPACE": "default",
             "CLOUDSIGMA_LEADER_ELECT_RESOURCE_NAME": "ccm-ha-test",
             "CLOUDSIGMA_LEADER_ELECT_LEASE_DURATION": "4s", "CLOUDSIGMA_LEADER_ELECT_RENEW_DEADLINE": "3s",
             "CLOUDSIGMA_LEADER_ELECT_RETRY_PERIOD": "1s"}
    for n in range(2):
        port = free_port()
        env = base_env(kube_apiserver.admin_kubeconfig, emulator, port, CLOUDSIGMA_LEADER_ELECT_IDENTITY=f"replica-{n}",
                       **lease)
        daemon = Daemon(env, tmp_path / f"d{n}.log", port)
        await daemon.start()
        daemons.append(daemon)
    for i in range(3):
        await register_node(kube_api, f"ha-{i}")

    async def one_leader() -> Daemon | None:
        values = [metric(await d.metrics(), "cloudsigma_ccm_leader") for d in daemons]
        return daemons[values.index(1.0)] if sorted(values) == [0.0, 1.0] else None

    leader = await wait_for(one_leader, 30)
    follower = next(d for d in daemons if d is not leader)

    async def all_initialized(names: list[str]) -> bool:
        nodes = [await node_json(kube_api, n) for n in names]
        return all(UNINIT not in taint_keys(n) for n in nodes)

    await wait_for(lambda: all_initialized([f"ha-{i}" for i in range(3)]), 30)
    assert metric(await leader.metrics(), "cloudsigma_ccm_reconciles_total") > 0
    assert metric(await follower.metrics(), "cloudsigma_ccm_reconciles_total") == 0  # only the leader works
    _, ready = await http_get(f"http://127.0.0.1:{follower.port}/readyz")
    assert "standby" in ready

    assert leader.proc is not None
    leader.proc.kill()  # no goodbye: the lease must expire
    await leader.proc.wait()
    started = asyncio.get_running_loop().time()
    for i in range(3, 6):
        await register_node(kube_api, f"ha-{i}")

    async def follower_leads() -> bool:
        return metric(await follower.metrics(), "cloudsigma_ccm_leader") == 1.0

    await wait_for(follower_leads, 20)
    handover = asyncio.get_running_loop().time() - started
    await wait_for(lambda: all_initialized([f"ha-{i}" for i in range(6)]), 30)
    assert handover < 4 + 3, f"handover took {handover:.1f}s"

    # Losing the lease (management API gone) stops the leader with a non-zero exit for a restart.
    management.stop_process()
    try:
        assert follower.proc is not None
        code = await asyncio.wait_for(follower.proc.wait(), 30)
    finally:
        management.start()
    assert code != 0
    assert "leader_lost" in (tmp_path / "d1.log").read_text() + (tmp_path / "d0.log").read_text()


async def test_readyz_flips_after_initial_sync_and_healthz_tracks_the_watch() -> None:
    state = HealthState(leading=True, last_watch_activity=lambda: 0.0, watch_stale_after=10**9)
    async with TestClient(TestServer(create_app(state, Metrics()))) as client:
        assert (await client.get("/readyz")).status == 503
        state.synced = True
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/healthz")).status == 200
        state.watch_stale_after = 0.0
        assert (await client.get("/healthz")).status == 503
        state.leading = False
        assert (await client.get("/readyz")).status == 200
        body = await (await client.get("/metrics")).text()
        assert "node_controller_cloud_provider_taint_removal_delay_seconds_bucket" in body


async def test_metrics_move_during_a_reconcile(world: EmulatorState, emulator: EmulatorServer,
                                               kube_apiserver: KubeAPIServer, kube_api: ApiClient,
                                               daemons: list[Daemon], tmp_path: Path) -> None:
    world.add_server(ALICE, "counted", nics=[public_dhcp_nic("auto")])
    port = free_port()
    daemon = Daemon(base_env(kube_apiserver.admin_kubeconfig, emulator, port, CLOUDSIGMA_LEADER_ELECT="false"),
                    tmp_path / "d.log", port)
    await daemon.start()
    daemons.append(daemon)
    seen: list[int] = []

    async def ready() -> bool:
        status, _ = await http_get(f"http://127.0.0.1:{port}/readyz")
        seen.append(status)
        return status == 200

    await wait_for(ready, 20)  # 503 until the initial node list is synced, then 200
    assert set(seen) <= {503, 200}
    before = await daemon.metrics()
    await register_node(kube_api, "counted")

    async def moved() -> str | None:
        text = await daemon.metrics()
        return text if metric(text, "node_controller_cloud_provider_taint_removal_delay_seconds_count") >= 1 else None

    after = await wait_for(moved, 30)
    for name, labels in [("cloudsigma_ccm_reconciles_total", {"controller": "node"}),
                         ("cloudsigma_ccm_kubernetes_writes_total", {"resource": "nodes/status"}),
                         ("cloudsigma_api_requests_total", {"code": "200"}),
                         ("node_controller_initial_node_sync_delay_seconds_count", {})]:
        assert metric(after, name, **labels) > metric(before, name, **labels), name
    assert await daemon.stop() == 0


async def test_doctor_reports_each_problem_in_one_line(world: EmulatorState, emulator: EmulatorServer,
                                                       kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    world.add_server(ALICE, "known", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "known")
    await register_node(kube_api, "ghost")
    kube = KubeTransport(kube_api)
    # an identity granted everything the CCM needs (ccm/kube/permissions.py) except patch nodes/status
    granted = [p for p in needed(TENANT, deletion_enabled=False) if p.label != "patch nodes/status"]
    assert len(granted) == len(needed(TENANT, deletion_enabled=False)) - 1
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "doctor-partial"},
            "rules": rbac_rules(granted)}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "doctor-partial"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "doctor-partial"},
               "subjects": [{"kind": "User", "name": "doctor-user", "apiGroup": "rbac.authorization.k8s.io"}]}
    for path, obj in (("/apis/rbac.authorization.k8s.io/v1/clusterroles", role),
                      ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)):
        with contextlib.suppress(Exception):
            await kube.request("POST", path, body=obj)
    env = base_env(kube_apiserver.kubeconfig("doctor-user", []), emulator, free_port(),
                   CLOUDSIGMA_IMPERSONATION_ENABLED="true", CLOUDSIGMA_OAUTH_URL=emulator.realm_url(),
                   CLOUDSIGMA_CLIENT_ID=CLIENT_ID, CLOUDSIGMA_CLIENT_SECRET="wrong-client-secret",
                   CLOUDSIGMA_USER_EMAIL=ALICE, CLOUDSIGMA_IMPERSONATION_API_URL=emulator.api_url,
                   CLOUDSIGMA_NODE_DELETION_ENABLED="false", CLOUDSIGMA_LOG_LEVEL="error")
    results: dict[str, Any] = {}
    for output in ("table", "json"):
        proc = await asyncio.create_subprocess_exec(ccm_binary(), "doctor", "--output", output, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        results[output] = (proc.returncode, out.decode(), err.decode())
    code, table, _ = results["table"]
    assert code == 1
    lines = table.splitlines()
    secret_line = [ln for ln in lines if "keycloak-token-exchange" in ln and "FAIL" in ln]
    assert len(secret_line) == 1 and "CLOUDSIGMA_CLIENT_SECRET" in secret_line[0]
    rbac_line = [ln for ln in lines if "patch nodes/status" in ln]
    assert len(rbac_line) == 1 and "FAIL" in rbac_line[0] and "DENIED" in rbac_line[0]
    others = [ln for ln in lines if ln.startswith("rbac") and "patch nodes/status" not in ln]
    assert len(others) == len(granted) and all(" OK " in ln for ln in others), others
    ghost_line = [ln for ln in lines if ln.split()[1:2] == ["ghost"]]
    assert len(ghost_line) == 1 and "FAIL" in ghost_line[0] and "no server named 'ghost'" in ghost_line[0]
    known_line = [ln for ln in lines if ln.split()[1:2] == ["known"]]
    assert len(known_line) == 1 and "OK" in known_line[0] and "would" in known_line[0]
    assert "wrong-client-secret" not in table and ALICE_PW not in table
    assert any("password" in ln and "OK" in ln for ln in lines)  # the fallback works
    json_code, text, _ = results["json"]
    report = json.loads(text)
    assert json_code == 1 and report["ok"] is False
    assert {c["name"] for c in report["checks"] if c["status"] == "fail"} >= {"keycloak-token-exchange", "ghost",
                                                                             "patch nodes/status"}
    for path in ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/doctor-partial",
                 "/apis/rbac.authorization.k8s.io/v1/clusterroles/doctor-partial"):
        await kube.request("DELETE", path)
