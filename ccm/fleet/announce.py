"""A replica announces it is alive: its own member Lease in the fleet namespace, renewed periodically.

A member Lease is not a lock: only its replica writes it (a merge patch of ``renewTime``, no read before the
write), others only read it (:mod:`ccm.fleet.membership`). It carries the label ``cloudsigma-ccm/fleet=<fleet>``
so one watch with a label selector finds every member. A clean shutdown deletes it, so the others see the replica
leave at once instead of after a lease duration. Per-tenant Leases (one writer per tenant, fenced) are a different
thing: they use :class:`ccm.leader.LeaseElector`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from ccm.config import check_fleet_name
from ccm.kube.errors import KubeError, KubeNotFound
from ccm.kube.transport import JSON, KubeTransport

log = structlog.get_logger(__name__)

FLEET_LABEL = "cloudsigma-ccm/fleet"
"""Label of member Leases; the value is the fleet's name."""
LEASES_API = "/apis/coordination.k8s.io/v1"


def leases_path(namespace: str) -> str:
    return f"{LEASES_API}/namespaces/{namespace}/leases"


def lease_time(now: datetime | None = None) -> str:
    """A Lease's MicroTime (``acquireTime``/``renewTime``): RFC 3339 in UTC with microseconds."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def member_lease_name(fleet: str, identity: str) -> str:
    """A valid, unique Lease name for ``identity`` (which may hold characters a name cannot, e.g. ``_``)."""
    readable = re.sub(r"[^a-z0-9-]+", "-", identity.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    return f"{fleet}-member-{readable}-{digest}" if readable else f"{fleet}-member-{digest}"


class Announcer:
    """Keeps this replica's member Lease fresh."""

    def __init__(self, kube: KubeTransport, *, namespace: str, fleet: str, identity: str, lease_duration: float,
                 renew_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self.namespace = namespace
        self.fleet = check_fleet_name(fleet)
        self.identity = identity
        self.name = member_lease_name(fleet, identity)
        self._duration = max(1, math.ceil(lease_duration))
        self._interval = renew_interval
        self._clock = clock
        #: Monotonic time of the last successful renewal (None: never).
        self.last_renewed: float | None = None

    @property
    def _path(self) -> str:
        return f"{leases_path(self.namespace)}/{self.name}"

    def _body(self, *, create: bool) -> JSON:
        now = lease_time()
        spec: dict[str, Any] = {"holderIdentity": self.identity, "leaseDurationSeconds": self._duration,
                                "renewTime": now}
        meta: dict[str, Any] = {"labels": {FLEET_LABEL: self.fleet}}
        if create:
            spec["acquireTime"] = now
            meta.update(name=self.name, namespace=self.namespace)
            return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
        return {"metadata": meta, "spec": spec}

    async def renew(self) -> bool:
        """Renew (or create) the member Lease once; False (logged) when the API refused or did not answer.

        Read first, write only after the read answered: a replica whose requests still reach the API server but
        whose answers do not (a connection that hangs after it was opened) must stop announcing itself. A blind
        PATCH would land — its answer lost — and keep the replica "live" to the others, and its tenants assigned
        to it, for another renewal interval after it could no longer hold their Leases."""
        try:
            try:
                await self._kube.request("GET", self._path)
                await self._kube.request("PATCH", self._path, body=self._body(create=False),
                                         content_type="application/merge-patch+json")
            except KubeNotFound:  # first start, or garbage-collected while we were cut off
                await self._kube.request("POST", leases_path(self.namespace), body=self._body(create=True))
        except KubeError as exc:
            log.warning("member_lease_renew_failed", lease=f"{self.namespace}/{self.name}", **exc.log_fields())
            return False
        self.last_renewed = self._clock()
        return True

    async def run(self) -> None:
        """Renew every ``renew_interval`` until cancelled."""
        while True:
            await self.renew()
            await asyncio.sleep(self._interval * (0.9 + 0.2 * random.random()))

    async def leave(self) -> None:
        """Delete the member Lease (clean shutdown), so the others re-shard at once."""
        with contextlib.suppress(KubeError):
            await self._kube.request("DELETE", self._path, timeout=5)
            log.info("member_left", lease=f"{self.namespace}/{self.name}", identity=self.identity)
