"""One metrics registry per process with a bounded ``cluster`` label: a tenant's series go with the tenant, and the
write counter's resource label never carries an object's name."""

from __future__ import annotations

from ccm.kube.transport import _kind
from ccm.metrics import Metrics


def test_each_cluster_has_its_series_and_a_removed_one_leaves_none() -> None:
    process = Metrics()
    one, two = process.for_cluster("team/one"), process.for_cluster("team/two")
    for view in (one, two):
        view.reconciles.labels("node", "synced").inc()
        view.kube_writes.labels("PATCH", "nodes").inc()
        view.nodes_uninitialized.set(3)
        view.leader.set(1)
        view.taint_removal_delay.observe(0.5)
    process.credential_event("stored", "keycloak-token-exchange")  # shared by the process: no cluster label
    text = process.render().decode()
    assert 'cloudsigma_ccm_reconciles_total{cluster="team/one",controller="node",result="synced"} 1.0' in text
    assert 'cloudsigma_ccm_nodes_uninitialized{cluster="team/two"} 3.0' in text
    assert 'cloudsigma_ccm_token_acquisitions_total{provider="keycloak-token-exchange",result="success"} 1.0' in text
    one.remove()
    text = process.render().decode()
    assert 'cluster="team/one"' not in text
    assert 'cloudsigma_ccm_leader{cluster="team/two"} 1.0' in text
    assert "cloudsigma_ccm_token_acquisitions_total" in text


def test_single_tenant_mode_labels_with_the_cluster_name() -> None:
    metrics = Metrics("prod-1")
    metrics.watch_restarts.labels("gone").inc()
    assert metrics.watch_restarts.labels("gone")._value.get() == 1
    assert 'cloudsigma_ccm_watch_restarts_total{cluster="prod-1",reason="gone"} 1.0' in metrics.render().decode()


def test_write_kinds_are_resources_never_object_names() -> None:
    assert _kind("/api/v1/nodes/n1") == "nodes"
    assert _kind("/api/v1/nodes/n1/status") == "nodes/status"
    assert _kind("/api/v1/namespaces/default/events/e1") == "events"
    # One Lease per tenant in fleet mode: its name must not become a label value.
    assert _kind("/apis/coordination.k8s.io/v1/namespaces/fleet/leases/ccm-tenant-team-one-1a2b3c4d") == "leases"
    assert _kind("/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-1/approval") == (
        "certificatesigningrequests/approval")
    assert _kind("/version") == "other"
