"""One benchmark case: N nodes against one daemon mode (ours = snapshot, or the per-node reference).

Phases, all against a fresh kube-apiserver and a fresh emulator seeded with N servers:

1. **burst** — the daemon runs with the production periods (5 min resync, 10 s snapshot age) and is ready
   (0 nodes); N Nodes are created concurrently; a watch in the bench timestamps each taint removal. Ends
   when every Node is initialised and the daemon's Kubernetes write counters have been still for
   ``SETTLE_QUIET`` seconds.
2. **idle** (ours only) — the same daemon, ``idle_seconds`` more with nothing changing: CPU, calls, writes.
3. **restart** — the daemon is restarted with shortened periods (``--node-status-update-frequency``,
   ``--server-cache-max-age``): it re-lists the N initialised Nodes and must re-sync them without writing.
4. **steady** — ``steady_periods`` of those shortened resync periods with nothing changing: CloudSigma
   calls, Kubernetes writes, reconciles and CPU per period.
5. **floor** (ours only) — a fresh kube-apiserver, the same N creates from a bare client that sends each Node
   the two writes the CCM sent right after its create returns: the burst time the machine allows without any
   CCM logic (:func:`run_floor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import promtext
from bench.cloud import CloudCounters, daemon_env, node_names, start_emulator
from bench.fleetfloor import Initialised, floor_tenant, read_templates
from bench.kube import TaintWatcher, admin_client, cloud_label_summary, register_burst
from bench.procs import MIB, Daemon, DaemonConfig, cpu_seconds
from bench.profiling import PySpy, format_summary, summarise
from bench.stats import summary
from tests.emulator import EmulatorProcess
from tests.realenv.kubeapiserver import KubeAPIServer

WRITES = "cloudsigma_ccm_kubernetes_writes_total"
RECONCILES = "cloudsigma_ccm_reconciles_total"
TOKEN_ACQ = "cloudsigma_ccm_token_acquisitions_total"
SNAPSHOT_REFRESHES = "cloudsigma_ccm_server_snapshot_refreshes_total"
SETTLE_QUIET = 2.0
NODE_RESOURCES = ("nodes", "nodes/status")
#: Initialised Nodes whose writes the floor copies (cycled over its N Nodes).
FLOOR_TEMPLATES = 20


@dataclass(frozen=True)
class Options:
    latency_ms: float
    register_concurrency: int
    resync: float
    cache_max_age: float
    steady_periods: int
    idle_seconds: float
    token_lifetime: int
    idle: bool
    work_dir: Path
    profile_dir: Path | None = None
    #: Extra daemon flags for ours (experiments, e.g. ``--concurrent-node-syncs=32``); recorded in the results.
    extra_flags: tuple[str, ...] = ()


Log = Callable[[str], None]


def daemon_flags(mode: str, opts: Options, *, shortened: bool) -> tuple[str, ...]:
    flags = ["--log-level=info", "--log-format=json"]
    if shortened:
        flags += [f"--node-status-update-frequency={opts.resync:g}s", f"--server-cache-max-age={opts.cache_max_age:g}s"]
    if mode == "reference":
        flags += ["--server-lookup=per-node", "--concurrent-node-syncs=1"]
    else:
        flags += list(opts.extra_flags)
    return tuple(flags)


def kube_writes(m: promtext.MetricsSnapshot) -> dict[str, float]:
    """``{"PATCH nodes/status": 1000.0, "POST events": 1000.0, ...}``."""
    return m.by_labels(WRITES, "verb", "resource")


def split_writes(writes: dict[str, float]) -> dict[str, float]:
    node = sum(v for k, v in writes.items() if k.split(" ", 1)[-1] in NODE_RESOURCES)
    events = sum(v for k, v in writes.items() if k.split(" ", 1)[-1] == "events")
    return {"node": node, "events": events, "other": sum(writes.values()) - node - events}


def _reconciles(m: promtext.MetricsSnapshot) -> dict[str, float]:
    return m.by_label(RECONCILES, "result")


class CpuClock:
    """CPU seconds of the processes involved, read together."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def read(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        out["_wall"] = time.monotonic()
        return out

    @staticmethod
    def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before.get(k, 0.0), 3) for k in after}


async def settle(daemon: Daemon, *, quiet: float = SETTLE_QUIET, timeout: float = 120.0) -> float:
    """Wait until the daemon's write counters have not moved for ``quiet`` seconds; returns seconds waited."""
    started = time.monotonic()
    last = sum(kube_writes(await asyncio.to_thread(daemon.metrics)).values())
    still_since = time.monotonic()
    while time.monotonic() - started < timeout:
        await asyncio.sleep(0.25)
        now_total = sum(kube_writes(await asyncio.to_thread(daemon.metrics)).values())
        if now_total != last:
            last, still_since = now_total, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            break
    return time.monotonic() - started


def burst_timeout(n: int, mode: str, latency_ms: float) -> float:
    per_node = (latency_ms / 1000.0 + 0.05) * 3 if mode == "reference" else 0.02
    return 120.0 + n * per_node


async def run_case(n: int, mode: str, opts: Options, log: Log) -> dict[str, Any]:
    """Burst (+ idle for ours), restart and steady state for ``n`` nodes; returns the case's results."""
    label = f"{mode}-{n}"
    server = KubeAPIServer(f"bench-{label}")
    emulator: EmulatorProcess | None = None
    daemons: list[Daemon] = []
    watcher: TaintWatcher | None = None
    profiler: PySpy | None = None
    result: dict[str, Any] = {"nodes": n, "mode": mode}

    def profile(phase: str) -> PySpy | None:
        if opts.profile_dir is None:
            return None
        return PySpy(daemons[-1].pid, opts.profile_dir / f"profile-{label}-{phase}.collapsed.txt")

    def stop_profile(phase: str) -> None:
        nonlocal profiler
        if profiler is not None:
            profiler.stop()
            result.setdefault("profile", {})[phase] = _profile_outputs(profiler.output, f"{label}-{phase}")
            profiler = None

    try:
        log(f"[{label}] starting kube-apiserver and emulator ({n} servers, {opts.latency_ms:g} ms latency)")
        await server.astart()
        emulator = await asyncio.to_thread(start_emulator, n, latency_ms=opts.latency_ms,
                                           token_lifetime=opts.token_lifetime)
        kubeconfig = server.admin_kubeconfig
        env = daemon_env(emulator, str(kubeconfig))

        # -- 1. burst, production periods -------------------------------------------------------------------
        flags = daemon_flags(mode, opts, shortened=False)
        daemon = Daemon(DaemonConfig(flags, env, f"{label}-burst"), opts.work_dir)
        daemons.append(daemon)
        c_pre = await asyncio.to_thread(CloudCounters.read, emulator)
        await asyncio.to_thread(daemon.start)
        assert server.pid is not None and emulator.pid is not None
        clock = CpuClock({"daemon": daemon.pid, "kube_apiserver": server.pid, "emulator": emulator.pid,
                          "bench": os.getpid()})
        watcher = await asyncio.to_thread(TaintWatcher(kubeconfig).start)
        client = await admin_client(kubeconfig, pool_size=opts.register_concurrency)
        names = node_names(n)
        profiler = profile("burst")
        try:
            cpu0 = clock.read()
            log(f"[{label}] registering {n} nodes ({opts.register_concurrency} concurrent creates)")
            reg = await register_burst(client, names, opts.register_concurrency)
        finally:
            await client.close()
        log(f"[{label}] {n} nodes created in {reg.seconds:.2f}s; waiting for taint removal")
        timeout = burst_timeout(n, mode, opts.latency_ms)
        all_done = await asyncio.to_thread(watcher.wait_all, set(names), timeout)
        settle_s = await settle(daemon)
        stop_profile("burst")
        c1 = await asyncio.to_thread(CloudCounters.read, emulator)
        m1 = await asyncio.to_thread(daemon.metrics)
        cpu1 = clock.read()
        watcher.stop()
        delays = [watcher.removed_at[x] - reg.created_at[x] for x in names
                  if x in watcher.removed_at and x in reg.created_at]
        initialized = len(delays)
        last_removed = max(watcher.removed_at.values()) if watcher.removed_at else float("nan")
        writes1 = kube_writes(m1)
        split1 = split_writes(writes1)
        cloud_burst = c1 - c_pre
        b = result["burst"] = {
            "daemon_flags": list(flags),
            "register_concurrency": opts.register_concurrency,
            "registration_seconds": round(reg.seconds, 3),
            "registration_rate_per_s": round(n / reg.seconds, 1) if reg.seconds > 0 else None,
            "registration_retries": reg.errors,
            "initialized": initialized,
            "all_initialized": all_done and initialized == n,
            "timeout_s": round(timeout, 1),
            "delay_s": summary(delays),
            "all_initialized_after_last_created_s":
                round(last_removed - reg.last_created, 3) if all_done else None,
            "all_initialized_after_first_created_s":
                round(last_removed - min(reg.created_at.values()), 3) if all_done and reg.created_at else None,
            "settle_s": round(settle_s, 2),
            "cloudsigma": cloud_burst.as_json(),
            "kube_writes": writes1,
            "node_writes": split1["node"],
            "event_writes": split1["events"],
            "node_writes_per_node": round(split1["node"] / n, 3),
            "event_writes_per_node": round(split1["events"] / n, 3),
            "reconciles": _reconciles(m1),
            "cpu_seconds": CpuClock.delta(cpu1, cpu0),
            "watch_events": watcher.events,
        }
        labels_client = await admin_client(kubeconfig, pool_size=1)
        try:
            b["cloud_labels"] = await cloud_label_summary(labels_client)
        finally:
            await labels_client.close()
        if all_done and reg.created_at:
            b["burst_s"] = round(last_removed - reg.started, 3)
        templates = await read_templates(server, names[:FLOOR_TEMPLATES]) if mode == "snapshot" and all_done else []
        result["delays_s"] = sorted(round(d, 4) for d in delays)
        log(f"[{label}] burst: {initialized}/{n} initialised, p50 {b['delay_s'].get('p50')}s "
            f"p99 {b['delay_s'].get('p99')}s, all {b['all_initialized_after_last_created_s']}s after the last "
            f"create; CloudSigma API requests {cloud_burst.api_total}, node writes {split1['node']:g}; "
            f"nodes with cloud labels {b['cloud_labels']}")

        # -- 2. idle, same daemon ------------------------------------------------------------------------------
        if mode == "snapshot" and opts.idle:
            log(f"[{label}] idle for {opts.idle_seconds:g}s")
            profiler = profile("idle")
            await asyncio.sleep(opts.idle_seconds)
            c2 = await asyncio.to_thread(CloudCounters.read, emulator)
            m2 = await asyncio.to_thread(daemon.metrics)
            cpu2 = clock.read()
            stop_profile("idle")
            cpu = CpuClock.delta(cpu2, cpu1)
            rss_now = 0
            with contextlib.suppress(psutil.Error):
                rss_now = int(psutil.Process(daemon.pid).memory_info().rss)
            result["idle"] = {
                "window_s": round(cpu["_wall"], 2),
                "cloudsigma": (c2 - c1).as_json(),
                "kube_writes": promtext.diff(kube_writes(m2), writes1),
                "reconciles": promtext.diff(_reconciles(m2), _reconciles(m1)),
                "daemon_cpu_seconds": cpu["daemon"],
                "daemon_cpu_core_percent": round(100.0 * cpu["daemon"] / cpu["_wall"], 3),
                "rss_mib": round(rss_now / MIB, 1),
            }
            log(f"[{label}] idle: {result['idle']['daemon_cpu_core_percent']}% of a core")
        await asyncio.to_thread(daemon.stop)
        life = (await asyncio.to_thread(CloudCounters.read, emulator)) - c_pre
        result["daemon"] = _daemon_summary(daemon, life, flags)
        log(f"[{label}] daemon peak RSS {result['daemon']['peak_rss_mib']} MiB, "
            f"{life.token_exchanges} token exchange(s) in {daemon.uptime:.0f}s")

        # -- 3. restart with shortened periods ----------------------------------------------------------------
        flags = daemon_flags(mode, opts, shortened=True)
        daemon = Daemon(DaemonConfig(flags, env, f"{label}-steady"), opts.work_dir)
        daemons.append(daemon)
        c3 = await asyncio.to_thread(CloudCounters.read, emulator)
        log(f"[{label}] restarting the daemon with {' '.join(flags[2:])}")
        await asyncio.to_thread(daemon.start)
        resynced_after = await _wait_reconciles(daemon, n, timeout)
        await settle(daemon)
        c4 = await asyncio.to_thread(CloudCounters.read, emulator)
        m4 = await asyncio.to_thread(daemon.metrics)
        result["restart"] = {
            "daemon_flags": list(flags),
            "resync_s": round(resynced_after, 2) if resynced_after is not None else None,
            "cloudsigma": (c4 - c3).as_json(),
            "kube_writes": kube_writes(m4),
            "reconciles": _reconciles(m4),
        }
        log(f"[{label}] restart: {n} nodes re-synced after {result['restart']['resync_s']}s with "
            f"{result['restart']['cloudsigma']['api_total']} CloudSigma requests and "
            f"{sum(result['restart']['kube_writes'].values()):g} writes")

        # -- 4. steady state -------------------------------------------------------------------------------
        clock = CpuClock({"daemon": daemon.pid, "kube_apiserver": server.pid, "emulator": emulator.pid,
                          "bench": os.getpid()})
        window = opts.steady_periods * opts.resync
        log(f"[{label}] steady state for {opts.steady_periods} x {opts.resync:g}s")
        profiler = profile("steady")
        cpu4 = clock.read()
        await asyncio.sleep(window)
        c5 = await asyncio.to_thread(CloudCounters.read, emulator)
        m5 = await asyncio.to_thread(daemon.metrics)
        cpu5 = clock.read()
        stop_profile("steady")
        cloud_steady = c5 - c4
        writes_steady = promtext.diff(kube_writes(m5), kube_writes(m4))
        reconciles_steady = promtext.diff(_reconciles(m5), _reconciles(m4))
        cpu_steady = CpuClock.delta(cpu5, cpu4)
        wall = cpu_steady["_wall"]
        p = opts.steady_periods
        await asyncio.to_thread(daemon.stop)
        life = (await asyncio.to_thread(CloudCounters.read, emulator)) - c3
        s = result["steady"] = {
            "daemon_flags": list(flags),
            "period_s": opts.resync,
            "periods": p,
            "window_s": round(wall, 2),
            "cloudsigma": cloud_steady.as_json(),
            "cloudsigma_api_requests_per_period": round(cloud_steady.api_total / p, 2),
            "kube_writes": writes_steady,
            "kube_writes_per_period": round(sum(writes_steady.values()) / p, 2),
            "reconciles": reconciles_steady,
            "reconciles_per_period": round(sum(reconciles_steady.values()) / p, 1),
            "cpu_seconds": cpu_steady,
            "daemon_cpu_seconds_per_minute": round(cpu_steady["daemon"] / wall * 60.0, 3),
            "daemon_cpu_core_percent": round(100.0 * cpu_steady["daemon"] / wall, 2),
            "daemon": _daemon_summary(daemon, life, flags),
        }
        log(f"[{label}] steady: {s['cloudsigma_api_requests_per_period']} CloudSigma requests/period, "
            f"{s['kube_writes_per_period']} writes/period, {s['reconciles_per_period']} reconciles/period, "
            f"{s['daemon_cpu_core_percent']}% of a core; peak RSS {s['daemon']['peak_rss_mib']} MiB")

        # -- 5. the floor (ours only) ---------------------------------------------------------------------------
        if templates:
            floor = result["floor"] = await run_floor(n, templates, opts, log, label)
            if b.get("burst_s") and floor.get("burst_s"):
                result["burst_vs_floor"] = round(b["burst_s"] / floor["burst_s"], 2)
                log(f"[{label}] burst {b['burst_s']} s vs. the floor's {floor['burst_s']} s: "
                    f"{result['burst_vs_floor']}x")
    finally:
        if profiler is not None:
            profiler.stop()
        if watcher is not None:
            watcher.stop()
        for d in daemons:
            await asyncio.to_thread(d.kill)
        if emulator is not None:
            await emulator.stop()
        await server.astop()
    return result


async def run_floor(n: int, templates: list[Initialised], opts: Options, log: Log, label: str) -> dict[str, Any]:
    """The burst's floor: a fresh kube-apiserver, the same N creates (same concurrency) from a bare client that
    sends each Node the two writes the CCM sent (``bench/fleetfloor.py``) right after its create returns — no
    watch, no CloudSigma lookup, no decision. Same timing as the burst: first create sent → last taint gone."""
    server = KubeAPIServer(f"bench-{label}-floor")
    watcher: TaintWatcher | None = None
    try:
        await server.astart()
        watcher = await asyncio.to_thread(TaintWatcher(server.admin_kubeconfig).start)
        names = [f"floor-{i}" for i in range(n)]
        log(f"[{label}] floor: {n} creates ({opts.register_concurrency} concurrent), each followed by the CCM's "
            "two writes from a bare client")
        reg = await floor_tenant(server, names, templates, concurrency=opts.register_concurrency)
        done = await asyncio.to_thread(watcher.wait_all, set(names), burst_timeout(n, "snapshot", opts.latency_ms))
        delays = [watcher.removed_at[x] - reg.created_at[x] for x in names
                  if x in watcher.removed_at and x in reg.created_at]
        last = max(watcher.removed_at.values()) if watcher.removed_at else float("nan")
        return {"nodes": n, "initialized": len(delays), "all_initialized": done, "delay_s": summary(delays),
                "burst_s": round(last - reg.started, 3) if done else None,
                "registration_seconds": round(reg.seconds, 3), "node_writes_per_node": 2}
    finally:
        if watcher is not None:
            watcher.stop()
        await server.astop()


async def _wait_reconciles(daemon: Daemon, n: int, timeout: float) -> float | None:
    """Seconds from the daemon's start until it has reconciled ``n`` nodes (None on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = await asyncio.to_thread(daemon.metrics)
        if sum(_reconciles(m).values()) >= n:
            return time.monotonic() - daemon.started_at
        await asyncio.sleep(0.1)
    return None


def _daemon_summary(daemon: Daemon, life: CloudCounters, flags: tuple[str, ...]) -> dict[str, Any]:
    return {
        "uptime_s": round(daemon.uptime, 1),
        "sigterm_to_exit_s": round(daemon.stop_seconds, 2) if daemon.stop_seconds is not None else None,
        "peak_rss_mib": round((daemon.peak_rss_hwm or 0) / MIB, 1),
        "peak_rss_sampled_mib": round(daemon.peak_rss_sampled / MIB, 1),
        "token_exchanges": life.token_exchanges,
        "identity_requests": life.identity,
        "exit_code": daemon.exit_code,
        "workers": _workers(flags),
        "log": str(daemon.log_path),
    }


def _workers(flags: tuple[str, ...]) -> int:
    from ccm.config import Settings

    workers = int(Settings.model_fields["concurrent_node_syncs"].default)
    for flag in flags:
        if flag.startswith("--concurrent-node-syncs="):
            workers = int(flag.split("=", 1)[1])
    return workers


def _profile_outputs(collapsed: Path, label: str) -> dict[str, Any]:
    if not collapsed.is_file():
        return {"error": f"py-spy wrote no {collapsed.name}; see {collapsed.with_suffix('.py-spy.log')}"}
    root = str(Path(__file__).resolve().parents[1]) + "/"
    data = summarise(collapsed, root)
    text_path = collapsed.with_name(f"profile-{label}.txt")
    text_path.write_text(format_summary(data, f"py-spy profile of the daemon, {label}"))
    packed = collapsed.with_name(collapsed.name + ".gz")  # raw stacks for flame graphs, kept small
    packed.write_bytes(gzip.compress(collapsed.read_bytes()))
    collapsed.unlink()
    collapsed.with_suffix(".py-spy.log").unlink(missing_ok=True)
    return {"collapsed": str(packed), "summary": str(text_path), "samples": data["samples"],
            "idle_samples": data["idle_samples"], "project_attributed_self": data["project_attributed_self"][:12],
            "top_self": data["top_self"][:12], "project_inclusive": data["project_inclusive"][:15]}
