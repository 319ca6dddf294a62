"""One tenant cluster served inside a fleet replica: its controllers, built from its :class:`TenantSpec` on the
replica's shared services, kept running until the replica stops serving it.

A runtime is a bulkhead. Everything that can be slow or broken for one tenant is its own: the ApiClient of its
kubeconfig (its own connection pool: an API server that hangs only holds this tenant's requests), its node watcher,
work queue, per-node backoff and a bounded number of workers (``--fleet-concurrent-node-syncs``), its server
snapshot and its CloudSigma client acting as its owner (the shared token cache keys tokens by user and region, so
an identity provider refusing one owner puts only that key in backoff). A build that fails (a kubeconfig the
client library cannot load) or controllers that end are retried with exponential backoff, never propagated to the
replica; the failure is logged, counted in ``cloudsigma_ccm_tenant_failures_total`` and shown by
``/debug/tenants``.

Every log line of the tenant's tasks carries ``cluster=<namespace/name>`` (structlog context variables, bound in
the runtime's task and inherited by every task it starts). A changed spec (owner email or region: new credentials;
a rotated kubeconfig: a new client) rebuilds the components without touching other tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog

from ccm.clusters.tenants import TenantSpec, kubeconfig_dict
from ccm.config import Settings
from ccm.fencing import Fence, Fenced
from ccm.fleet.shared import CredentialUsers
from ccm.kube.clients import KubeconfigError, api_client_from_dict
from ccm.kube.errors import Conflict, KubeError
from ccm.kube.transport import JSON, KubeTransport
from ccm.metrics import Metrics
from ccm.supervisor import cancel_and_wait
from ccm.tenant.controllers import Components, TenantIdentity, build_tenant, run_controllers
from ccm.tenant.services import Services
from cloudsigma.client import USER_AGENT

__all__ = ["TenantRuntime", "TenantTransport", "credential_state", "tenant_connections"]

log = structlog.get_logger(__name__)

INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 60.0
RESTART_DRAIN = 5.0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class TenantTransport(KubeTransport):
    """The tenant's transport, remembering its last failed and last successful request (``/debug/tenants``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_error: tuple[float, str] | None = None
        self.last_ok: float | None = None

    def _note(self, exc: KubeError) -> None:
        # Refused by our own fence, or a 409 of a write guarded by resourceVersion (re-read and decided again):
        # part of normal work, not the tenant's problem.
        if not isinstance(exc, Fenced | Conflict):
            self.last_error = (time.time(), _describe(exc))

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        try:
            answer = await super().request(method, path, **kwargs)
        except KubeError as exc:
            self._note(exc)
            raise
        self.last_ok = time.time()
        return answer

    async def stream(self, path: str, *, query: Mapping[str, Any], timeout: float) -> AsyncIterator[JSON]:
        try:
            async for event in super().stream(path, query=query, timeout=timeout):
                self.last_ok = time.time()
                yield event
        except KubeError as exc:
            self._note(exc)
            raise


def tenant_connections(settings: Settings) -> int:
    """Connections a tenant's client may hold at once: its two watches (Nodes; CSRs when approving), one request
    per worker, one for Events and the lifecycle. Without a cap a burst opens one per concurrent request (10+);
    each TLS connection costs a handshake and a 256 KiB read buffer (CPython's asyncio SSL protocol), so a fleet
    of tenants initialising at once paid tens of MiB and ~40 % of its CPU for connections it then let idle out
    (bench/fleet_analysis.md)."""
    return settings.fleet_concurrent_node_syncs + 3


def credential_state(services: Services, email: str, region: str) -> dict[str, Any]:
    """Where the shared chain stands for (``email``, ``region``): the provider serving it, or why none does."""
    diagnostics = services.chain.diagnostics()
    email = email.lower()
    failing = [f for f in diagnostics["failing"] if f["user"] == email and f["region"] == region]
    provider = services.chain.last_used(email, region)
    state: dict[str, Any] = {"user": email, "region": region, "provider": provider}
    if failing:
        state.update(state="failing", reason=failing[0]["reason"], message=failing[0]["message"],
                     failing_providers=[f["provider"] for f in failing])
    else:
        state["state"] = "ok" if provider else "unknown"
    return state


class TenantRuntime:
    """Builds and runs one tenant's controllers; rebuilt on a spec change, retried with backoff on failure."""

    def __init__(self, spec: TenantSpec, services: Services, *, credentials: CredentialUsers, fence: Fence,
                 metrics: Metrics, replica: str, fleet: str) -> None:
        self.spec = spec
        self._services = services
        self._settings: Settings = services.settings
        self._credentials = credentials
        self._fence = fence
        self.metrics = metrics
        self._user_agent = f"{USER_AGENT.split(' ', 1)[0]} (fleet {fleet}; replica {replica})"
        self.parts: Components | None = None
        self.transport: TenantTransport | None = None
        self.state = "starting"
        self.since = time.time()
        self.failures = 0
        self.last_error: tuple[float, str] | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return self.spec.key

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"tenant {self.key}")
        return self._task

    def update(self, spec: TenantSpec) -> None:
        """A new spec (owner email, region or kubeconfig changed): rebuild with it, keeping the Lease."""
        self.spec = spec
        self._changed.set()

    async def stop(self, drain: float) -> None:
        """Stop taking work, let in-flight reconciles finish within ``drain``, flush events, then end."""
        self.state = "stopping"
        parts = self.parts
        if parts is not None:
            with contextlib.suppress(Exception):
                await parts.controller.shutdown(drain)
                await parts.events.flush(timeout=2.0)
        await cancel_and_wait(self._task)
        self.state = "stopped"

    # -- the runtime's task -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        structlog.contextvars.bind_contextvars(cluster=self.key)  # this task and every task it starts
        backoff = INITIAL_BACKOFF
        while True:
            self._changed.clear()
            spec = self.spec
            parts: Components | None = None
            started = time.monotonic()
            try:
                parts = await self._build(spec)
                self.parts = parts
                self.state, self.since = "running", time.time()
                log.info("tenant_started", cs_user=spec.user_email, region=spec.region, api_server=spec.api_server,
                         workers=self._settings.fleet_concurrent_node_syncs)
                if await self._serve(parts):
                    log.info("tenant_rebuilding", reason="spec changed")
                    backoff = INITIAL_BACKOFF
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - started > MAX_BACKOFF:
                    backoff = INITIAL_BACKOFF  # it ran well for a while: a new episode, not the same one
                self._failed(exc, backoff)
            finally:
                self.parts = None
                if parts is not None:
                    await asyncio.shield(self._close(parts))
            # Failed: wait (or rebuild at once when the spec changes: a fixed kubeconfig needs no backoff).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff * (0.8 + 0.4 * random.random())):
                    await self._changed.wait()
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _build(self, spec: TenantSpec) -> Components:
        source = f"Secret {spec.namespace}/{spec.cluster_name}-kubeconfig"
        try:
            api = await api_client_from_dict(kubeconfig_dict(spec), source=source, user_agent=self._user_agent,
                                             max_connections=tenant_connections(self._settings))
        except KubeconfigError as exc:
            raise TenantBuildError(str(exc)) from None
        self._credentials.use(self.key, spec.credentials_key)
        identity = TenantIdentity(cluster=self.key, user_email=spec.user_email, region=spec.region,
                                  zone=spec.region, workers=self._settings.fleet_concurrent_node_syncs,
                                  name=spec.cluster_name)
        holder: list[TenantTransport] = []

        def transport(*args: Any, **kwargs: Any) -> KubeTransport:
            made = TenantTransport(*args, **kwargs)
            holder.append(made)
            return made

        # A tenant API server that hangs holds this tenant's requests for at most the HTTP timeout.
        try:
            parts = build_tenant(self._services, api, identity, metrics=self.metrics, fence=self._fence,
                                 kube_factory=transport, kube_timeout=self._settings.http_timeout)
        except BaseException:
            await api.close()
            raise
        self.transport = holder[0]
        return parts

    async def _serve(self, parts: Components) -> bool:
        """Run the controllers until the spec changes (→ True) or they fail (raises)."""
        controllers = asyncio.create_task(run_controllers(parts), name=f"controllers {self.key}")
        changed = asyncio.create_task(self._changed.wait())
        try:
            await asyncio.wait({controllers, changed}, return_when=asyncio.FIRST_COMPLETED)
            if changed.done():
                await parts.controller.shutdown(RESTART_DRAIN)
                await parts.events.flush(timeout=2.0)
                return True
            controllers.result()  # raises TaskEnded
            if self.state == "stopping":  # stop() drained the workers and cancels this task next
                await asyncio.Event().wait()
            raise TenantBuildError("the controllers stopped")
        finally:
            await cancel_and_wait(controllers, changed)

    async def _close(self, parts: Components) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await parts.close()

    def _failed(self, exc: Exception, backoff: float) -> None:
        self.failures += 1
        self.state = "failing"
        self.since = time.time()
        self.last_error = (time.time(), _describe(exc))
        self.metrics.tenant_failures.inc()
        log.warning("tenant_failed", error=self.last_error[1], failures=self.failures, retry_in=round(backoff, 1))

    # -- what it looks like --------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Plain data for ``/debug/tenants`` and the tenant's Lease; no secret, no kubeconfig content."""
        spec = self.spec
        parts = self.parts
        errors = [e for e in (self.last_error, self.transport.last_error if self.transport else None)
                  if e is not None]
        last_error = max(errors) if errors else None
        out: dict[str, Any] = {
            "state": self.state, "since": round(self.since, 3), "failures": self.failures,
            "nodes": None, "uninitialized": None, "synced": False, "last_sync": None,
            "last_error": None if last_error is None else {"at": round(last_error[0], 3), "error": last_error[1]},
            "credentials": credential_state(self._services, spec.user_email, spec.region),
        }
        if parts is not None and parts.broker is not None:
            out["token_broker"] = parts.broker.status()
        if parts is not None:
            watcher = parts.watcher
            out["nodes"] = len(watcher.store)
            out["uninitialized"] = parts.controller.uninitialized
            out["synced"] = watcher.synced.is_set()
            if watcher.synced.is_set():
                out["last_sync"] = round(time.time() - (time.monotonic() - watcher.last_activity), 3)
        return out


class TenantBuildError(Exception):
    """A tenant's components could not be built or ended (retried with backoff)."""
