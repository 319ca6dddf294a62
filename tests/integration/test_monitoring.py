"""deploy/monitoring queries only metrics the daemon exports: every metric name in the alert rules and the
dashboard is in a live ``/metrics`` scrape of the daemon process (tests/integration/test_operations.py's Daemon,
run against the real kube-apiserver and the CloudSigma emulator), after it initialized a node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient
from prometheus_client.parser import text_string_to_metric_families

from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, node_json, taint_keys, two_users
from tests.integration.test_e2e import free_port
from tests.integration.test_operations import UNINIT, Daemon, base_env
from tests.promql_names import queried_metrics
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for

pytestmark = pytest.mark.usefixtures("clean_nodes")


def exported_names(text: str) -> set[str]:
    """Every sample name a scrape exposes, including those of families without samples yet (a labelled counter
    before its first increment): counters as ``_total``, histograms as ``_bucket``/``_sum``/``_count``."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            names.add(family.name)
    return names


@pytest.fixture
async def daemon(emulator_state: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
                 tmp_path: Path) -> AsyncIterator[Daemon]:
    two_users(emulator_state)
    port = free_port()
    running = Daemon(base_env(kube_apiserver.admin_kubeconfig, emulator, port, CLOUDSIGMA_CLUSTER_NAME="example",
                              CLOUDSIGMA_LEADER_ELECT="false"),
                     tmp_path / "daemon.log", port)
    await running.start()
    yield running
    await running.stop()


async def test_rules_and_dashboard_query_only_what_the_daemon_exports(
        daemon: Daemon, emulator_state: EmulatorState, kube_api: ApiClient) -> None:
    emulator_state.add_server(ALICE, "mon-0", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "mon-0")

    async def initialized() -> bool:
        return UNINIT not in taint_keys(await node_json(kube_api, "mon-0"))

    await wait_for(initialized, 30)
    scrape = await daemon.metrics()
    exported = exported_names(scrape)
    # The scrape is the daemon's, after real work: a per-tenant series with its cluster label, and the credential
    # provider that served.
    assert 'cloudsigma_ccm_leader{cluster="example"}' in scrape
    assert 'cloudsigma_ccm_credential_provider_active{provider="password"} 1.0' in scrape
    queried = queried_metrics()
    assert len(queried) > 20
    missing = {name: sorted(used) for name, used in queried.items() if name not in exported}
    assert not missing, f"queried by deploy/monitoring but not exported by the daemon: {missing}"
