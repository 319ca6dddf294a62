"""Prometheus metrics of one CCM process, in its own registry (no global state).

Names follow Prometheus conventions; the two upstream histograms keep their upstream names so existing
dashboards work: ``node_controller_cloud_provider_taint_removal_delay_seconds`` and
``node_controller_initial_node_sync_delay_seconds`` (both from the node's creationTimestamp).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cloudsigma.client import RequestRecord

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DELAY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.cloud_requests = Counter("cloudsigma_api_requests_total", "CloudSigma API requests.",
                                      ["endpoint", "method", "code"], registry=r)
        self.cloud_latency = Histogram("cloudsigma_api_request_duration_seconds", "CloudSigma API latency.",
                                       ["endpoint", "method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.token_acquisitions = Counter("cloudsigma_ccm_token_acquisitions_total", "Credential acquisitions.",
                                          ["provider", "result"], registry=r)
        self.token_cache = Counter("cloudsigma_ccm_token_cache_events_total", "Token cache hits/misses/refreshes.",
                                   ["event", "provider"], registry=r)
        self.credential_fallbacks = Counter("cloudsigma_ccm_credential_fallbacks_total",
                                            "Times the chain fell back past a provider.", ["provider", "reason"],
                                            registry=r)
        self.token_verifications = Counter(
            "cloudsigma_ccm_token_verifications_total", "Impersonated tokens checked before use, by result "
            "(verified, opaque, unverifiable, subject_mismatch, token_unknown_key, ...).", ["provider", "result"],
            registry=r)
        self.subject_mismatches = Counter(
            "cloudsigma_ccm_impersonation_subject_mismatches_total",
            "Impersonated tokens refused because they do not act as the requested user.", ["provider"], registry=r)
        self.reconciles = Counter("cloudsigma_ccm_reconciles_total", "Reconciles by controller and result.",
                                  ["controller", "result"], registry=r)
        self.reconcile_duration = Histogram("cloudsigma_ccm_reconcile_duration_seconds", "Reconcile duration.",
                                            ["controller"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("cloudsigma_ccm_workqueue_depth", "Keys waiting in the work queue.", registry=r)
        self.watch_restarts = Counter("cloudsigma_ccm_watch_restarts_total", "Node watch restarts.", ["reason"],
                                      registry=r)
        self.leader = Gauge("cloudsigma_ccm_leader", "1 while this process holds the lease.", registry=r)
        self.snapshot_refreshes = Counter("cloudsigma_ccm_server_snapshot_refreshes_total",
                                          "Server snapshot refreshes.", registry=r)
        self.kube_writes = Counter("cloudsigma_ccm_kubernetes_writes_total", "Writes to the tenant API.",
                                   ["verb", "resource"], registry=r)
        self.node_deletions = Counter("cloudsigma_ccm_node_deletions_total", "Nodes deleted (server gone).",
                                      registry=r)
        self.nodes_uninitialized = Gauge("cloudsigma_ccm_nodes_uninitialized",
                                         "Nodes still carrying the uninitialized taint.", registry=r)
        self.wrong_account = Gauge("cloudsigma_ccm_wrong_account",
                                   "1 while the server listing holds none of the Ready Nodes' servers (another "
                                   "account: credential fallback, wrong user email or location).", registry=r)
        self.cloud_recoveries = Counter("cloudsigma_ccm_cloud_recoveries_total",
                                        "Server listings that succeeded after failures (waiting nodes re-queued).",
                                        registry=r)
        self.taint_removal_delay = Histogram(
            "node_controller_cloud_provider_taint_removal_delay_seconds",
            "Seconds from node creation to removal of the uninitialized taint.", buckets=_DELAY_BUCKETS, registry=r)
        self.initial_sync_delay = Histogram(
            "node_controller_initial_node_sync_delay_seconds",
            "Seconds from node creation to its initialization (observed once per node, when it is initialized).",
            buckets=_DELAY_BUCKETS, registry=r)

    def observe_request(self, record: RequestRecord) -> None:
        code = str(record.status) if record.status is not None else record.outcome
        self.cloud_requests.labels(record.endpoint, record.method, code).inc()
        self.cloud_latency.labels(record.endpoint, record.method).observe(record.duration)

    def credential_event(self, event: str, provider: str) -> None:
        """Hook for the credential cache and chain: hit/miss/refresh/expired/coalesced/backoff (cache),
        stored/error (an acquisition's result), fallback:<reason> (the chain moved past a provider),
        verify:<result> (an impersonated token was checked)."""
        if event in ("hit", "miss", "refresh", "expired", "coalesced", "backoff"):
            self.token_cache.labels(event, provider).inc()
        elif event in ("stored", "error"):
            self.token_acquisitions.labels(provider, "success" if event == "stored" else "error").inc()
        elif event.startswith("fallback"):
            self.credential_fallbacks.labels(provider, event.partition(":")[2] or "error").inc()
        elif event.startswith("verify:"):
            result = event.partition(":")[2] or "error"
            self.token_verifications.labels(provider, result).inc()
            if result == "subject_mismatch":
                self.subject_mismatches.labels(provider).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
