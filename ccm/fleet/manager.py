"""The fleet manager: which tenants this replica serves, and serving each under its own fenced Lease.

Discovery (:mod:`ccm.fleet.discovery`) says which tenants exist, membership (:mod:`ccm.fleet.membership`) which
replicas live, sharding (:func:`ccm.fleet.sharding.owned_by`) which tenants are this replica's. The assignment is
advice; exclusion comes from one Lease per tenant in the fleet's namespace, held through a
:class:`~ccm.leader.LeaseElector` with its own :class:`~ccm.fencing.Fence` (issue 14): every write to the tenant's
API passes that fence, which closes at *start of the last successful renewal + renew deadline* — before another
replica may take the Lease — so a replica that cannot renew stops writing to that tenant before anyone else can
start.

For each tenant assigned here a :class:`TenantSlot` acquires the Lease, runs a
:class:`~ccm.fleet.runtime.TenantRuntime` while it holds it and renews it (publishing the tenant's status in an
annotation for ``doctor --all-tenants``). A tenant no longer assigned (a replica joined, or the tenant is gone) is
handed over in the safe order: drain its runtime, flush its events, stop renewing, release the Lease (the
successor takes it at its next attempt, a retry period later); its metrics and, unless another tenant uses them,
its credentials are dropped. A replica that dies stops renewing: the survivors see its member Lease expire and,
because a watch of the tenant Leases tells them how long each record has been unchanged, take its tenants as soon
as their Leases expire — within about one lease duration of its last renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from ccm.clusters.tenants import TenantSpec
from ccm.config import Settings
from ccm.fencing import Fence
from ccm.fleet.announce import leases_path
from ccm.fleet.discovery import DiscoveryOptions, TenantDiscovery, TenantEvent, TenantEventType
from ccm.fleet.membership import Membership, MembershipOptions
from ccm.fleet.runtime import TenantRuntime, credential_state
from ccm.fleet.sharding import assign, capacity
from ccm.fleet.shared import CredentialUsers
from ccm.kube.errors import Conflict, KubeError, KubeNotFound
from ccm.kube.informer import Informer
from ccm.kube.transport import JSON, KubeTransport
from ccm.leader import LeaderLost, LeaseElector
from ccm.shutdown import LEASE_RELEASE_TIMEOUT
from ccm.supervisor import cancel_and_wait
from ccm.tenant.services import Services

__all__ = ["FleetManager", "TenantSlot", "discovery_options", "membership_options", "tenant_lease_name"]

log = structlog.get_logger(__name__)

TENANT_LEASE_LABEL = "cloudsigma-ccm/fleet-tenant"
"""Label of tenant Leases; the value is the fleet's name (member Leases carry ``cloudsigma-ccm/fleet``)."""
TENANT_ANNOTATION = "cloudsigma-ccm/tenant"
"""The tenant a Lease guards: ``namespace/name`` of its CloudSigmaCluster."""
STATUS_ANNOTATION = "cloudsigma-ccm/tenant-status"
"""JSON written by the holder with every renewal: nodes, uninitialized, last sync, credential state, last error."""
HANDOVER_DRAIN = 5.0
"""Longest a tenant handed over to another replica lets its in-flight reconciles finish."""


def tenant_lease_name(fleet: str, key: str) -> str:
    """A valid, unique Lease name for tenant ``namespace/name``."""
    readable = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{fleet}-tenant-{readable}-{digest}" if readable else f"{fleet}-tenant-{digest}"


def discovery_options(settings: Settings) -> DiscoveryOptions:
    return DiscoveryOptions(namespace=settings.fleet_tenant_namespace,
                            namespace_selector=settings.fleet_namespace_selector,
                            cluster_selector=settings.fleet_cluster_selector,
                            secret_selector=settings.fleet_secret_selector, watch_timeout=settings.watch_timeout)


def membership_options(settings: Settings, *, namespace: str, identity: str) -> MembershipOptions:
    duration = settings.leader_elect_lease_duration
    return MembershipOptions(namespace=namespace, identity=identity, fleet=settings.fleet_name,
                             lease_duration=duration, renew_interval=duration / 3,
                             forget_after=settings.fleet_member_forget_after, watch_timeout=settings.watch_timeout)


@dataclass
class _Context:
    """What every slot of one manager shares."""

    settings: Settings
    services: Services
    credentials: CredentialUsers
    kube: KubeTransport
    namespace: str
    identity: str


class TenantSlot:
    """This replica's claim on one tenant: its Lease and fence, and its runtime while the Lease is held."""

    def __init__(self, ctx: _Context, spec: TenantSpec) -> None:
        self._ctx = ctx
        self.spec = spec
        settings = ctx.settings
        self.metrics = ctx.services.metrics.for_cluster(spec.key)
        self.lease_name = tenant_lease_name(settings.fleet_name, spec.key)
        self.fence = Fence(f"tenant {spec.key}")
        self.elector = LeaseElector(
            ctx.kube, name=self.lease_name, namespace=ctx.namespace, identity=ctx.identity,
            lease_duration=settings.leader_elect_lease_duration, renew_deadline=settings.leader_elect_renew_deadline,
            retry_period=settings.leader_elect_retry_period, fence=self.fence,
            on_failure=lambda step: self.metrics.lease_failures.labels(self.lease_name, step).inc(),
            labels={TENANT_LEASE_LABEL: settings.fleet_name}, annotate=self._annotations,
        )
        self.runtime: TenantRuntime | None = None
        self.state = "acquiring"
        self.acquired_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return self.spec.key

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"tenant-slot {self.key}")

    def update(self, spec: TenantSpec) -> None:
        self.spec = spec
        if self.runtime is not None:
            self.runtime.update(spec)

    def status(self) -> dict[str, Any]:
        if self.runtime is not None:
            out = self.runtime.status()
        else:
            out = {"state": self.state, "credentials": credential_state(self._ctx.services, self.spec.user_email,
                                                                        self.spec.region)}
        out["replica"] = self._ctx.identity
        out["lease"] = self.state
        return out

    def _annotations(self) -> dict[str, str]:
        status = self.status()
        # Only what doctor --all-tenants shows; kept small (the Lease is written on every renewal).
        brief = {k: status.get(k) for k in ("replica", "state", "nodes", "uninitialized", "synced", "last_sync",
                                            "failures", "last_error")}
        credentials = status.get("credentials") or {}
        brief["credentials"] = {k: credentials.get(k) for k in ("state", "provider", "reason")}
        text = self._ctx.services.redactor.redact_text(json.dumps(brief, separators=(",", ":"), default=str))
        return {TENANT_ANNOTATION: self.key, STATUS_ANNOTATION: text[:2048]}

    async def _serve(self) -> None:
        structlog.contextvars.bind_contextvars(cluster=self.key)
        while True:
            try:
                self.state = "acquiring"
                await self.elector.acquire()
                self.acquired_at = time.time()
                self.state = "serving"
                self.metrics.leader.set(1)
                log.info("tenant_lease_acquired", lease=self.elector.lease, identity=self._ctx.identity)
                self.runtime = TenantRuntime(self.spec, self._ctx.services, credentials=self._ctx.credentials,
                                             fence=self.fence, metrics=self.metrics, replica=self._ctx.identity,
                                             fleet=self._ctx.settings.fleet_name)
                self.runtime.start()
                await self.elector.keep()  # returns only by raising LeaderLost (the fence is closed first)
            except LeaderLost as exc:
                log.warning("tenant_lease_lost", lease=self.elector.lease, reason=str(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # contained: this tenant only
                log.exception("tenant_slot_failed", error=type(exc).__name__)
                await asyncio.sleep(self._ctx.settings.leader_elect_retry_period)
            finally:
                self.metrics.leader.set(0)
                runtime, self.runtime = self.runtime, None
                if runtime is not None:
                    await asyncio.shield(runtime.stop(0.0))  # the fence is closed: nothing more may be written

    async def release(self, drain: float) -> None:
        """Stop serving in the safe order: drain the runtime (writes still fenced by a renewed Lease), stop
        renewing, release the Lease (closing the fence first). Bounded: ``drain`` + the release timeout."""
        self.state = "releasing"
        runtime = self.runtime
        if runtime is not None:
            await runtime.stop(drain)
        await cancel_and_wait(self._task)
        await self.elector.release(timeout=LEASE_RELEASE_TIMEOUT)
        self.state = "released"
        self.metrics.remove()
        self._ctx.credentials.release(self.key)


class FleetManager:
    """Discovery → assignment → per-tenant Leases → runtimes, for one replica."""

    def __init__(self, settings: Settings, services: Services, management: KubeTransport, *, namespace: str,
                 identity: str) -> None:
        self.settings = settings
        self.identity = identity
        self.namespace = namespace
        self._ctx = _Context(settings, services, CredentialUsers(services), management, namespace, identity)
        self.discovery = TenantDiscovery(management, discovery_options(settings))
        self.membership = Membership(management, membership_options(settings, namespace=namespace,
                                                                    identity=identity))
        self.leases = Informer(management, leases_path(namespace),
                               label_selector=f"{TENANT_LEASE_LABEL}={settings.fleet_name}",
                               watch_timeout=settings.watch_timeout, name="tenant-leases")
        self.discovery.add_handler(self._on_tenant)
        self.membership.add_handler(lambda live: self._wake.set())
        self.leases.add_handler(self._on_lease)
        self.slots: dict[str, TenantSlot] = {}
        self._releasing: dict[str, asyncio.Task[None]] = {}
        #: Lease name → (spec, monotonic time its record last changed): fed to electors created later.
        self._lease_seen: dict[str, tuple[dict[str, Any], float]] = {}
        self.assigned: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    # -- supervised tasks ----------------------------------------------------------------------------------------

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The fleet machinery, each to run under the process supervisor (any of them ending is fatal)."""
        return {"tenant-discovery": self.discovery.run(), "fleet-membership": self.membership.run(),
                "tenant-leases": self.leases.run(), "fleet-balancer": self.balance()}

    @property
    def ready(self) -> bool:
        return (self.discovery.synced.is_set() and self.membership.synced.is_set()
                and self.leases.synced.is_set())

    async def balance(self) -> None:
        """Re-decide which tenants to serve whenever tenants, members or time say so; runs until cancelled."""
        for event in (self.discovery.synced, self.membership.synced, self.leases.synced):
            await event.wait()
        log.info("fleet_ready", identity=self.identity, tenants=len(self.discovery.tenants),
                 members=len(self.membership.live))
        retry = self.settings.leader_elect_retry_period
        while True:
            self._wake.clear()
            if not self._stopping:
                self._rebalance()
                await self._collect_garbage()
            # Also on a timer: our own liveness depends on time (the announcer's last renewal).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(retry):
                    await self._wake.wait()

    # -- deciding ------------------------------------------------------------------------------------------------

    def live(self) -> frozenset[str]:
        """The live replicas: the members seen through the watch, and this one while its member Lease is fresh
        (our own renewal is news before its watch event arrives, and a replica that cannot renew is not live)."""
        live = set(self.membership.live)
        announcer = self.membership.announcer
        fresh = (announcer is not None and announcer.last_renewed is not None
                 and time.monotonic() - announcer.last_renewed < self.settings.leader_elect_lease_duration)
        if fresh:
            live.add(self.identity)
        else:
            live.discard(self.identity)
        return frozenset(live)

    def _rebalance(self) -> None:
        live = self.live()
        tenants = self.discovery.tenants
        owners = assign(tenants, live)
        mine = {key for key, owner in owners.items() if owner == self.identity}
        self.assigned = mine
        for key in sorted(mine - set(self.slots) - set(self._releasing)):
            slot = TenantSlot(self._ctx, tenants[key])
            seen = self._lease_seen.get(slot.lease_name)
            if seen is not None:
                slot.elector.observe(*seen)
            self.slots[key] = slot
            slot.start()
            log.info("tenant_assigned", tenant=key, members=len(live), capacity=capacity(len(tenants), len(live)))
        for key in sorted(set(self.slots) - mine):
            slot = self.slots.pop(key)
            removed = key not in tenants
            log.info("tenant_unassigned", tenant=key, reason="removed" if removed else "assigned elsewhere",
                     to=owners.get(key))
            self._releasing[key] = asyncio.get_running_loop().create_task(self._release(slot, removed=removed),
                                                                          name=f"tenant-release {key}")
        families = self._ctx.services.metrics.families
        families.fleet_tenants.labels("known").set(len(tenants))
        families.fleet_tenants.labels("invalid").set(len(self.discovery.problems))
        families.fleet_tenants.labels("assigned").set(len(mine))
        families.fleet_tenants.labels("served").set(sum(1 for s in self.slots.values() if s.state == "serving"))
        families.fleet_members.set(len(live))

    async def _release(self, slot: TenantSlot, *, removed: bool, drain: float | None = None,
                       reason: str | None = None) -> None:
        structlog.contextvars.bind_contextvars(cluster=slot.key)
        started = time.monotonic()
        try:
            await slot.release(min(HANDOVER_DRAIN, self.settings.shutdown_timeout) if drain is None else drain)
            if removed:
                with contextlib.suppress(KubeError):
                    await self._ctx.kube.request("DELETE", f"{leases_path(self.namespace)}/{slot.lease_name}")
            log.info("tenant_released", reason=reason or ("removed" if removed else "handed over"),
                     seconds=round(time.monotonic() - started, 3))
        except Exception:
            log.exception("tenant_release_failed")
        finally:
            self._releasing.pop(slot.key, None)
            self._wake.set()

    def _on_tenant(self, event: TenantEvent) -> None:
        slot = self.slots.get(event.key)
        if event.type is TenantEventType.CHANGED and slot is not None and event.new is not None:
            log.info("tenant_updating", tenant=event.key, fields=sorted(event.fields))
            slot.update(event.new)
        self._wake.set()

    def _on_lease(self, key: str, old: JSON | None, new: JSON | None) -> None:
        name = key.split("/", 1)[-1]
        if new is None:
            self._lease_seen.pop(name, None)
            return
        spec = dict(new.get("spec") or {})
        record = (spec.get("holderIdentity") or "", spec.get("renewTime"), spec.get("leaseTransitions"))
        previous = self._lease_seen.get(name)
        if previous is None or (previous[0].get("holderIdentity") or "", previous[0].get("renewTime"),
                                previous[0].get("leaseTransitions")) != record:
            self._lease_seen[name] = (spec, time.monotonic())
            for slot in self.slots.values():
                if slot.lease_name == name:
                    slot.elector.observe(spec, self._lease_seen[name][1])

    async def _collect_garbage(self) -> None:
        """Delete tenant Leases of tenants that no longer exist and that nobody renews (a replica that served such
        a tenant died before it could delete it). Guarded by resourceVersion: a renewed Lease is kept."""
        if not self.discovery.synced.is_set():
            return
        now = time.monotonic()
        known = set(self.discovery.tenants) | set(self.discovery.problems) | set(self.slots) | set(self._releasing)
        duration = self.settings.leader_elect_lease_duration
        for key, lease in list(self.leases.store.items()):
            meta = lease.get("metadata") or {}
            tenant = (meta.get("annotations") or {}).get(TENANT_ANNOTATION)
            name = str(meta.get("name") or "")
            seen = self._lease_seen.get(name)
            if tenant in known or seen is None or now - seen[1] < 2 * duration:
                continue
            body: JSON = {"apiVersion": "v1", "kind": "DeleteOptions",
                          "preconditions": {"resourceVersion": meta.get("resourceVersion")}}
            try:
                await self._ctx.kube.request("DELETE", f"{leases_path(self.namespace)}/{name}", body=body)
                log.info("tenant_lease_forgotten", lease=key, tenant=tenant)
            except (Conflict, KubeNotFound):
                pass
            except KubeError as exc:
                log.debug("tenant_lease_forget_failed", lease=key, **exc.log_fields())

    # -- shutting down -------------------------------------------------------------------------------------------

    async def stop(self, drain: float) -> None:
        """SIGTERM: take no new tenant, then hand every tenant back in the safe order, all at once."""
        self._stopping = True
        slots, self.slots = list(self.slots.values()), {}
        log.info("fleet_stopping", tenants=len(slots), releasing=len(self._releasing))
        await asyncio.gather(*(self._release(slot, removed=False, drain=drain, reason="stopping") for slot in slots),
                             *self._releasing.values(), return_exceptions=True)

    # -- what it looks like --------------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """Every tenant this replica knows of (``/debug/tenants``): its assigned and its actual owner (the Lease
        holder), and what the holder last published. No secret, no kubeconfig content."""
        live = self.live()
        tenants = self.discovery.tenants
        owners = assign(tenants, live)
        holders = self._holders()
        rows: list[dict[str, Any]] = []
        for key in sorted(set(tenants) | set(self.discovery.problems)):
            spec = tenants.get(key)
            problem = self.discovery.problems.get(key)
            row: dict[str, Any] = {"tenant": key, "problem": str(problem) if problem is not None else None}
            if spec is not None:
                holder, status = holders.get(tenant_lease_name(self.settings.fleet_name, key), (None, None))
                slot = self.slots.get(key)
                row.update(cluster=spec.cluster_name, user_email=spec.user_email, region=spec.region,
                           api_server=spec.api_server, assigned_to=owners.get(key), owner=holder,
                           served_here=slot is not None and slot.state == "serving",
                           status=slot.status() if slot is not None else status)
            rows.append(row)
        return {"mode": "fleet", "replica": self.identity, "members": sorted(live), "ready": self.ready,
                "capacity": capacity(len(tenants), len(live)), "tenants": rows}

    def _holders(self) -> dict[str, tuple[str | None, dict[str, Any] | None]]:
        """Lease name → (live holder or None, its published status)."""
        now = time.monotonic()
        out: dict[str, tuple[str | None, dict[str, Any] | None]] = {}
        for lease in self.leases.store.values():
            meta = lease.get("metadata") or {}
            spec = lease.get("spec") or {}
            name = str(meta.get("name") or "")
            seen = self._lease_seen.get(name)
            duration = float(spec.get("leaseDurationSeconds") or self.settings.leader_elect_lease_duration)
            holder = spec.get("holderIdentity") or None
            if holder and seen is not None and now - seen[1] >= duration:
                holder = None  # not renewed for a lease duration: nobody serves it
            try:
                status = json.loads((meta.get("annotations") or {}).get(STATUS_ANNOTATION) or "null")
            except ValueError:
                status = None
            out[name] = (holder, status if isinstance(status, dict) else None)
        return out
