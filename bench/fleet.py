"""``python -m bench.fleet``: the fleet scenario — one ``cloudsigma-ccm --mode fleet`` replica serving N tenant
clusters (real kube-apiservers) of a management kube-apiserver, against one single-tenant daemon in the same run.

Phases (one CloudSigma emulator subprocess throughout, one owner per tenant):

1. **one Deployment per tenant** — a single-tenant daemon (default mode) serving one tenant of M Nodes: its
   settled RSS is what each tenant costs with one Deployment per tenant.
2. **RSS vs tenants** — the fleet replica (production lease timings) starts with 0 tenants; tenants are added in
   steps (e.g. 0, 5, 10, 20): each new tenant's API server is started, its CloudSigmaCluster and kubeconfig Secret
   written, M kubelet-like Nodes registered and initialised; at each step the replica's settled RSS is read.
3. **burst** — every tenant gets M more Nodes at once; a watch per tenant timestamps each taint removal;
   CloudSigma calls from the emulator's counters, Kubernetes writes from the replica's metrics.
4. **floor** — the replica stopped, every tenant gets M more Nodes at once from a bare client that sends the same
   two writes per Node the CCM sends (``bench/fleetfloor.py``) right after each create: the burst time of ours
   as a ratio to it.

Writes ``bench/results/fleet-<stamp>.json`` (and ``fleet-latest.json``), ``docs/benchmarks-fleet.md``, and
re-renders ``docs/benchmarks.md`` (whose "Fleet mode" section summarises the fleet results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import environment, nodestore, runtimeimage
from bench.cli import comma_counts
from bench.cloud import CloudCounters
from bench.fleetfloor import floor_tenant, read_templates
from bench.fleetreport import FLEET_REPORT_PATH, FLEET_RESULTS_NAME, evaluate_fleet_targets, render_fleet_page
from bench.fleetworld import (
    BURST,
    FLOOR,
    SINGLE_PREFIX,
    STEP,
    Tenants,
    fleet_env,
    management_transport,
    node_names,
    prepare_management,
    register_tenant,
    seed,
    single_env,
    tenant_key,
)
from bench.kube import Registration, TaintWatcher, admin_client, register_burst
from bench.procs import MIB, Daemon, DaemonConfig, cpu_seconds, vm_hwm_bytes
from bench.profiling import PySpy, format_summary, summarise
from bench.scenario import kube_writes, settle, split_writes
from bench.stats import linear_slope, summary
from tests.emulator import EmulatorProcess
from tests.realenv.kubeapiserver import KubeAPIServer

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
SCHEMA_VERSION = 1
DAEMON_FLAGS = ("--log-level=info", "--log-format=json")
WAIT_TIMEOUT = 180.0


def log(message: str) -> None:
    print(f"{datetime.now(UTC).strftime('%H:%M:%S')} [fleet] {message}", file=sys.stderr, flush=True)


def default_steps(tenants: int, quick: bool) -> list[int]:
    """0, 1, N/4, N/2, N (0, 1, N/2, N when quick), without repeats: the step 0 → 1 carries the one-time cost of
    serving a first tenant (its initialisation transient kept by the allocator, the shared parts), the marginal cost
    is fitted from 1 on."""
    fractions = (0.5, 1.0) if quick else (0.25, 0.5, 1.0)
    return sorted({0, 1} | {max(1, round(tenants * f)) for f in fractions})


def _steps(text: str) -> list[int]:
    return sorted(set(comma_counts(text, what="tenant counts", minimum=0)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description="Fleet benchmark: one `cloudsigma-ccm --mode fleet` replica serving N real tenant "
                    "kube-apiservers, against one single-tenant daemon and a bare client's floor.")
    p.add_argument("--tenants", type=int, default=20, help="tenant clusters (real kube-apiservers; default 20)")
    p.add_argument("--nodes-per-tenant", type=int, default=10, help="Nodes per tenant and per burst (default 10)")
    p.add_argument("--steps", type=_steps, default=None,
                   help="tenant counts at which the replica's RSS is read (default 0,1,N/4,N/2,N; quick 0,1,N/2,N)")
    p.add_argument("--quick", action="store_true",
                   help="fewer steps, 31 s idle before each RSS reading instead of 35, node store at 1,000 only")
    p.add_argument("--idle-seconds", type=float, default=None,
                   help="idle before each RSS reading (default 35; quick 31): more than twice aiohttp's 15 s "
                        "keep-alive (idle connections are closed 15-30 s after their last use), so the extra TLS "
                        "connections of a step's initialisation are closed")
    p.add_argument("--latency-ms", type=float, default=25.0, help="emulator latency per request (default 25)")
    p.add_argument("--token-lifetime", type=int, default=300, help="emulator token lifetime, seconds (default 300)")
    p.add_argument("--start-parallel", type=int, default=3, help="tenant API servers started at once (default 3)")
    p.add_argument("--node-store", type=str, default=None,
                   help="N list for python -m bench.nodestore (default 1000,5000; quick 1000; 'none' skips it)")
    p.add_argument("--replica-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the fleet replica only, e.g. MALLOC_MMAP_THRESHOLD_=131072 (repeatable; "
                        "for experiments, recorded in the results)")
    p.add_argument("--profile-dir", type=Path, default=None,
                   help="sample the replica with py-spy during the burst and write its profile here (needs py-spy)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--report", type=Path, default=FLEET_REPORT_PATH, help="the fleet page (Markdown)")
    p.add_argument("--no-main-report", action="store_true",
                   help="do not re-render docs/benchmarks.md (its Fleet mode section) from results/latest.json")
    p.add_argument("--report-only", type=Path, metavar="RESULTS_JSON", help="only re-render from a results file")
    p.add_argument("--keep-logs", action="store_true", help="keep the daemons' logs (printed path)")
    return p


# -- reading the replica --------------------------------------------------------------------------------------------


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        data = json.loads(resp.read())
    return data if isinstance(data, dict) else {}


async def tenant_rows(replica: Daemon) -> dict[str, dict[str, Any]]:
    """``/debug/tenants`` of the replica, by tenant key."""
    try:
        view = await asyncio.to_thread(_get_json, replica.base_url + "/debug/tenants")
    except (OSError, ValueError):
        return {}
    return {str(row.get("tenant")): row for row in view.get("tenants") or []}


def _serves(row: dict[str, Any] | None, nodes: int) -> bool:
    status = (row or {}).get("status") or {}
    return bool((row or {}).get("served_here") and status.get("synced") and (status.get("nodes") or 0) >= nodes
                and status.get("uninitialized") == 0)


async def wait_served(replica: Daemon, keys: list[str], nodes: int, timeout: float = WAIT_TIMEOUT) -> float:
    """Seconds until the replica serves every tenant of ``keys`` with ``nodes`` Nodes, none uninitialised."""
    started = time.monotonic()
    while True:
        rows = await tenant_rows(replica)
        missing = [k for k in keys if not _serves(rows.get(k), nodes)]
        if not missing:
            return time.monotonic() - started
        if replica.proc is None or replica.proc.poll() is not None:
            raise RuntimeError(f"the fleet replica exited; log: {replica.log_path}\n{replica.log_tail()}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{len(missing)} tenant(s) not served with {nodes} initialised Nodes after "
                               f"{timeout:g}s, e.g. {missing[0]}: {rows.get(missing[0])}")
        await asyncio.sleep(0.25)


def marginal_costs(steps: list[dict[str, Any]]) -> dict[str, float | None]:
    """The replica's RSS per added tenant: least-squares slope over the steps with at least one tenant (the
    marginal cost), the first tenant's one-time cost (RSS at 1 - RSS at 0), and the slope over every step."""

    def slope(rows: list[dict[str, Any]]) -> float | None:
        value = linear_slope([float(r["tenants"]) for r in rows], [float(r["rss_mib"]) for r in rows])
        return None if math.isnan(value) else round(value, 3)

    by_tenants = {int(r["tenants"]): float(r["rss_mib"]) for r in steps}
    first = round(by_tenants[1] - by_tenants[0], 2) if 0 in by_tenants and 1 in by_tenants else None
    return {"marginal_mib_per_tenant": slope([r for r in steps if r["tenants"] >= 1]),
            "first_tenant_mib": first, "slope_from_zero_mib_per_tenant": slope(steps)}


def tenant_connections(pid: int, ports: set[int]) -> int:
    """Established TCP connections of ``pid`` to the tenant API servers (each TLS connection holds a 256 KiB
    read buffer in asyncio's SSL protocol)."""
    try:
        conns = psutil.Process(pid).net_connections("tcp")
    except psutil.Error:
        return 0
    return sum(1 for c in conns if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED)


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--replica-env {pair!r}: expected NAME=VALUE")
        out[name] = value
    return out


def cpu_split(replica: Daemon | None, servers: dict[int, KubeAPIServer],
              emulator: EmulatorProcess) -> dict[str, float]:
    """CPU seconds so far of the processes sharing the cores: the replica, the tenant API servers together, the
    emulator and the bench itself (its watches and creates)."""
    out = {"replica": replica.cpu_seconds() if replica is not None and replica.proc is not None else 0.0,
           "kube_apiservers": sum(cpu_seconds(s.pid) for s in servers.values() if s.pid is not None),
           "emulator": cpu_seconds(emulator.pid) if emulator.pid is not None else 0.0,
           "bench": cpu_seconds(os.getpid()), "_wall": time.monotonic()}
    return out


def cpu_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 2) for k in after}


def rss_bytes(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


async def settled_rss(daemon: Daemon, idle_s: float) -> dict[str, Any]:
    """RSS once the daemon's writes have been still for 2 s and ``idle_s`` more passed: median of 5 readings
    200 ms apart; plus ``VmHWM`` (the peak so far)."""
    settle_s = await settle(daemon)
    await asyncio.sleep(idle_s)
    samples = []
    for _ in range(5):
        samples.append(rss_bytes(daemon.pid))
        await asyncio.sleep(0.2)
    return {"rss_mib": round(statistics.median(samples) / MIB, 2), "vm_hwm_mib": round((vm_hwm_bytes(daemon.pid)
            or 0) / MIB, 2), "settle_s": round(settle_s, 2), "idle_s": idle_s}


async def register_all(servers: dict[int, KubeAPIServer], kind: str, m: int) -> dict[int, Registration]:
    """``m`` kubelet-like Nodes in every tenant of ``servers``, all at once."""
    clients = {i: await admin_client(s.admin_kubeconfig, pool_size=m) for i, s in servers.items()}
    try:
        regs = await asyncio.gather(*(register_burst(clients[i], node_names(i, kind, m), m) for i in servers))
    finally:
        for c in clients.values():
            await c.close()
    return dict(zip(servers, regs, strict=True))


async def start_watchers(servers: dict[int, KubeAPIServer]) -> dict[int, TaintWatcher]:
    watchers = {i: TaintWatcher(s.admin_kubeconfig) for i, s in servers.items()}
    await asyncio.gather(*(asyncio.to_thread(w.start) for w in watchers.values()))
    return watchers


async def wait_removed(watchers: dict[int, TaintWatcher], kind: str, m: int, timeout: float) -> bool:
    done = await asyncio.gather(*(asyncio.to_thread(w.wait_all, set(node_names(i, kind, m)), timeout)
                                  for i, w in watchers.items()))
    return all(done)


def burst_timing(watchers: dict[int, TaintWatcher], regs: dict[int, Registration], kind: str,
                 m: int) -> dict[str, Any]:
    """Per-Node delays (create returned → taint gone) and the burst time (first create sent → last taint gone)."""
    delays: list[float] = []
    removed: list[float] = []
    for i, reg in regs.items():
        w = watchers[i]
        for name in node_names(i, kind, m):
            if name in w.removed_at and name in reg.created_at:
                delays.append(w.removed_at[name] - reg.created_at[name])
                removed.append(w.removed_at[name])
    first = min(r.started for r in regs.values())
    return {
        "nodes": len(regs) * m,
        "initialized": len(delays),
        "delay_s": summary(delays),
        "burst_s": round(max(removed) - first, 3) if removed else None,
        "registration_s": round(max(r.finished for r in regs.values()) - first, 3),
        "registration_retries": sum(r.errors for r in regs.values()),
        "delays_s": sorted(round(d, 4) for d in delays),
    }


# -- the phases -----------------------------------------------------------------------------------------------------


async def single_tenant(emulator: EmulatorProcess, m: int, idle_s: float, work_dir: Path) -> dict[str, Any]:
    """One Deployment per tenant: a single-tenant daemon serving one tenant of ``m`` initialised Nodes."""
    server = KubeAPIServer("bench-fleet-single")
    watcher: TaintWatcher | None = None
    d: Daemon | None = None
    try:
        await server.astart()
        d = Daemon(DaemonConfig(DAEMON_FLAGS, single_env(emulator, server.admin_kubeconfig), "single"), work_dir)
        await asyncio.to_thread(d.start)
        watcher = await asyncio.to_thread(TaintWatcher(server.admin_kubeconfig).start)
        client = await admin_client(server.admin_kubeconfig, pool_size=m)
        names = [f"{SINGLE_PREFIX}-{j}" for j in range(m)]
        try:
            await register_burst(client, names, m)
        finally:
            await client.close()
        if not await asyncio.to_thread(watcher.wait_all, set(names), WAIT_TIMEOUT):
            raise RuntimeError(f"single-tenant daemon: not every Node initialised; log {d.log_path}")
        out = await settled_rss(d, idle_s)
        out["nodes"] = m
        out["tenant_connections"] = tenant_connections(d.pid, {server.port})
        out["cpu_seconds"] = round(d.cpu_seconds(), 2)
        return out
    finally:
        if watcher is not None:
            watcher.stop()
        if d is not None:
            await asyncio.to_thread(d.kill)
        await server.astop()


async def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    n, m, quick = int(args.tenants), int(args.nodes_per_tenant), bool(args.quick)
    steps = [s for s in (args.steps or default_steps(n, quick)) if s <= n]
    if not steps or steps[-1] != n:
        steps.append(n)
    idle_s = args.idle_seconds if args.idle_seconds is not None else (31.0 if quick else 35.0)
    store_ns = args.node_store or ("1000" if quick else "1000,5000")
    started = time.monotonic()
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.fleet " + shlex.join(sys.argv[1:]),
        "environment": {**environment.describe(), "hidden_dev_packages": runtimeimage.apply_to_environ()},
        "options": {"tenants": n, "nodes_per_tenant": m, "steps": steps, "quick": quick, "idle_seconds": idle_s,
                    "latency_ms": args.latency_ms, "token_lifetime_s": args.token_lifetime,
                    "owners": "one owner per tenant (one token exchange per tenant)",
                    "lease": "defaults: 15 s duration, 10 s renew deadline, 2 s retry",
                    "daemon_flags": list(DAEMON_FLAGS), "replica_extra_env": list(args.replica_env)},
        "steps": [],
    }
    emulator: EmulatorProcess | None = None
    management = KubeAPIServer("bench-fleet-management")
    tenants = Tenants()
    replica: Daemon | None = None
    watchers: dict[int, TaintWatcher] = {}
    try:
        log(f"starting the emulator ({n} owners, {2 * m} servers each, {args.latency_ms:g} ms) and the "
            "management kube-apiserver")
        emulator = await asyncio.to_thread(
            lambda: EmulatorProcess(seed=seed(n, m, token_lifetime=args.token_lifetime), latency_ms=args.latency_ms,
                                    startup_timeout=120.0).start_sync())
        await management.astart()

        # -- 1. one Deployment per tenant ---------------------------------------------------------------------
        log(f"single-tenant daemon serving one tenant of {m} Nodes")
        results["single"] = await single_tenant(emulator, m, idle_s, work_dir)
        log(f"single-tenant daemon: {results['single']['rss_mib']} MiB settled RSS "
            f"(VmHWM {results['single']['vm_hwm_mib']} MiB)")

        # -- 2. RSS vs tenants --------------------------------------------------------------------------------
        async with management_transport(management) as kube:
            await prepare_management(kube)
            env = {**fleet_env(emulator, management.admin_kubeconfig), **_env_pairs(args.replica_env)}
            replica = Daemon(DaemonConfig(DAEMON_FLAGS, env, "fleet"), work_dir)
            await asyncio.to_thread(replica.start)
            for step in steps:
                new = list(range(len(tenants), step))
                t0 = time.monotonic()
                if new:
                    log(f"step {step}: starting {len(new)} tenant kube-apiserver(s)")
                    await tenants.start(new, args.start_parallel)
                    for i in new:
                        await register_tenant(kube, i, tenants.servers[i])
                    started_s = time.monotonic() - t0
                    await register_all({i: tenants.servers[i] for i in new}, STEP, m)
                    served_s = await wait_served(replica, [tenant_key(i) for i in new], m)
                else:
                    started_s = served_s = 0.0
                reading = await settled_rss(replica, idle_s)
                apiserver_rss = [rss_bytes(s.pid) for s in tenants.servers.values() if s.pid is not None]
                reading.update(tenants=step, nodes=step * m, apiservers_started_s=round(started_s, 1),
                               tenant_connections=tenant_connections(replica.pid,
                                                                     {s.port for s in tenants.servers.values()}),
                               served_after_nodes_s=round(served_s, 2),
                               apiserver_rss_mib_mean=round(statistics.mean(apiserver_rss) / MIB, 1)
                               if apiserver_rss else None,
                               available_gib=round(psutil.virtual_memory().available / 1024**3, 1))
                results["steps"].append(reading)
                log(f"step {step}: replica {reading['rss_mib']} MiB (VmHWM {reading['vm_hwm_mib']}), "
                    f"{reading['tenant_connections']} connections to tenants, "
                    f"{reading['available_gib']} GiB available, kube-apiserver {reading['apiserver_rss_mib_mean']} "
                    "MiB each")
            results.update(marginal_costs(results["steps"]))

            # -- 3. burst in every tenant at once -------------------------------------------------------------
            servers = dict(tenants.servers)
            watchers = await start_watchers(servers)
            cpu_burst0 = cpu_split(replica, servers, emulator)
            c0 = await asyncio.to_thread(CloudCounters.read, emulator)
            w0 = kube_writes(await asyncio.to_thread(replica.metrics))
            cpu0 = replica.cpu_seconds()
            log(f"burst: {m} Nodes in each of {n} tenants at once")
            spy = None
            if args.profile_dir is not None:
                args.profile_dir.mkdir(parents=True, exist_ok=True)
                spy = PySpy(replica.pid, args.profile_dir / "profile-fleet-burst.collapsed.txt")
            try:
                regs = await register_all(servers, BURST, m)
                all_done = await wait_removed(watchers, BURST, m, WAIT_TIMEOUT)
            finally:
                if spy is not None:
                    spy.stop()
            if spy is not None and spy.output.is_file():
                summary_path = args.profile_dir / "profile-fleet-burst.txt"
                summary_path.write_text(format_summary(summarise(spy.output, str(REPO_ROOT) + "/"),
                                                       "py-spy profile of the fleet replica, burst"))
                results["profile"] = str(summary_path)
                log(f"profile of the burst: {summary_path}")
            await settle(replica)
            cpu_burst = cpu_delta(cpu_split(replica, servers, emulator), cpu_burst0)
            c1 = await asyncio.to_thread(CloudCounters.read, emulator)
            w1 = kube_writes(await asyncio.to_thread(replica.metrics))
            cloud = c1 - c0
            writes = {k: v - w0.get(k, 0.0) for k, v in w1.items() if v - w0.get(k, 0.0)}
            split = split_writes(writes)
            burst = burst_timing(watchers, regs, BURST, m)
            burst.update(all_initialized=all_done, tenants=n, cloudsigma=cloud.as_json(),
                         cloudsigma_api_per_tenant=round(cloud.api_total / n, 2) if n else None,
                         token_exchanges=cloud.token_exchanges, kube_writes=writes,
                         node_writes_per_node=round(split["node"] / (n * m), 3) if n else None,
                         event_writes_per_node=round(split["events"] / (n * m), 3) if n else None,
                         replica_cpu_s=round(replica.cpu_seconds() - cpu0, 2), cpu_seconds=cpu_burst)
            results["burst"] = burst
            log(f"burst: {burst['initialized']}/{n * m} initialised, p50 {burst['delay_s'].get('p50')} s, "
                f"p99 {burst['delay_s'].get('p99')} s, max {burst['delay_s'].get('max')} s; burst "
                f"{burst['burst_s']} s; CloudSigma API requests {cloud.api_total} ({cloud.token_exchanges} token "
                "exchanges)")
            after = await settled_rss(replica, idle_s)
            after.update(tenants=n, nodes=2 * n * m,
                         tenant_connections=tenant_connections(replica.pid, {s.port for s in servers.values()}))
            results["after_burst"] = after
            held = n * m
            before = results["steps"][-1]["rss_mib"]
            results["replica_bytes_per_node"] = round((after["rss_mib"] - before) * MIB / held) if held else None
            log(f"after the burst ({2 * n * m} Nodes held): {after['rss_mib']} MiB")
            await asyncio.to_thread(replica.stop)
            results["replica"] = {"vm_hwm_mib": round((replica.peak_rss_hwm or 0) / MIB, 1),
                                  "uptime_s": round(replica.uptime, 1), "exit_code": replica.exit_code,
                                  "sigterm_to_exit_s": round(replica.stop_seconds or 0.0, 2),
                                  "log": str(replica.log_path)}

        # -- 4. the floor -------------------------------------------------------------------------------------
        log("floor: the same two writes per Node from a bare client, every tenant at once")
        templates = {i: await read_templates(s, node_names(i, BURST, m)) for i, s in servers.items()}
        cpu_floor0 = cpu_split(None, servers, emulator)
        floor_regs = await asyncio.gather(*(floor_tenant(s, node_names(i, FLOOR, m), templates[i])
                                            for i, s in servers.items()))
        floor_done = await wait_removed(watchers, FLOOR, m, WAIT_TIMEOUT)
        cpu_floor = cpu_delta(cpu_split(None, servers, emulator), cpu_floor0)
        floor = burst_timing(watchers, dict(zip(servers, floor_regs, strict=True)), FLOOR, m)
        floor.update(all_initialized=floor_done, node_writes_per_node=2, cpu_seconds=cpu_floor)
        results["floor"] = floor
        if burst.get("burst_s") and floor.get("burst_s"):
            results["burst_vs_floor"] = round(burst["burst_s"] / floor["burst_s"], 2)
        log(f"floor: burst {floor['burst_s']} s, p99 {floor['delay_s'].get('p99')} s; ours/floor "
            f"{results.get('burst_vs_floor')}")
    finally:
        for w in watchers.values():
            w.stop()
        if replica is not None:
            await asyncio.to_thread(replica.kill)
        if emulator is not None:
            await emulator.stop()
        await tenants.stop_all()
        await management.astop()

    if store_ns != "none":
        counts = [int(x) for x in store_ns.split(",") if x.strip()]
        log(f"node store: RSS per held Node for N = {', '.join(map(str, counts))} (python -m bench.nodestore)")
        results["node_store"] = await asyncio.to_thread(nodestore.run, counts)
    results["apiservers"] = {"tenants": n, "management": 1, "single_tenant": 1, "at_once": n + 1}
    results["total_seconds"] = round(time.monotonic() - started, 1)
    results["targets"] = evaluate_fleet_targets(results)
    return results


def write_reports(results: dict[str, Any], args: argparse.Namespace, results_path: Path) -> None:
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(render_fleet_page(results, report_path=args.report, results_path=results_path))
    log(f"wrote {args.report}")
    if args.no_main_report:
        return
    from bench.cli import PLOT_PATH, REPORT_PATH
    from bench.cli import RESULTS_DIR as MAIN_RESULTS
    from bench.report import evaluate_targets, render_report

    main_results = MAIN_RESULTS / "latest.json"
    if not main_results.is_file():
        log(f"{main_results} missing: docs/benchmarks.md not re-rendered")
        return
    data = json.loads(main_results.read_text())
    data["targets"] = evaluate_targets(data)
    REPORT_PATH.write_text(render_report(data, plot_path=PLOT_PATH, report_path=REPORT_PATH,
                                         results_path=main_results))
    log(f"re-rendered {REPORT_PATH} (its Fleet mode section)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report_only is not None:
        results = json.loads(args.report_only.read_text())
        results["targets"] = evaluate_fleet_targets(results)
        write_reports(results, args, args.report_only)
        return 0
    if args.tenants < 1 or args.nodes_per_tenant < 1:
        raise SystemExit("--tenants and --nodes-per-tenant must be at least 1")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="ccm-bench-fleet-"))
    ok = False
    try:
        results = asyncio.run(run(args, work_dir))
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        path = args.results_dir / f"fleet-{stamp}.json"
        text = json.dumps(results, indent=1) + "\n"
        path.write_text(text)
        latest = args.results_dir / FLEET_RESULTS_NAME
        latest.write_text(text)
        log(f"wrote {path} (and {latest.name}); total {results['total_seconds']} s")
        write_reports(results, args, latest)
        ok = True
    finally:
        if args.keep_logs or not ok:
            log(f"daemon logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
