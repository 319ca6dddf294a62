"""The daemon as a process: SIGTERM in the middle of a burst, then a restart that finishes the work."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, ALICE_PW
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for
from tests.reliability import registry
from tests.reliability.support import (
    all_initialized,
    ccm_binary,
    clean_env,
    free_port,
    http_get,
    is_initialized,
    is_untouched,
    maybe_node,
    metric_value,
    missing,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]
NODES = 40
WORKERS = 4
SHUTDOWN_TIMEOUT = 10.0


def daemon_env(kubeconfig: Path, emulator: EmulatorServer, port: int) -> dict[str, str]:
    return clean_env(
        CLOUDSIGMA_REGION="zrh", CLOUDSIGMA_USERNAME=ALICE, CLOUDSIGMA_PASSWORD=ALICE_PW,
        CLOUDSIGMA_API_URL=emulator.api_url, CLOUDSIGMA_IMPERSONATION_API_URL=emulator.api_url,
        KUBECONFIG=str(kubeconfig), CLOUDSIGMA_LEADER_ELECT="false",
        CLOUDSIGMA_METRICS_BIND_ADDRESS=f"127.0.0.1:{port}", CLOUDSIGMA_LOG_FORMAT="json",
        CLOUDSIGMA_LOG_LEVEL="debug", CLOUDSIGMA_SHUTDOWN_TIMEOUT=f"{SHUTDOWN_TIMEOUT:g}s",
        CLOUDSIGMA_CONCURRENT_NODE_SYNCS=str(WORKERS), CLOUDSIGMA_SERVER_CACHE_MAX_AGE="0.05s",
        CLOUDSIGMA_NODE_MONITOR_PERIOD="1s", CLOUDSIGMA_HTTP_TIMEOUT="5s",
    )


class Daemon:
    def __init__(self, env: dict[str, str], log_path: Path, port: int) -> None:
        self.env, self.log_path, self.port = env, log_path, port
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(ccm_binary(), env=self.env, stdout=log, stderr=log)

        async def ready() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.log_path.read_text()[-3000:]
            status, _ = await http_get(f"http://127.0.0.1:{self.port}/readyz")
            return status == 200

        await wait_for(ready, 30, message="the daemon's /readyz")

    async def metrics(self) -> str:
        _, text = await http_get(f"http://127.0.0.1:{self.port}/metrics")
        return text

    async def terminate(self) -> tuple[int, float]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.wait_for(self.proc.wait(), SHUTDOWN_TIMEOUT + 20)
        return code, time.monotonic() - started

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"event": "<not json>", "text": line})
    return out


async def test_sigterm_during_a_burst_then_restart(world: EmulatorState, emulator: EmulatorServer,
                                                   kube_apiserver: KubeAPIServer, kube_api: ApiClient,
                                                   tmp_path: Path) -> None:
    names = [f"sigterm-{i:02d}" for i in range(NODES)]
    for name in names:
        world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
    world.set_latency(400)  # a slow CloudSigma keeps the burst going for seconds
    registry.record("fault/process", "SIGTERM during a burst, then restart",
                    injected=f"SIGTERM to `cloudsigma-ccm` while {NODES} freshly registered nodes were being "
                             f"initialized by {WORKERS} workers (CloudSigma slowed to 400 ms per call)",
                    verified=f"exit 0 within the {SHUTDOWN_TIMEOUT:g} s shutdown timeout (+5 s); no new work taken "
                             f"after the signal (≤ {WORKERS} in-flight reconciles finish); every node fully "
                             "initialized (providerID + addresses + labels + no taint) or untouched, none half-"
                             "written; `ccm_stopping` reason=signal, `ccm_stopped` exit_code=0; restarted → all "
                             f"{NODES} initialized, exit 0 again",
                    faults=1, nodes_checked=NODES)
    port = free_port()
    log_path = tmp_path / "ccm.log"
    daemon = Daemon(daemon_env(kube_apiserver.admin_kubeconfig, emulator, port), log_path, port)
    try:
        await daemon.start()
        await asyncio.gather(*(register_node(kube_api, n) for n in names))  # the burst

        async def some_done() -> bool:
            nodes = await asyncio.gather(*(maybe_node(kube_api, n) for n in names))
            return sum(1 for n in nodes if n is not None and is_initialized(n)) >= 3

        await wait_for(some_done, 30, interval=0.05)
        metrics = await daemon.metrics()
        code, seconds = await daemon.terminate()
        nodes = await asyncio.gather(*(maybe_node(kube_api, n) for n in names))
        done = [n for n in nodes if n is not None and is_initialized(n)]
        untouched = [n for n in nodes if n is not None and is_untouched(n)]
        half = [n["metadata"]["name"] for n in nodes if n is not None and not is_initialized(n)
                and not is_untouched(n)]
        first_stop = log_lines(log_path)

        await daemon.start()  # restarted: finishes the work
        await wait_for(lambda: all_initialized(kube_api, names), 60, message="all nodes after the restart")
        metrics += await daemon.metrics()
        code2, _ = await daemon.terminate()
    finally:
        await daemon.kill()
        world.set_latency(0)
    text = log_path.read_text()
    registry.add_text("subprocess CCM log (SIGTERM test)", text)
    registry.add_text("subprocess /metrics (SIGTERM test)", metrics)
    assert code == 0, text[-3000:]
    assert seconds < SHUTDOWN_TIMEOUT + 5, f"took {seconds:.1f}s to stop"
    assert not half, f"half-written nodes: {half}"
    assert len(done) + len(untouched) == NODES
    stopping = [i for i, e in enumerate(first_stop) if e.get("event") == "ccm_stopping"]
    stopped = [e for e in first_stop if e.get("event") == "ccm_stopped"]
    assert stopping and first_stop[stopping[0]]["reason"] == "signal"
    before = {e["node"] for e in first_stop[:stopping[0]] if e.get("event") == "node_reconciled"}
    after = sorted({e["node"] for e in first_stop[stopping[0]:] if e.get("event") == "node_reconciled"} - before)
    assert len(before) < NODES, "SIGTERM came too late to test a burst in progress"
    assert stopped and stopped[0]["exit_code"] == 0
    assert not [e for e in first_stop if e.get("event") in ("<not json>", "ccm_crashed", "reconcile_crashed")]
    assert code2 == 0
    assert metric_value(metrics, "cloudsigma_ccm_reconciles_total", controller="node") >= NODES
    lost = await missing(kube_api, names)
    registry.lost(len(lost))
    assert not lost
    # "SIGTERM/SIGINT stop taking work, let in-flight reconciles finish" (ccm/single/process.py): at most one per worker
    assert len(after) <= WORKERS, (f"{len(after)} nodes reconciled after SIGTERM with {WORKERS} workers: the "
                                   f"queue was drained instead of stopping: {after}")
    assert untouched
