"""CloudSigma faults (emulator) under a real kube-apiserver: the CCM rides them out and initializes every node."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from tests.emulator import EmulatorServer, EmulatorState, RequestRecord, public_dhcp_nic
from tests.integration.harness import ALICE
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for
from tests.reliability import registry
from tests.reliability.support import all_initialized, missing, running, warnings_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]
LIST = "GET /servers/detail/"


async def nodes_with_servers(world: EmulatorState, api: ApiClient, prefix: str, count: int) -> list[str]:
    names = [f"{prefix}-{i}" for i in range(count)]
    for name in names:
        world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
        await register_node(api, name)
    return names


def list_requests(world: EmulatorState) -> list[RequestRecord]:
    return sorted(world.requests_to(LIST), key=lambda r: r.started_at)


def gaps_after(records: list[RequestRecord], status: int | None = None,
               fault: str | None = None) -> list[float]:
    """Seconds from the end of each matching request to the start of the next one."""
    out = []
    for prev, nxt in itertools.pairwise(records):
        if (status is not None and prev.status == status) or (fault is not None and prev.fault == fault):
            out.append(nxt.started_at - (prev.started_at + prev.duration_ms / 1000))
    return out


BURSTS: dict[str, tuple[Callable[[EmulatorState], Any], str, int, str, str]] = {
    # id: (inject, fault kind in the emulator log, count, error class logged, words in the Warning event)
    "500-burst": (lambda w: w.fail_next(9, status=500, path_prefix="/servers/"), "error", 9, "ServerError",
                  "status=500"),
    "503-burst": (lambda w: w.fail_next(9, status=503, path_prefix="/servers/"), "error", 9, "ServerError",
                  "status=503"),
    # aiohttp itself resends a request once when its pooled connection is reset: 10 resets = 5 attempts
    "connection-resets": (lambda w: w.reset_next(10, path_prefix="/servers/"), "reset", 10, "TransportError",
                          "connection failed"),
    "malformed-json": (lambda w: w.malformed_next(6, path_prefix="/servers/"), "malformed", 6, "InvalidResponse",
                       "not JSON"),
}


@pytest.mark.parametrize("kind", list(BURSTS))
async def test_burst_of_failures_then_recovery(kind: str, world: EmulatorState, emulator: EmulatorServer,
                                               kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    inject, fault, count, error, words = BURSTS[kind]
    names = await nodes_with_servers(world, kube_api, f"burst-{kind}", 5)
    inject(world)
    registry.record("fault/cloudsigma", f"{kind}: burst then recovery",
                    injected=f"{count} x {fault} on /servers/ ({kind})",
                    verified=f"all {len(names)} nodes initialized; `cloudsigma_call_failed` lines (error={error}) "
                             "with request ids; Warning `CloudSigmaUnavailable` naming the cause; no "
                             "`ServerNotFound`; daemon running",
                    faults=count, nodes_checked=len(names))
    async with running(kube_apiserver.admin_kubeconfig, emulator, http_timeout="2s") as ccm:
        await wait_for(lambda: all_initialized(kube_api, names), 45, message=f"all nodes initialized after {kind}")
        assert ccm.alive, "the daemon stopped"
        assert not ccm.parts.lifecycle.deleted
        failed = ccm.logs.named("cloudsigma_call_failed", error=error)
    hits = [r for r in world.requests if r.fault == fault]
    assert len(hits) == count, f"{len(hits)} of {count} injected faults reached the emulator"
    assert failed, f"no cloudsigma_call_failed line with error={error}"
    assert all(f.get("request_id") for f in failed if f.get("status")), "an HTTP failure logged without request id"
    unavailable = [e for n in names for e in await warnings_for(kube_api, n, "CloudSigmaUnavailable")]
    assert unavailable and all(words in e["message"] for e in unavailable), [e["message"] for e in unavailable]
    assert not [e for n in names for e in await warnings_for(kube_api, n, "ServerNotFound")]
    lost = await missing(kube_api, names)
    registry.lost(len(lost))
    assert not lost


async def test_429_retry_after_is_honoured(world: EmulatorState, emulator: EmulatorServer,
                                           kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    names = await nodes_with_servers(world, kube_api, "throttled", 3)
    world.rate_limit_next(2, retry_after=2, path_prefix="/servers/")
    registry.record("fault/cloudsigma", "429 with Retry-After",
                    injected="2 x 429 `Retry-After: 2` on the server listing",
                    verified="next request 2.0-3.0 s after each 429 (emulator request log); "
                             "`cloudsigma_call_failed` error=RateLimited; all nodes initialized",
                    faults=2, nodes_checked=len(names))
    async with running(kube_apiserver.admin_kubeconfig, emulator) as ccm:
        await wait_for(lambda: all_initialized(kube_api, names), 30, message="nodes initialized after 429s")
        assert ccm.alive
        limited = ccm.logs.named("cloudsigma_call_failed", error="RateLimited")
    records = list_requests(world)
    throttled = [r for r in records if r.status == 429]
    assert len(throttled) == 2
    gaps = gaps_after(records, status=429)
    assert len(gaps) == 2
    # Waited as told (2 s) — not the client's own backoff (at most 0.5-1 s for the first retries), not much more.
    assert all(1.95 <= g <= 3.0 for g in gaps), f"gaps after 429: {gaps}"
    assert len(limited) == 2 and all(line.get("status") == 429 for line in limited)
    lost = await missing(kube_api, names)
    registry.lost(len(lost))
    assert not lost


async def test_hanging_requests_time_out(world: EmulatorState, emulator: EmulatorServer,
                                         kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    names = await nodes_with_servers(world, kube_api, "hung", 3)
    world.faults.hang_max_seconds = 20
    world.hang_next(2, path_prefix="/servers/")
    registry.record("fault/cloudsigma", "hanging requests",
                    injected="2 requests never answered (held 20 s); `http_timeout` 1 s",
                    verified="each retried 1.0-3.5 s after it started (timeout fired); `cloudsigma_call_failed` "
                             "error=RequestTimeout 'no answer within 1s'; all nodes initialized",
                    faults=2, nodes_checked=len(names))
    async with running(kube_apiserver.admin_kubeconfig, emulator, http_timeout="1s") as ccm:
        await wait_for(lambda: all_initialized(kube_api, names), 30, message="nodes initialized after hangs")
        assert ccm.alive
        timeouts = ccm.logs.named("cloudsigma_call_failed", error="RequestTimeout")
    records = list_requests(world)
    hung = [r for r in records if r.fault == "hang"]
    assert len(hung) == 2
    # the client gave up after its 1 s timeout (the emulator would have held each request 20 s)
    gaps = [n.started_at - p.started_at for p, n in itertools.pairwise(records) if p.fault == "hang"]
    assert len(gaps) == 2 and all(1.0 <= g <= 3.5 for g in gaps), f"start-to-start after hangs: {gaps}"
    assert len(timeouts) == 2 and all("within 1s" in str(t.get("message")) for t in timeouts)
    lost = await missing(kube_api, names)
    registry.lost(len(lost))
    assert not lost


async def test_page_missing_mid_pagination(world: EmulatorState, emulator: EmulatorServer,
                                           kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    names = await nodes_with_servers(world, kube_api, "paged", 12)
    world.fail_page(5, status=500, n=5)  # the 2nd page, 5 times: one whole listing (4 attempts) fails
    registry.record("fault/cloudsigma", "page missing mid-pagination",
                    injected="`api_page_size` 5, 12 servers; the page at offset 5 answers 500 five times "
                             "(one whole listing fails)",
                    verified="no partial listing used: no `ServerNotFound` event; all 12 nodes initialized "
                             "once the page is back; 5 `cloudsigma_call_failed` lines",
                    faults=5, nodes_checked=len(names))
    async with running(kube_apiserver.admin_kubeconfig, emulator, api_page_size=5) as ccm:
        await wait_for(lambda: all_initialized(kube_api, names), 45, message="nodes initialized after lost pages")
        assert ccm.alive
        failed = ccm.logs.named("cloudsigma_call_failed", error="ServerError")
    failed_pages = [r for r in world.requests if r.fault == "page_error"]
    assert len(failed_pages) == 5 and all("offset=5" in r.query for r in failed_pages)
    assert len(failed) == 5
    # a torn listing was never taken for "the server does not exist"
    not_found = [e for n in names for e in await warnings_for(kube_api, n, "ServerNotFound")]
    assert not not_found, [e["message"] for e in not_found]
    lost = await missing(kube_api, names)
    registry.lost(len(lost))
    assert not lost
