"""Lease-based leader election in the management cluster.

Semantics of client-go's leaderelection: a candidate takes the Lease when it is free or its holder has not
renewed it for ``lease_duration`` (judged by *our* clock since we last saw the record change, so clock skew
between replicas does not matter); the leader renews every ``retry_period`` and gives up when no renewal
succeeded for ``renew_deadline``. API errors count as failed attempts, not crashes: a short outage of the
management API does not restart the leader. While the lease is held, the elector grants its
:class:`~ccm.fencing.Fence` until *start of the last successful renewal + renew deadline*; every renewal attempt is
bounded by that same moment. When it passes, the fence is closed (tenant writes refused, those in flight
cancelled) and only then :class:`LeaderLost` is raised, which the daemon turns into a non-zero exit so the
Deployment restarts the pod. On shutdown the lease is released (bounded) so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from ccm.fencing import Fence
from ccm.kube.errors import KubeError, KubeNotFound
from ccm.kube.transport import JSON, KubeTransport

log = structlog.get_logger(__name__)


class LeaderLost(Exception):
    """The lease could not be renewed within the deadline."""


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """One Lease: acquire it, keep it, give it up; grants its :class:`~ccm.fencing.Fence` while it is held.

    Each renewal attempt is bounded by the time left until ``start of the last successful renewal + renew
    deadline`` (client-go's context deadline); the fence is granted until that same moment, so writes stop then
    even if the attempt, or the whole event loop's view of the management API, hangs. A process may run several
    electors (one per lease), each with its own fence.
    """

    def __init__(self, kube: KubeTransport, *, name: str, namespace: str, identity: str, lease_duration: float,
                 renew_deadline: float, retry_period: float, clock: Callable[[], float] = time.monotonic,
                 fence: Fence | None = None, on_failure: Callable[[str], None] | None = None,
                 labels: Mapping[str, str] | None = None,
                 annotate: Callable[[], Mapping[str, str]] | None = None) -> None:
        self._kube = kube
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self._duration = lease_duration
        self._deadline = renew_deadline
        self._retry = retry_period
        self._clock = clock
        self.fence = fence if fence is not None else Fence(f"lease {namespace}/{name}", clock=clock)
        self._on_failure = on_failure
        #: Labels of the Lease when we create it (a fleet finds its tenant Leases by label).
        self._labels = dict(labels or {})
        #: Annotations written with every acquisition and renewal (a fleet publishes each tenant's status there).
        self._annotate = annotate
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        #: Clock value at the start of the last successful acquisition or renewal.
        self.renewed_at = -math.inf
        self.leading = False

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def _path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def _spec(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro_time()
        taking_over = previous is None or previous.get("holderIdentity") != self.identity
        transitions = int((previous or {}).get("leaseTransitions") or 0) + (1 if previous and taking_over else 0)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, int(self._duration)),
            "acquireTime": now if taking_over else (previous or {}).get("acquireTime", now),
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def observe(self, spec: Mapping[str, Any], at: float) -> None:
        """A record of the Lease seen elsewhere (a watch) at ``at`` on our clock. A holder is judged silent by how
        long its record stayed unchanged; a watch that saw the record all along lets a new elector take over an
        expired Lease at once, instead of waiting a whole duration from its own first look (client-go's rule)."""
        record = (spec.get("holderIdentity") or "", spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, at

    def _metadata(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        meta = dict(metadata)
        if self._annotate is not None:
            try:
                extra = dict(self._annotate())
            except Exception:  # a status callback must never cost the lease
                log.exception("lease_annotation_failed", lease=self.lease)
                extra = {}
            meta["annotations"] = {**(meta.get("annotations") or {}), **extra}
        return meta

    def _failed(self, step: str, exc: KubeError | None = None) -> None:
        """A lease call that did not succeed: a warning (a leader near its deadline, or a standby that cannot
        see the lease, is worth an operator's attention) and a metric."""
        fields = exc.log_fields() if exc is not None else {"error": "timeout"}
        log.warning("lease_call_failed", lease=self.lease, identity=self.identity, step=step,
                    leading=self.leading, **fields)
        if self._on_failure is not None:
            self._on_failure(step)

    async def try_acquire_or_renew(self) -> bool:
        try:
            lease = await self._kube.request("GET", self._path)
        except KubeNotFound:
            meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
            if self._labels:
                meta["labels"] = dict(self._labels)
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": self._metadata(meta),
                    "spec": self._spec(None)}
            try:
                await self._kube.request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases",
                                         body=body)
                return True
            except KubeError as exc:
                self._failed("create", exc)
                return False
        except KubeError as exc:
            self._failed("get", exc)
            return False
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if holder and holder != self.identity and now < self._observed_at + self._duration:
            return False  # somebody else holds a live lease: not a failure
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": self._metadata(lease.get("metadata") or {}), "spec": self._spec(spec if holder else None)}
        try:
            updated: JSON = await self._kube.request("PUT", self._path, body=body)
        except KubeError as exc:
            self._failed("update", exc)
            return False
        new_spec = updated.get("spec") or {}
        self._observed = (new_spec.get("holderIdentity"), new_spec.get("renewTime"), new_spec.get("leaseTransitions"))
        self._observed_at = self._clock()
        return True

    def _renewed(self, started: float) -> None:
        self.renewed_at = started
        self.fence.grant(started + self._deadline)

    async def acquire(self) -> None:
        """Wait until the lease is ours; the fence is granted from then on."""
        while True:
            started = self._clock()
            if await self.try_acquire_or_renew():
                self.leading = True
                self._renewed(started)
                return
            await asyncio.sleep(self._retry * (1 + 0.2 * random.random()))

    async def keep(self) -> None:
        """Renew every ``retry_period``; when no renewal succeeded by ``last success + renew_deadline``, close the
        fence (refusing new writes and cancelling those in flight) and only then raise :class:`LeaderLost`."""
        while True:
            deadline = self.renewed_at + self._deadline
            await asyncio.sleep(max(0.0, min(self._retry, deadline - self._clock())))
            started = self._clock()
            ok = False
            if started < deadline:
                try:
                    async with asyncio.timeout(deadline - started):
                        ok = await self.try_acquire_or_renew()
                except TimeoutError:
                    self._failed("deadline")
            if ok:
                self._renewed(started)
            elif self._clock() >= deadline:
                self.leading = False
                reason = f"lease {self.lease} not renewed for {self._deadline:g}s"
                self.fence.close(reason)
                raise LeaderLost(reason)

    async def release(self, timeout: float = 3.0) -> None:
        """Give the lease up (clean shutdown) so a standby need not wait for it to expire. Closes the fence
        first: nothing may be written once another replica can take over. Bounded by ``timeout``."""
        self.fence.close("lease released", expected=True)
        if not self.leading:
            return
        self.leading = False
        try:
            async with asyncio.timeout(timeout):
                lease = await self._kube.request("GET", self._path, timeout=timeout)
                spec = dict(lease.get("spec") or {})
                if spec.get("holderIdentity") == self.identity:
                    spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time())
                    await self._kube.request("PUT", self._path, body={**lease, "spec": spec}, timeout=timeout)
                    log.info("leader_released", identity=self.identity, lease=self.lease)
        except (KubeError, TimeoutError) as exc:
            log.warning("lease_release_failed", lease=self.lease, identity=self.identity,
                        error=type(exc).__name__, hint="the lease expires by itself after its duration")
