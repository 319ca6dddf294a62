"""Targets (reported, never asserted) and Markdown of the fleet benchmark: ``docs/benchmarks-fleet.md`` and the
"Fleet mode" section of ``docs/benchmarks.md``. Pure functions of the results JSON."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from bench.reporting import GOAL_BYTES_PER_NODE
from bench.reporting import fmt as _fmt
from bench.reporting import met as _met
from bench.reporting import store_slope as _store_slope

REPO_ROOT = Path(__file__).resolve().parents[1]
FLEET_REPORT_PATH = REPO_ROOT / "docs" / "benchmarks-fleet.md"
FLEET_RESULTS_NAME = "fleet-latest.json"
FLEET_RESULTS_PATH = REPO_ROOT / "bench" / "results" / FLEET_RESULTS_NAME
FLEET_ANALYSIS_PATH = REPO_ROOT / "bench" / "fleet_analysis.md"
GOAL_MIB_PER_10_NODE_TENANT = 1.0
GOAL_P99_S = 2.0
GOAL_P99_TENANTS = 20


def _opts(results: dict[str, Any]) -> tuple[int, int, bool]:
    o = results.get("options") or {}
    return int(o.get("tenants") or 0), int(o.get("nodes_per_tenant") or 0), bool(o.get("quick"))


def _label(results: dict[str, Any]) -> str:
    n, m, quick = _opts(results)
    return f"{n} tenants x {m} Nodes{', quick run' if quick else ''}"


def evaluate_fleet_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17's fleet targets: ``{target, scope, measured, met, note}``; ``met`` None = reported only."""
    n, m, _ = _opts(results)
    out: list[dict[str, Any]] = []

    def add(target: str, scope: str, measured: str, met: bool | None, note: str = "") -> None:
        out.append({"target": target, "scope": scope, "measured": measured, "met": met, "note": note})

    steps = results.get("steps") or []
    marginal = results.get("marginal_mib_per_tenant")
    if marginal is not None and not math.isnan(marginal):
        add(f"marginal RSS per 10-node tenant ≤ {GOAL_MIB_PER_10_NODE_TENANT:g} MiB",
            f"{', '.join(str(s['tenants']) for s in steps)} tenants x {m} Nodes", _fmt(marginal, " MiB", 2),
            marginal <= GOAL_MIB_PER_10_NODE_TENANT if m == 10 else None,
            "least-squares slope of the replica's settled RSS over the steps from 1 tenant on; the first tenant's "
            f"one-time cost: {_fmt(results.get('first_tenant_mib'), ' MiB', 2)}"
            + ("" if m == 10 else f"; informational: tenants of {m} Nodes, the goal is for 10"))
    per_node = results.get("replica_bytes_per_node")
    if per_node is not None:
        add("RSS per held Node ≤ 3 KiB", f"replica, {n * m:,} → {2 * n * m:,} Nodes", _fmt(per_node, " B", 0),
            None, f"(settled RSS after the burst - before) / {n * m:,} Nodes: a small difference of two noisy "
            "readings, reported only; the node store measures it precisely")
    store = results.get("node_store") or []
    if len(store) >= 2:
        slope = _store_slope(store)
        add("RSS per held Node ≤ 3 KiB", f"node store, N={store[0]['nodes']:,}→{store[-1]['nodes']:,}",
            _fmt(slope, " B", 0), slope <= GOAL_BYTES_PER_NODE, "python -m bench.nodestore (same watcher code "
            "in both modes)")
    for r in store if len(store) < 2 else []:
        per = r.get("rss_bytes_per_node")
        add("RSS per held Node ≤ 3 KiB", f"node store, N={r['nodes']:,}", _fmt(per, " B", 0),
            per is not None and per <= GOAL_BYTES_PER_NODE, "python -m bench.nodestore, RSS growth / N "
            "(includes a fixed part)")
    burst = results.get("burst") or {}
    p99 = (burst.get("delay_s") or {}).get("p99")
    if burst:
        add(f"p99 taint-removal delay ≤ {GOAL_P99_S:g} s, every tenant a 10-node burst at once",
            f"{n} tenants x {m} Nodes", _fmt(p99, " s"),
            (p99 is not None and p99 <= GOAL_P99_S) if n >= GOAL_P99_TENANTS and m == 10 else None,
            "" if n >= GOAL_P99_TENANTS and m == 10 else
            f"informational: the goal is for {GOAL_P99_TENANTS} tenants x 10 Nodes")
        cloud = burst.get("cloudsigma") or {}
        add("CloudSigma calls per tenant burst", f"{n} tenants x {m} Nodes",
            f"{_fmt(burst.get('cloudsigma_api_per_tenant'))} API requests per tenant "
            f"({_fmt(cloud.get('api_total'))} in all) + {_fmt(burst.get('token_exchanges'))} token exchanges",
            None, "reported")
    ratio = results.get("burst_vs_floor")
    if ratio is not None:
        add("burst time as a ratio to the floor (bare client, same writes)", f"{n} tenants x {m} Nodes",
            f"{_fmt(ratio, 'x')} ({_fmt(burst.get('burst_s'), ' s')} vs "
            f"{_fmt((results.get('floor') or {}).get('burst_s'), ' s')})", None, "reported")
    cmp = comparison_rows(results)
    if cmp:
        last = cmp[-1]
        add("one fleet replica vs one Deployment per tenant", f"{last['tenants']} tenants x {m} Nodes",
            f"{_fmt(last['fleet_mib'], ' MiB', 0)} vs {_fmt(last['deployments_mib'], ' MiB', 0)}",
            None, "reported")
    return out


def comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per step with tenants: the fleet replica's settled RSS and N x the single-tenant daemon's."""
    single = (results.get("single") or {}).get("rss_mib")
    if single is None:
        return []
    rows = []
    for s in results.get("steps") or []:
        t = int(s["tenants"])
        if t > 0:
            rows.append({"tenants": t, "fleet_mib": float(s["rss_mib"]), "deployments_mib": t * float(single),
                         "ratio": t * float(single) / float(s["rss_mib"]) if s["rss_mib"] else None})
    return rows


def _comparison_table(results: dict[str, Any]) -> list[str]:
    rows = comparison_rows(results)
    if not rows:
        return []
    _, m, _ = _opts(results)
    single = results["single"]["rss_mib"]
    lines = [f"| tenants ({m} Nodes each) | one Deployment per tenant (N x {_fmt(single, ' MiB', 1)}) | one fleet "
             "replica | saved |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['tenants']} | {_fmt(r['deployments_mib'], ' MiB', 0)} | {_fmt(r['fleet_mib'], ' MiB', 1)} | "
              f"{_fmt(r['ratio'], 'x', 1)} |" for r in rows]
    return [*lines, ""]


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


def _targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| target | scope | measured | |", "| --- | --- | --- | --- |"]
    for t in results.get("targets") or evaluate_fleet_targets(results):
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"| {t['target']} | {t['scope']} | {t['measured']}{note} | {_met(t['met'])} |")
    return [*lines, ""]


def _burst_table(results: dict[str, Any]) -> list[str]:
    b, f = results.get("burst") or {}, results.get("floor") or {}
    if not b:
        return []
    bd, fd = b.get("delay_s") or {}, f.get("delay_s") or {}

    def row(label: str, ours: Any, floor: Any, unit: str = "") -> str:
        return f"| {label} | {_fmt(ours, unit)} | {_fmt(floor, unit)} |"

    lines = ["| | fleet replica | floor (bare client) |", "| --- | ---: | ---: |",
             row("Nodes (all tenants at once)", b.get("nodes"), f.get("nodes")),
             row("initialised", b.get("initialized"), f.get("initialized")),
             row("burst time: first create sent → last taint gone", b.get("burst_s"), f.get("burst_s"), " s"),
             row("bench client's requests done after", b.get("registration_s"), f.get("registration_s"), " s"),
             *(row(f"{q} delay (create returned → taint gone)", bd.get(q), fd.get(q), " s")
               for q in ("p50", "p95", "p99", "max")),
             row("node writes per Node", b.get("node_writes_per_node"), f.get("node_writes_per_node")),
             row("Event writes per Node", b.get("event_writes_per_node"), 0),
             row("CloudSigma API requests (all tenants)", (b.get("cloudsigma") or {}).get("api_total"), 0),
             row("CloudSigma API requests per tenant", b.get("cloudsigma_api_per_tenant"), 0),
             row("token exchanges", b.get("token_exchanges"), 0),
             row("replica CPU during the burst", b.get("replica_cpu_s"), None, " s")]
    bc, fc = b.get("cpu_seconds") or {}, f.get("cpu_seconds") or {}
    if bc:
        lines += [row("wall time of the CPU window (create start → all seen, settled)", bc.get("_wall"),
                      fc.get("_wall"), " s"),
                  *(row(f"CPU: {label}", bc.get(key), fc.get(key), " s") for key, label in (
                      ("replica", "fleet replica"), ("kube_apiservers", "the tenant kube-apiservers together"),
                      ("emulator", "CloudSigma emulator"), ("bench", "the bench (creates, a watch per tenant)")))]
    by_endpoint = (b.get("cloudsigma") or {}).get("api_by_endpoint") or {}
    if by_endpoint:
        lines += ["", "CloudSigma requests of the burst by endpoint: "
                  + ", ".join(f"`{k}` {v:,}" for k, v in sorted(by_endpoint.items())) + "."]
    return [*lines, ""]


def _steps_table(results: dict[str, Any]) -> list[str]:
    steps = results.get("steps") or []
    _, m, _ = _opts(results)
    lines = ["| tenants | Nodes held | replica RSS (settled) | Δ per added tenant | VmHWM so far | connections to "
             "tenants | kube-apiserver RSS each | memory available |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    prev: dict[str, Any] | None = None
    for s in steps:
        delta = None
        if prev is not None and s["tenants"] > prev["tenants"]:
            delta = (s["rss_mib"] - prev["rss_mib"]) / (s["tenants"] - prev["tenants"])
        lines.append(f"| {s['tenants']} | {s['nodes']:,} | {_fmt(s['rss_mib'], ' MiB', 1)} | "
                     f"{_fmt(delta, ' MiB', 2)} | {_fmt(s.get('vm_hwm_mib'), ' MiB', 1)} | "
                     f"{_fmt(s.get('tenant_connections'))} | "
                     f"{_fmt(s.get('apiserver_rss_mib_mean'), ' MiB', 0)} | "
                     f"{_fmt(s.get('available_gib'), ' GiB', 1)} |")
        prev = s
    after = results.get("after_burst")
    if after:
        lines.append(f"| {after['tenants']} (after the burst) | {after['nodes']:,} | "
                     f"{_fmt(after['rss_mib'], ' MiB', 1)} | | {_fmt(after.get('vm_hwm_mib'), ' MiB', 1)} | "
                     f"{_fmt(after.get('tenant_connections'))} | | |")
    lines += ["", f"Least-squares slope from 1 tenant on: **{_fmt(results.get('marginal_mib_per_tenant'), ' MiB', 2)} "
              f"per added {m}-node tenant**. The first tenant costs "
              f"{_fmt(results.get('first_tenant_mib'), ' MiB', 2)} once (mostly what the allocator keeps of its "
              "initialisation's TLS buffers, see the analysis, plus what the first tenant builds for all: the "
              "shared CloudSigma session, token cache, code paths run for the first time); the slope "
              f"over every step, 0 included, is {_fmt(results.get('slope_from_zero_mib_per_tenant'), ' MiB', 2)}."]
    return [*lines, ""]


def render_fleet_section(results: dict[str, Any], *, fleet_page: str, heading: str = "##") -> list[str]:
    """A short summary (the ``docs/benchmarks.md`` section, also the head of the fleet page)."""
    n, m, _ = _opts(results)
    b = results.get("burst") or {}
    d = b.get("delay_s") or {}
    single = (results.get("single") or {}).get("rss_mib")
    lines = [f"{heading} Fleet mode", "",
             f"`python -m bench.fleet` ({_label(results)}, {results.get('date', '?')}; details: "
             f"[{Path(fleet_page).name}]({fleet_page})): one `cloudsigma-ccm --mode fleet` replica serving {n} "
             f"tenant clusters, each a real kube-apiserver, against one single-tenant daemon (one Deployment per "
             f"tenant) serving one {m}-node tenant in the same run.", ""]
    lines += _comparison_table(results)
    lines += [f"- marginal RSS per added {m}-node tenant: **{_fmt(results.get('marginal_mib_per_tenant'), ' MiB', 2)}"
              f"** (the first tenant {_fmt(results.get('first_tenant_mib'), ' MiB', 1)} once; one Deployment per "
              f"tenant: {_fmt(single, ' MiB', 1)} each);",
              f"- every tenant a {m}-node burst at once ({_fmt(b.get('nodes'))} Nodes): p50 / p99 / max taint-removal "
              f"delay {_fmt(d.get('p50'), ' s')} / **{_fmt(d.get('p99'), ' s')}** / {_fmt(d.get('max'), ' s')}; "
              f"burst {_fmt(b.get('burst_s'), ' s')}, **{_fmt(results.get('burst_vs_floor'), 'x')}** the floor's "
              f"{_fmt((results.get('floor') or {}).get('burst_s'), ' s')} (a bare client sending the same writes);",
              f"- CloudSigma API requests per tenant burst: {_fmt(b.get('cloudsigma_api_per_tenant'))} (+ one token "
              "exchange per tenant owner).", ""]
    return lines


def render_fleet_page(results: dict[str, Any], *, report_path: Path, results_path: Path | None) -> str:
    env = results.get("environment", {})
    opts = results.get("options", {})
    n, m, quick = _opts(results)
    docs_dir = report_path.parent
    lines = [
        "# Fleet benchmark",
        "",
        "<!-- Generated by `python -m bench.fleet` (bench/fleetreport.py); edit bench/fleet_analysis.md for the "
        "analysis text. -->",
        "",
        "One `cloudsigma-ccm --mode fleet` replica (the built console script, a subprocess) serving N tenant "
        "clusters of a management kube-apiserver — each tenant a real kube-apiserver with embedded etcd, its "
        "CloudSigmaCluster and Cluster API kubeconfig Secret written as Cluster API writes them — against the "
        "CloudSigma emulator; beside it, in the same run, one single-tenant daemon (default mode: one Deployment "
        "per tenant) serving one tenant.",
        "",
        "## How to run",
        "",
        "```sh",
        ".venv/bin/python -m bench.fleet                                  # 20 tenants x 10 Nodes (make bench)",
        ".venv/bin/python -m bench.fleet --quick --tenants 5              # a few minutes",
        ".venv/bin/python -m bench.fleet --report-only bench/results/fleet-latest.json   # re-render",
        "```",
        "",
        "Options: `--tenants` (20), `--nodes-per-tenant` (10), `--steps` (tenant counts where RSS is read; default "
        "0, 1, N/4, N/2, N), `--idle-seconds` (35 s before each RSS reading; quick 31 s), `--latency-ms` (25), "
        "`--replica-env NAME=VALUE` (experiments), "
        "`--start-parallel` (3 API servers started at once), `--node-store` (N list for `bench.nodestore`, or "
        "`none`), `--keep-logs`, `--no-main-report` (do not re-render `docs/benchmarks.md`).",
        "",
        "## This run",
        "",
        "| | |",
        "| --- | --- |",
        f"| date (UTC) | {results.get('date', '?')}{' — **quick run**' if quick else ''} |",
        f"| command | `{results.get('command', '?')}` |",
        f"| machine | {env.get('logical_cpus', '?')} logical CPUs ({env.get('cpu_model', '?')}), "
        f"{env.get('memory_gib', '?')} GiB memory, shared with other work |",
        f"| Python | {env.get('python', '?')} |",
        f"| Kubernetes | kube-apiserver {env.get('kubernetes', '?')} (embedded etcd, tests/kube-apiserver) |",
        f"| revision | {env.get('git_commit', '?')}{' + uncommitted changes' if env.get('git_dirty') else ''} |",
        f"| tenants | {n} (kube-apiservers running at once: {n} tenants + 1 management), {m} Nodes per tenant "
        f"and per burst; {opts.get('owners', '?')} |",
        f"| fleet replica | one, `{' '.join(opts.get('daemon_flags') or [])}`, lease timings {opts.get('lease')} |",
        f"| CloudSigma | emulator subprocess, {_fmt(opts.get('latency_ms'), ' ms', 0)} per request; Keycloak-style "
        f"token exchange (token lifetime {opts.get('token_lifetime_s')} s) |",
        f"| RSS reading | median of 5 readings 200 ms apart, after the replica's writes were still for 2 s and "
        f"{_fmt(opts.get('idle_seconds'), ' s', 0)} idle; VmHWM from /proc |",
        f"| total runtime | {_fmt(results.get('total_seconds'), ' s', 0)} |",
    ]
    if results_path is not None:
        lines.append(f"| raw results | `{_rel(results_path, docs_dir.parent)}` |")
    # The summary of docs/benchmarks.md's section, without its heading and pointer to this page.
    lines += ["", "## Summary", "", *render_fleet_section(results, fleet_page=report_path.name)[4:]]
    lines += ["## Targets", "", "Reported, not asserted.", "", *_targets_table(results)]
    lines += ["## RSS vs tenants", "",
              f"Tenants added in steps, each with {m} kubelet-like Nodes initialised by the replica before the "
              "reading.", "", *_steps_table(results)]
    lines += ["## One fleet replica vs one Deployment per tenant", "",
              f"The single-tenant daemon's settled RSS serving one {m}-node tenant "
              f"({_fmt((results.get('single') or {}).get('rss_mib'), ' MiB', 1)}, VmHWM "
              f"{_fmt((results.get('single') or {}).get('vm_hwm_mib'), ' MiB', 1)}), times N, against the replica "
              "serving N such tenants.", "", *_comparison_table(results)]
    lines += ["## Burst in every tenant at once, and the floor", "",
              f"{m} more Nodes created in each of the {n} tenants at once ({m} concurrent creates per tenant, all "
              "tenants together), kubelet-style (taint and status in one create, no addresses); a watch per tenant "
              "(its own thread) timestamps when each Node loses `node.cloudprovider.kubernetes.io/uninitialized`. "
              "The floor: the replica stopped, the same again with a bare client that, as soon as each create "
              "returns, sends the two writes the CCM sends (`ccm/kube/patching.py`: the `nodes/status` merge "
              "patch of the addresses, then the `nodes` merge patch of providerID, labels and taints, with uid and "
              "resourceVersion preconditions), with the content the CCM wrote to a Node of the same tenant.", "",
              *_burst_table(results)]
    lines += _per_node_section(results)
    if FLEET_ANALYSIS_PATH.is_file():
        lines += [FLEET_ANALYSIS_PATH.read_text().strip(), ""]
    lines += ["## Method and caveats", "",
              "- Everything shares one 2-core machine: N + 1 kube-apiservers, the emulator, the replica and the "
              "bench (which creates the Nodes and runs a watch per tenant); a burst measures the whole system.",
              "- Per-Node delays run from the moment the bench saw its create return; the bench (one process: the "
              "creates of every tenant and a watch thread per tenant) is busy during a burst, so it can see a create "
              "return after its watch already saw the taint gone (a negative minimum). The burst time, from the "
              "first create sent to the last taint gone, does not depend on that; the CPU rows say who used the "
              "cores.",
              "- Each tenant has its own owner, so the fleet holds one token per tenant and exchanges one per "
              "tenant; tenants of one owner would share a token.",
              "- The single-tenant daemon runs first, alone, against its own kube-apiserver (stopped before the "
              "fleet starts); its settled RSS is read the same way as the replica's.",
              "- Python's allocator rarely returns memory: settled RSS after a step includes what the step's "
              "transient (lists, the burst) left in the heap; VmHWM is the peak so far.",
              "- The idle before each reading is longer than twice aiohttp's 15 s keep-alive (an idle pooled "
              "connection is closed 15-30 s after its last use): a tenant initialising Nodes opens up to ~11 TLS "
              "connections to its API server (workers, Events, the watch), each with a 256 KiB read buffer in "
              "asyncio's SSL protocol, and keeps them for that long. The table's connection count says how many "
              "were still open at each reading.",
              ""]
    return "\n".join(lines)


def _per_node_section(results: dict[str, Any]) -> list[str]:
    n, m, _ = _opts(results)
    store = results.get("node_store") or []
    lines = ["## RSS per held Node", ""]
    per_node = results.get("replica_bytes_per_node")
    if per_node is not None:
        lines += [f"The replica after the burst holds {2 * n * m:,} Nodes instead of {n * m:,}: settled RSS grew by "
                  f"{_fmt(per_node, ' B', 0)} per added Node — two readings of a ~100 MiB process a few hundred "
                  "KiB apart, so noise-sized; reported only.", ""]
    if store:
        lines += ["`python -m bench.nodestore` (the node watcher both modes use, N realistic Nodes listed in a fresh "
                  "interpreter):", "", "| N | RSS per held Node | traced bytes per held Node |",
                  "| ---: | ---: | ---: |"]
        lines += [f"| {r['nodes']:,} | {_fmt(r.get('rss_bytes_per_node'), ' B', 0)} | "
                  f"{_fmt(r.get('traced_bytes_per_node'), ' B', 0)} |" for r in store]
        if len(store) >= 2:
            lines += ["", f"Slope: {_fmt(_store_slope(store), ' B', 0)} per additional held Node."]
        lines.append("")
    return lines


def fleet_section_for_main_report(docs_dir: Path, results_path: Path = FLEET_RESULTS_PATH) -> list[str]:
    """The "Fleet mode" section of ``docs/benchmarks.md``, from the latest fleet results (none: a pointer)."""
    page = _rel(FLEET_REPORT_PATH, docs_dir)
    if not results_path.is_file():
        return ["## Fleet mode", "", f"Not run yet: `python -m bench.fleet` (part of `make bench`) writes [{page}]"
                f"({page}) and this section.", ""]
    results = json.loads(results_path.read_text())
    return render_fleet_section(results, fleet_page=page)
