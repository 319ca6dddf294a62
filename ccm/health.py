"""``/healthz``, ``/readyz`` and ``/metrics`` on one aiohttp server.

Neither probe depends on CloudSigma or the identity provider: a cloud outage must not restart the CCM
(that would only add token exchanges to the outage).
- ``/healthz``: the event loop answers and, when this process leads, the node watch has shown activity
  (an event, a bookmark or a relist) within ``watch_stale_after``.
- ``/readyz``: the initial node list has been synced — or this replica is a standby (not leading), which is
  ready by design so rolling updates are not blocked.
- ``/debug/tenants`` (fleet mode): every tenant of the management cluster — assigned and actual owner (the
  replica holding its Lease), nodes, uninitialized nodes, last sync, credential state, last error, or why it
  cannot be served. Never a secret or kubeconfig content (and scrubbed by the redactor too).
- ``/debug/credentials``: where each credential provider stands (JSON): configured or not, how the client
  authenticates, last success and failure with time and reason, the verified identity and expiry of the newest
  token; with ``--token-broker``, each target Secret: what it holds, the last write, the token's expiry and the
  last error. Never a token or a secret (and the daemon's log redactor scrubs the answer too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ccm.metrics import Metrics


@dataclass
class HealthState:
    leading: bool = False
    synced: bool = False
    last_watch_activity: Callable[[], float] | None = None
    watch_stale_after: float = 900.0
    #: The credential chain's ``status()`` (see :meth:`credentials.chain.CredentialChain.status`).
    credentials: Callable[[], list[dict[str, Any]]] | None = None
    #: Scrubs known secrets from text served (the log redactor's ``redact_text``).
    redact: Callable[[str], str] | None = None
    #: Fleet mode: the manager's view of every tenant (:meth:`ccm.fleet.manager.FleetManager.view`).
    tenants: Callable[[], dict[str, Any]] | None = None
    #: The token broker's targets (:meth:`ccm.tokenbroker.controller.TokenBroker.status`; fleet mode: per tenant).
    token_broker: Callable[[], Any] | None = None


def create_app(state: HealthState, metrics: Metrics) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        if state.leading and state.last_watch_activity is not None:
            idle = time.monotonic() - state.last_watch_activity()
            if idle > state.watch_stale_after:
                return web.Response(status=503, text=f"node watch idle for {idle:.0f}s\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if not state.leading:
            return web.Response(text="ok (standby)\n")
        if not state.synced:
            return web.Response(status=503, text="initial node list not synced yet\n")
        return web.Response(text="ok\n")

    async def debug_credentials(_: web.Request) -> web.Response:
        providers = state.credentials() if state.credentials is not None else []
        body: dict[str, Any] = {"generated_at": round(time.time(), 3), "providers": providers}
        if state.token_broker is not None:
            body["token_broker"] = state.token_broker()
        text = json.dumps(body, indent=2, default=str)
        if state.redact is not None:
            text = state.redact(text)
        return web.Response(text=text + "\n", content_type="application/json")

    async def debug_tenants(_: web.Request) -> web.Response:
        if state.tenants is None:
            return web.Response(status=404, text="no tenants: this process runs in single-tenant mode\n")
        text = json.dumps({"generated_at": round(time.time(), 3), **state.tenants()}, indent=2, default=str)
        if state.redact is not None:
            text = state.redact(text)
        return web.Response(text=text + "\n", content_type="application/json")

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/debug/credentials", debug_credentials)
    app.router.add_get("/debug/tenants", debug_tenants)
    return app


async def start_server(app: web.Application, bind_address: str) -> web.AppRunner:
    host, _, port = bind_address.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]") or "0.0.0.0", int(port))  # noqa: S104 - configurable bind
    await site.start()
    return runner
