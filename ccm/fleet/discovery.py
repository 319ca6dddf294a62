"""Tenant discovery: CloudSigmaClusters and their kubeconfig Secrets in the management cluster → tenant events.

Three informers (:class:`ccm.kube.informer.Informer`) feed one table of tenants:

- CloudSigmaClusters (all namespaces or one; optional label selector),
- Secrets carrying Cluster API's ``cluster.x-k8s.io/cluster-name`` label (Kubernetes cannot select Secrets by
  name, so the label narrows the watch and :func:`slim_secret` drops every Secret not named ``*-kubeconfig`` and
  every key but ``value`` before it is stored),
- Namespaces matching a label selector, only when one is configured (the API cannot filter objects by their
  namespace's labels, so a cluster counts only while its namespace is in this set).

Any change to one of them re-evaluates the clusters it can affect (a Secret or a Namespace: every cluster of its
namespace) with the pure :func:`desired_tenant` and :func:`tenant_events`, and handlers receive
:class:`TenantEvent` s: ``added``, ``changed`` (with the fields that changed: an owner-email or region change,
a rotated kubeconfig) and ``removed``. A re-created object (new uid under the same name) is ``removed`` then
``added``, so nothing of the old tenant is reused.

An object that cannot make a tenant is recorded in :attr:`TenantDiscovery.problems` and logged (once per
distinct problem) with its name and the fix; discovery goes on. A tenant already served keeps its last good
spec when its objects turn bad (a half-written rotation must not stop a working tenant); it is removed only
when its CloudSigmaCluster is deleted or leaves the selection.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from ccm.clusters.clusterapi import (
    CLUSTER_NAME_LABEL,
    KUBECONFIG_SECRET_KEY,
    KUBECONFIG_SECRET_SUFFIX,
    clusters_path,
    secrets_path,
)
from ccm.clusters.tenants import (
    ClusterNotAdopted,
    KubeconfigMissing,
    TenantError,
    TenantSpec,
    changed_fields,
    parse_cluster,
    parse_kubeconfig_secret,
    slim_cluster,
    tenant_spec,
)
from ccm.kube.informer import Informer
from ccm.kube.transport import JSON, KubeTransport
from ccm.supervisor import cancel_and_wait

log = structlog.get_logger(__name__)

NAMESPACES = "/api/v1/namespaces"


@dataclass(frozen=True)
class DiscoveryOptions:
    """Which tenants this fleet serves. (Phase 2 moves these into ``Settings``.)"""

    namespace: str | None = None
    """Watch one namespace only (namespaced RBAC); ``None``: all namespaces."""
    namespace_selector: str | None = None
    """Label selector on Namespaces: serve only clusters in matching namespaces."""
    cluster_selector: str | None = None
    """Label selector on CloudSigmaClusters."""
    secret_selector: str = CLUSTER_NAME_LABEL
    """Label selector on kubeconfig Secrets (Cluster API labels them); empty: every Secret is listed."""
    watch_timeout: float = 300.0
    max_backoff: float = 30.0


class TenantEventType(enum.StrEnum):
    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"


@dataclass(frozen=True)
class TenantEvent:
    """One change of the served tenants. ``old`` is None when added, ``new`` None when removed."""

    type: TenantEventType
    key: str
    old: TenantSpec | None
    new: TenantSpec | None
    fields: frozenset[str] = frozenset()
    """For ``changed``: the :class:`TenantSpec` fields that differ (e.g. ``{"user_email"}``, ``{"kubeconfig",
    "kubeconfig_sha256"}``)."""


TenantHandler = Callable[[TenantEvent], Awaitable[None] | None]


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def slim_secret(obj: JSON) -> JSON | None:
    """A kubeconfig Secret reduced to its ``value`` key; any other Secret dropped."""
    meta = obj.get("metadata") or {}
    if not str(meta.get("name") or "").endswith(KUBECONFIG_SECRET_SUFFIX):
        return None
    data = _mapping(obj.get("data"))
    kept: JSON = {"metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta}}
    if KUBECONFIG_SECRET_KEY in data:
        kept["data"] = {KUBECONFIG_SECRET_KEY: data[KUBECONFIG_SECRET_KEY]}
    return kept


def slim_namespace(obj: JSON) -> JSON | None:
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "resourceVersion") if k in meta}}


def desired_tenant(cluster: JSON | None, secrets: Mapping[str, JSON], *, selected: bool = True) -> TenantSpec | None:
    """The tenant a CloudSigmaCluster should be served as: None when it is gone or not selected; raises
    :class:`TenantError` when its objects cannot make one. ``secrets`` maps ``namespace/name`` to Secrets."""
    if cluster is None or not selected:
        return None
    ref = parse_cluster(cluster)
    secret = secrets.get(f"{ref.namespace}/{ref.kubeconfig_secret}")
    return tenant_spec(ref, parse_kubeconfig_secret(secret, ref))


def tenant_events(key: str, current: TenantSpec | None, desired: TenantSpec | None) -> list[TenantEvent]:
    """What to tell the handlers when tenant ``key`` goes from ``current`` to ``desired``."""
    if current is None and desired is None:
        return []
    if current is None:
        return [TenantEvent(TenantEventType.ADDED, key, None, desired)]
    if desired is None:
        return [TenantEvent(TenantEventType.REMOVED, key, current, None)]
    if current.uid != desired.uid:  # deleted and re-created under the same name: a different tenant
        return [TenantEvent(TenantEventType.REMOVED, key, current, None),
                TenantEvent(TenantEventType.ADDED, key, None, desired)]
    if current == desired:
        return []
    return [TenantEvent(TenantEventType.CHANGED, key, current, desired, changed_fields(current, desired))]


class TenantDiscovery:
    """Follows the management cluster and keeps :attr:`tenants` (key → :class:`TenantSpec`) current."""

    def __init__(self, kube: KubeTransport, options: DiscoveryOptions | None = None) -> None:
        self.options = options = options or DiscoveryOptions()
        common: dict[str, Any] = {"watch_timeout": options.watch_timeout, "max_backoff": options.max_backoff}
        self.clusters = Informer(kube, clusters_path(options.namespace), label_selector=options.cluster_selector,
                                 transform=slim_cluster, name="cloudsigmaclusters", **common)
        self.secrets = Informer(kube, secrets_path(options.namespace), label_selector=options.secret_selector or None,
                                transform=slim_secret, name="kubeconfig-secrets", **common)
        self.namespaces: Informer | None = None
        if options.namespace_selector:
            self.namespaces = Informer(kube, NAMESPACES, label_selector=options.namespace_selector,
                                       transform=slim_namespace, name="namespaces", **common)
        #: The tenants to serve now.
        self.tenants: dict[str, TenantSpec] = {}
        #: Why a cluster is not served (or not with its latest objects), by tenant key.
        self.problems: dict[str, TenantError] = {}
        #: Set once every informer listed and the first tenants were announced.
        self.synced = asyncio.Event()
        self._handlers: list[TenantHandler] = []
        self._pending: set[str] = set()
        self.clusters.add_handler(lambda key, old, new: self._touch([key]))
        self.secrets.add_handler(lambda key, old, new: self._touch(self._clusters_in(key.split("/", 1)[0])))
        if self.namespaces is not None:
            self.namespaces.add_handler(lambda key, old, new: self._touch(self._clusters_in(key)))

    @property
    def informers(self) -> list[Informer]:
        return [i for i in (self.clusters, self.secrets, self.namespaces) if i is not None]

    def add_handler(self, handler: TenantHandler) -> None:
        """``handler(event)`` is called (and awaited) for every change, in order; it should not block for long."""
        self._handlers.append(handler)

    async def run(self) -> None:
        """Follow the management cluster until cancelled."""
        tasks = [asyncio.create_task(informer.run(), name=f"informer-{informer.name}") for informer in self.informers]
        try:
            for informer in self.informers:
                await informer.synced.wait()
            # Only now: before every list is in, a cluster would look like it had no kubeconfig Secret.
            keys = set(self.clusters.store) | set(self.tenants) | self._pending
            self._pending.clear()
            self.synced.set()
            await self._evaluate_all(keys)
            log.info("tenants_discovered", tenants=len(self.tenants), problems=len(self.problems))
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait(*tasks)

    def _clusters_in(self, namespace: str) -> list[str]:
        prefix = namespace + "/"
        return [k for k in (*self.clusters.store, *self.tenants, *self.problems) if k.startswith(prefix)]

    async def _touch(self, keys: Iterable[str]) -> None:
        if not self.synced.is_set():
            self._pending.update(keys)
            return
        await self._evaluate_all(set(keys))

    async def _evaluate_all(self, keys: set[str]) -> None:
        for key in sorted(keys):
            try:
                await self._evaluate(key)
            except Exception:  # one bad object must not stop discovery
                log.exception("tenant_evaluation_failed", tenant=key)

    def _selected(self, key: str) -> bool:
        return self.namespaces is None or key.split("/", 1)[0] in self.namespaces.store

    async def _evaluate(self, key: str) -> None:
        current = self.tenants.get(key)
        try:
            desired = desired_tenant(self.clusters.store.get(key), self.secrets.store, selected=self._selected(key))
        except TenantError as exc:
            self._problem(key, exc, serving=current is not None)
            return
        if self.problems.pop(key, None) is not None and desired is not None:
            log.info("tenant_problem_resolved", tenant=key)
        for event in tenant_events(key, current, desired):
            if event.new is None:
                self.tenants.pop(key, None)
            else:
                self.tenants[key] = event.new
            spec = event.new or event.old
            assert spec is not None
            log.info(f"tenant_{event.type.value}", tenant=key, cluster=spec.cluster_name, region=spec.region,
                     user_email=spec.user_email, fields=sorted(event.fields) or None)
            for handler in self._handlers:
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("tenant_handler_failed", tenant=key, change=event.type.value)

    def _problem(self, key: str, exc: TenantError, *, serving: bool) -> None:
        previous = self.problems.get(key)
        self.problems[key] = exc
        if previous is not None and str(previous) == str(exc):
            return  # already said
        # A cluster being created has no label or Secret for a moment: not worth a warning.
        expected = isinstance(exc, ClusterNotAdopted | KubeconfigMissing) and not serving
        emit = log.info if expected else log.warning
        emit("tenant_pending" if expected else "tenant_invalid", tenant=key, error_type=type(exc).__name__,
             error=str(exc), keeps_last_good=serving)
