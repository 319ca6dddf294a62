"""What the tenants of one fleet replica share, and what each of them must not keep after it is gone.

- One credential chain (:func:`ccm.tenant.services.build_services`): one identity-provider client and one token
  cache keyed by (user, region, provider), so two clusters of one owner in one region share a token.
- One aiohttp session for every tenant's CloudSigma client: one connection pool per CloudSigma endpoint.
- One request budget per region (:class:`~ccm.fleet.budget.FairBudget`), fair across tenants.
- One metrics registry: each tenant gets its ``cluster``-labelled view, removed with the tenant.

:class:`CredentialUsers` counts which tenants use which (user, region) token: when the last one stops (the tenant
was deleted, or its owner email or region changed), that token is dropped from the cache and retired from the log
redactor, so nothing of a tenant outlives it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import structlog

from ccm.config import Settings
from ccm.fleet.budget import FairBudget
from ccm.logging import Redactor
from ccm.metrics import Metrics
from ccm.tenant.services import Services, build_services
from cloudsigma.client import USER_AGENT
from credentials.cache import CacheKey

__all__ = ["CredentialUsers", "fleet_services"]

log = structlog.get_logger(__name__)

CredentialsKey = tuple[str, str]
"""(lower-cased user email, region): see :attr:`ccm.clusters.tenants.TenantSpec.credentials_key`."""


def fleet_services(settings: Settings, redactor: Redactor, metrics: Metrics) -> Services:
    """The shared services of a fleet replica (call inside the event loop: the session binds to it)."""
    session = aiohttp.ClientSession(
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"}, raise_for_status=False,
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=64),
    )
    budget = FairBudget(settings.cloudsigma_requests_per_minute) if settings.cloudsigma_requests_per_minute else None

    def throttle(region: str, cluster: str) -> Callable[[str], Awaitable[None]]:
        assert budget is not None
        waits = metrics.for_cluster(cluster).cloud_budget_waits.labels(region)

        async def wait_turn(method: str) -> None:
            if await budget.acquire(region, cluster):
                waits.inc()

        return wait_turn

    return build_services(settings, redactor, metrics=metrics, session=session,
                          throttle=throttle if budget is not None else None)


class CredentialUsers:
    """Which tenants use which (user, region) credential; the last user gone drops it."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._by_tenant: dict[str, CredentialsKey] = {}

    def users(self, key: CredentialsKey) -> set[str]:
        return {tenant for tenant, used in self._by_tenant.items() if used == key}

    def use(self, tenant: str, key: CredentialsKey) -> None:
        """``tenant`` now acts as ``key`` (a re-key drops its previous credential if nobody else uses it)."""
        previous = self._by_tenant.get(tenant)
        self._by_tenant[tenant] = key
        if previous is not None and previous != key:
            self._drop_if_unused(previous, reason="re-keyed", tenant=tenant)

    def release(self, tenant: str) -> None:
        """``tenant`` is gone from this replica: its credential is dropped unless another tenant uses it."""
        previous = self._by_tenant.pop(tenant, None)
        if previous is not None:
            self._drop_if_unused(previous, reason="tenant stopped", tenant=tenant)

    def _drop_if_unused(self, key: CredentialsKey, *, reason: str, tenant: str) -> None:
        if self.users(key):
            return
        email, region = key
        chain = self._services.chain
        dropped = 0
        for provider in chain.providers:
            credential = chain.cache.peek(CacheKey.of(email, region, provider))
            if credential is not None:
                self._services.source.invalidate(credential)  # out of the cache, retired from the redactor
                dropped += 1
        log.info("tenant_credentials_dropped", tenant=tenant, cs_user=email, region=region, reason=reason,
                 dropped=dropped)
