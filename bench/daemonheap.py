"""Where the daemon's memory per Node goes: ``python -m bench.daemonheap --nodes 2000``.

Starts a real kube-apiserver and the CloudSigma emulator (N servers, 5 ms per request), builds the daemon
in this process (:func:`ccm.single.process.build`, leader election off) under ``tracemalloc``, registers N tainted
Nodes in a burst like ``python -m bench`` does, waits until the daemon has initialised them all and five more
seconds, and prints the Python allocations still alive per source file, per Node — the node store
(``ccm/nodes/view.py``), the server snapshot (``cloudsigma/models.py``, pydantic, the JSON decoder's strings),
events, queues. ``tracemalloc`` itself adds memory and time: read the split, not the absolute RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
import tracemalloc
from pathlib import Path

from bench.cloud import daemon_env, node_names, start_emulator
from bench.kube import admin_client, register_burst
from tests.realenv.kubeapiserver import KubeAPIServer


def _status(field: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return line.split(":", 1)[1].strip()
    return "?"


async def measure(n: int, top: int) -> None:
    server = KubeAPIServer(f"daemonheap-{n}")
    await server.astart()
    emulator = await asyncio.to_thread(start_emulator, n, latency_ms=5.0, token_lifetime=3600)
    try:
        os.environ.update(daemon_env(emulator, str(server.admin_kubeconfig)))
        os.environ["CLOUDSIGMA_METRICS_BIND_ADDRESS"] = ""
        from ccm.config import load_settings
        from ccm.logging import Redactor, configure_logging
        from ccm.single.process import build
        from ccm.tenant.controllers import run_controllers

        configure_logging(level="warning", fmt="json", redactor=Redactor())
        settings = load_settings({})
        tracemalloc.start()
        parts = await build(settings, Redactor())
        task = asyncio.create_task(run_controllers(parts))
        await asyncio.wait_for(parts.watcher.synced.wait(), 30)
        client = await admin_client(server.admin_kubeconfig, pool_size=50)
        try:
            await register_burst(client, node_names(n), 50)
        finally:
            await client.close()
        started = time.monotonic()
        while sum(1 for v in parts.watcher.store.values() if not v.uninitialized) < n:
            await asyncio.sleep(0.5)
        print(f"{n} nodes initialised {time.monotonic() - started:.1f} s after the last create")
        await asyncio.sleep(5)
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
        print(f"traced: {current / 2**20:.1f} MiB alive ({current / n:,.0f} B per Node), peak {peak / 2**20:.1f} MiB; "
              f"VmRSS {_status('VmRSS')}, VmHWM {_status('VmHWM')} (this process: bench client and tracemalloc too)")
        print(f"{'B per Node':>10} {'MiB':>7} {'blocks':>8}  file")
        for stat in snapshot.statistics("filename")[:top]:
            print(f"{stat.size / n:10,.0f} {stat.size / 2**20:7.1f} {stat.count:8,}  {stat.traceback[0].filename}")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await parts.close()
    finally:
        await emulator.stop()
        await server.astop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.daemonheap", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2000, help="Nodes in the burst (default 2000)")
    p.add_argument("--top", type=int, default=20, help="source files listed (default 20)")
    args = p.parse_args(argv)
    asyncio.run(measure(args.nodes, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
