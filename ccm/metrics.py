"""Prometheus metrics: one registry per process (no global state), a ``cluster`` label on everything per tenant.

:class:`MetricFamilies` owns the registry and the metric families. What belongs to one tenant cluster (reconciles,
writes, watch restarts, CloudSigma requests, the node gauges and histograms, its Lease) carries a ``cluster``
label; what the process shares between tenants (the token cache and the credential chain) does not.
:class:`Metrics` is one cluster's view of them, with the family names the controllers use
(``metrics.reconciles.labels("node", "synced").inc()``, ``metrics.queue_depth.set(3)``): the ``cluster`` label is
filled in for them. In single-tenant mode the label is ``--cluster-name``; in fleet mode the tenant's key
(``namespace/name`` of its CloudSigmaCluster), and :meth:`Metrics.remove` drops every series of a tenant that is
no longer served, so the number of series is bounded by the number of tenants, not by their history.

Names follow Prometheus conventions; the two upstream histograms keep their upstream names so existing
dashboards work: ``node_controller_cloud_provider_taint_removal_delay_seconds`` and
``node_controller_initial_node_sync_delay_seconds`` (both from the node's creationTimestamp).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from cloudsigma.client import RequestRecord

__all__ = ["CLUSTER_LABEL", "MetricFamilies", "Metrics"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DELAY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
CLUSTER_LABEL = "cluster"

M = TypeVar("M", bound=MetricWrapperBase)


class MetricFamilies:
    """The process's registry and every metric family in it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        c = CLUSTER_LABEL
        # -- per tenant cluster --
        self.cloud_requests = Counter("cloudsigma_api_requests_total", "CloudSigma API requests.",
                                      [c, "endpoint", "method", "code"], registry=r)
        self.cloud_latency = Histogram("cloudsigma_api_request_duration_seconds", "CloudSigma API latency.",
                                       [c, "endpoint", "method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.reconciles = Counter("cloudsigma_ccm_reconciles_total", "Reconciles by controller and result.",
                                  [c, "controller", "result"], registry=r)
        self.reconcile_duration = Histogram("cloudsigma_ccm_reconcile_duration_seconds", "Reconcile duration.",
                                            [c, "controller"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("cloudsigma_ccm_workqueue_depth", "Keys waiting in the work queue.", [c],
                                 registry=r)
        self.watch_restarts = Counter("cloudsigma_ccm_watch_restarts_total", "Node watch restarts.", [c, "reason"],
                                      registry=r)
        self.leader = Gauge("cloudsigma_ccm_leader", "1 while this process holds the cluster's lease.", [c],
                            registry=r)
        self.lease_failures = Counter("cloudsigma_ccm_leader_election_failures_total",
                                      "Lease calls that failed (get, create, update) or ran out of time "
                                      "(deadline), by lease.", [c, "lease", "step"], registry=r)
        self.snapshot_refreshes = Counter("cloudsigma_ccm_server_snapshot_refreshes_total",
                                          "Server snapshot refreshes.", [c], registry=r)
        self.kube_writes = Counter("cloudsigma_ccm_kubernetes_writes_total", "Writes to the tenant API.",
                                   [c, "verb", "resource"], registry=r)
        self.node_deletions = Counter("cloudsigma_ccm_node_deletions_total", "Nodes deleted (server gone).", [c],
                                      registry=r)
        self.nodes_uninitialized = Gauge("cloudsigma_ccm_nodes_uninitialized",
                                         "Nodes still carrying the uninitialized taint.", [c], registry=r)
        self.wrong_account = Gauge("cloudsigma_ccm_wrong_account",
                                   "1 while the server listing holds none of the Ready Nodes' servers (another "
                                   "account: credential fallback, wrong user email or location).", [c], registry=r)
        self.cloud_recoveries = Counter("cloudsigma_ccm_cloud_recoveries_total",
                                        "Server listings that succeeded after failures (waiting nodes re-queued).",
                                        [c], registry=r)
        self.taint_removal_delay = Histogram(
            "node_controller_cloud_provider_taint_removal_delay_seconds",
            "Seconds from node creation to removal of the uninitialized taint.", [c], buckets=_DELAY_BUCKETS,
            registry=r)
        self.initial_sync_delay = Histogram(
            "node_controller_initial_node_sync_delay_seconds",
            "Seconds from node creation to its initialization (observed once per node, when it is initialized).",
            [c], buckets=_DELAY_BUCKETS, registry=r)
        self.tenant_failures = Counter("cloudsigma_ccm_tenant_failures_total",
                                       "Times a tenant's controllers failed and were restarted with backoff (fleet "
                                       "mode).", [c], registry=r)
        self.cloud_budget_waits = Counter(
            "cloudsigma_ccm_cloudsigma_budget_waits_total",
            "CloudSigma requests that waited for the region's shared request budget (fleet mode).", [c, "region"],
            registry=r)
        self.lb_ips = Gauge("cloudsigma_ccm_load_balancer_ips",
                            "The owner's IPs by pool and state (held: claimed for this cluster's Services; free; "
                            "claimed: by another cluster or kube-dc; attached: on a server NIC), as last listed.",
                            [c, "pool", "state"], registry=r)
        self.lb_allocation_failures = Counter("cloudsigma_ccm_load_balancer_allocation_failures_total",
                                              "Services left pending, by reason.", [c, "reason"], registry=r)
        self.token_broker_writes = Counter(
            "cloudsigma_ccm_token_broker_writes_total", "Token broker Secret writes by target and what the Secret "
            "holds afterwards (written: a new token; kept: the last valid one, impersonation failing; empty: no "
            "token).", [c, "target", "state"], registry=r)
        self.token_broker_failures = Counter(
            "cloudsigma_ccm_token_broker_failures_total", "Token broker sync failures by target and reason (an "
            "impersonation failure's reason, not_managed, namespace_missing, forbidden, kubernetes).",
            [c, "target", "reason"], registry=r)
        self.token_broker_expiry = Gauge(
            "cloudsigma_ccm_token_broker_token_expiry_timestamp_seconds", "Expiry of the token a token broker "
            "Secret holds (0: none); alert when it nears time().", [c, "target"], registry=r)
        # -- shared by the process (one token cache, one credential chain) --
        self.token_acquisitions = Counter("cloudsigma_ccm_token_acquisitions_total", "Credential acquisitions.",
                                          ["provider", "result"], registry=r)
        self.token_cache = Counter("cloudsigma_ccm_token_cache_events_total", "Token cache hits/misses/refreshes.",
                                   ["event", "provider"], registry=r)
        self.credential_fallbacks = Counter("cloudsigma_ccm_credential_fallbacks_total",
                                            "Times the chain fell back past a provider.", ["provider", "reason"],
                                            registry=r)
        self.credential_provider_active = Gauge(
            "cloudsigma_ccm_credential_provider_active", "1 for the credential provider that served the most recent "
            "credential, 0 for those that served one before (a fallback provider at 1: impersonation is failing).",
            ["provider"], registry=r)
        #: The providers with a series in credential_provider_active (the one at 1 and those set back to 0).
        self.providers_served: set[str] = set()
        self.token_verifications = Counter(
            "cloudsigma_ccm_token_verifications_total", "Impersonated tokens checked before use, by result "
            "(verified, opaque, unverifiable, subject_mismatch, token_unknown_key, ...).", ["provider", "result"],
            registry=r)
        self.subject_mismatches = Counter(
            "cloudsigma_ccm_impersonation_subject_mismatches_total",
            "Impersonated tokens refused because they do not act as the requested user.", ["provider"], registry=r)
        self.fleet_tenants = Gauge("cloudsigma_ccm_fleet_tenants",
                                   "Tenants by state (fleet mode): known (discovered), invalid (discovered but "
                                   "unusable), assigned (to this replica), served (its Lease held here).",
                                   ["state"], registry=r)
        self.fleet_members = Gauge("cloudsigma_ccm_fleet_members", "Live replicas of the fleet, as this one sees "
                                   "them.", registry=r)

    def per_cluster(self) -> list[MetricWrapperBase]:
        """The families carrying a ``cluster`` label."""
        return [m for m in vars(self).values()
                if isinstance(m, MetricWrapperBase) and CLUSTER_LABEL in m._labelnames]

    def remove_cluster(self, cluster: str) -> None:
        """Drop every series of ``cluster`` (a tenant no longer served here)."""
        for family in self.per_cluster():
            family.remove_by_labels({CLUSTER_LABEL: cluster})

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Bound(Generic[M]):
    """A family with its ``cluster`` label filled in: ``.labels(*rest)`` gives the child for the other labels."""

    def __init__(self, family: M, cluster: str) -> None:
        self._family = family
        self._cluster = cluster

    def labels(self, *values: str) -> M:
        child: M = self._family.labels(self._cluster, *values)
        return child


class Metrics:
    """One cluster's view of the process's metrics (:class:`MetricFamilies`), plus the process-wide hooks.

    ``Metrics()`` makes its own families (one process, one cluster): the single-tenant mode and tests."""

    def __init__(self, cluster: str = "", families: MetricFamilies | None = None) -> None:
        self.families = f = families if families is not None else MetricFamilies()
        self.registry = f.registry
        self.cluster = cluster
        self.cloud_requests = _Bound(f.cloud_requests, cluster)
        self.cloud_latency = _Bound(f.cloud_latency, cluster)
        self.reconciles = _Bound(f.reconciles, cluster)
        self.reconcile_duration = _Bound(f.reconcile_duration, cluster)
        self.watch_restarts = _Bound(f.watch_restarts, cluster)
        self.lease_failures = _Bound(f.lease_failures, cluster)
        self.kube_writes = _Bound(f.kube_writes, cluster)
        self.cloud_budget_waits = _Bound(f.cloud_budget_waits, cluster)
        self.lb_ips = _Bound(f.lb_ips, cluster)
        self.lb_allocation_failures = _Bound(f.lb_allocation_failures, cluster)
        self.token_broker_writes = _Bound(f.token_broker_writes, cluster)
        self.token_broker_failures = _Bound(f.token_broker_failures, cluster)
        self.token_broker_expiry = _Bound(f.token_broker_expiry, cluster)
        self.queue_depth = f.queue_depth.labels(cluster)
        self.leader = f.leader.labels(cluster)
        self.snapshot_refreshes = f.snapshot_refreshes.labels(cluster)
        self.node_deletions = f.node_deletions.labels(cluster)
        self.nodes_uninitialized = f.nodes_uninitialized.labels(cluster)
        self.wrong_account = f.wrong_account.labels(cluster)
        self.cloud_recoveries = f.cloud_recoveries.labels(cluster)
        self.taint_removal_delay = f.taint_removal_delay.labels(cluster)
        self.initial_sync_delay = f.initial_sync_delay.labels(cluster)
        self.tenant_failures = f.tenant_failures.labels(cluster)
        self.token_acquisitions = f.token_acquisitions
        self.token_cache = f.token_cache
        self.credential_fallbacks = f.credential_fallbacks
        self.token_verifications = f.token_verifications
        self.credential_provider_active = f.credential_provider_active
        self.subject_mismatches = f.subject_mismatches

    def for_cluster(self, cluster: str) -> Metrics:
        """The view of another cluster over the same registry (a tenant of the fleet)."""
        return Metrics(cluster, self.families)

    def remove(self) -> None:
        """Drop every series of this view's cluster (the tenant is no longer served by this process)."""
        self.families.remove_cluster(self.cluster)

    def observe_request(self, record: RequestRecord) -> None:
        code = str(record.status) if record.status is not None else record.outcome
        self.cloud_requests.labels(record.endpoint, record.method, code).inc()
        self.cloud_latency.labels(record.endpoint, record.method).observe(record.duration)

    def credential_event(self, event: str, provider: str) -> None:
        """Hook for the credential cache and chain: hit/miss/refresh/expired/coalesced/backoff (cache),
        stored/error (an acquisition's result), fallback:<reason> (the chain moved past a provider),
        verify:<result> (an impersonated token was checked), active (``provider`` now serves the credentials)."""
        if event in ("hit", "miss", "refresh", "expired", "coalesced", "backoff"):
            self.token_cache.labels(event, provider).inc()
        elif event in ("stored", "error"):
            self.token_acquisitions.labels(provider, "success" if event == "stored" else "error").inc()
        elif event.startswith("fallback"):
            self.credential_fallbacks.labels(provider, event.partition(":")[2] or "error").inc()
        elif event == "active":
            for served in self.families.providers_served - {provider}:
                self.credential_provider_active.labels(served).set(0)
            self.families.providers_served.add(provider)
            self.credential_provider_active.labels(provider).set(1)
        elif event.startswith("verify:"):
            result = event.partition(":")[2] or "error"
            self.token_verifications.labels(provider, result).inc()
            if result == "subject_mismatch":
                self.subject_mismatches.labels(provider).inc()

    def render(self) -> bytes:
        return self.families.render()
