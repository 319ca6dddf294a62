"""``python -m bench``: run the benchmark, write results JSON, the Markdown report and the plot."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import environment, footprint, nodestore, runtimeimage
from bench.report import evaluate_targets, render_report
from bench.scenario import Options, run_case

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
REPORT_PATH = REPO_ROOT / "docs" / "benchmarks.md"
PLOT_PATH = REPO_ROOT / "docs" / "benchmark-taint-removal.png"
SCHEMA_VERSION = 1


def comma_counts(text: str, *, what: str, minimum: int) -> list[int]:
    """``"100,1000"`` → ``[100, 1000]`` for an argparse ``type``; every count at least ``minimum``."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
    if not counts or any(c < minimum for c in counts):
        raise argparse.ArgumentTypeError(f"{what} must be {'positive' if minimum == 1 else f'{minimum} or more'}")
    return counts


def _node_counts(text: str) -> list[int]:
    return comma_counts(text, what="node counts", minimum=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="End-to-end benchmark of cloudsigma-ccm: the built daemon against a real kube-apiserver and "
                    "the CloudSigma emulator, ours (shared snapshot) vs. the per-node reference.")
    p.add_argument("--nodes", type=_node_counts, default=[100, 1000, 5000],
                   help="comma-separated node counts (default 100,1000,5000)")
    p.add_argument("--latency-ms", type=float, default=25.0, help="emulator latency per request (default 25)")
    p.add_argument("--quick", action="store_true",
                   help="shorter phases: 2 steady-state periods and a 15 s idle window (instead of 3 and 60 s)")
    p.add_argument("--reference-max-nodes", type=int, default=1000,
                   help="run the reference (--server-lookup=per-node --concurrent-node-syncs=1) only up to this N "
                        "(default 1000; 0 disables it)")
    p.add_argument("--register-concurrency", type=int, default=50, help="concurrent Node creates (default 50)")
    p.add_argument("--resync", type=float, default=5.0,
                   help="--node-status-update-frequency of the daemon during burst and steady state, seconds "
                        "(default 5; production default 300)")
    p.add_argument("--cache-max-age", type=float, default=2.0,
                   help="--server-cache-max-age during burst and steady state, seconds (default 2)")
    p.add_argument("--steady-periods", type=int, default=None, help="resync periods measured (default 3; quick 2)")
    p.add_argument("--idle-seconds", type=float, default=None, help="idle window after the burst (default 60; "
                                                                     "quick 15)")
    p.add_argument("--no-idle", action="store_true", help="skip the idle window after the burst (ours)")
    p.add_argument("--token-lifetime", type=int, default=300, help="emulator token lifetime, seconds (default 300)")
    p.add_argument("--profile", action="store_true",
                   help="sample the daemon with py-spy during burst + steady state of the largest N (ours)")
    p.add_argument("--daemon-flag", action="append", default=[], metavar="FLAG",
                   help="extra flag for ours only, e.g. --daemon-flag=--concurrent-node-syncs=32 (repeatable; "
                        "for experiments: the default run uses the daemon's defaults)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--report", type=Path, default=REPORT_PATH, help="Markdown report path")
    p.add_argument("--plot", type=Path, default=PLOT_PATH, help="PNG plot path")
    p.add_argument("--report-only", type=Path, metavar="RESULTS_JSON",
                   help="only re-render the report and plot from a results file")
    p.add_argument("--keep-logs", action="store_true", help="keep the daemons' logs (printed path)")
    p.add_argument("--no-freshness", action="store_true",
                   help="skip the freshness rows (python -m bench.freshness: calls at rest, cloud change → Node)")
    p.add_argument("--freshness-period", type=float, default=5.0,
                   help="--server-refresh-period of the freshness run, seconds (default 5; figures are scaled to "
                        "the production default)")
    p.add_argument("--no-footprint", action="store_true",
                   help="skip start-up, idle RSS (python -m bench.footprint) and the server snapshot per server "
                        "(python -m bench.serverstore), which otherwise run first")
    p.add_argument("--no-node-store", action="store_true",
                   help="skip the memory-per-held-Node measurement (python -m bench.nodestore) for each N")
    return p


def log(message: str) -> None:
    print(f"{datetime.now(UTC).strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def write_outputs(results: dict[str, Any], args: argparse.Namespace, *, results_path: Path | None) -> None:
    from bench.plot import plot_taint_removal

    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot_taint_removal(results, args.plot)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(render_report(results, plot_path=args.plot, report_path=args.report,
                                         results_path=results_path))
    log(f"wrote {args.report} and {args.plot}")


async def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    quick = bool(args.quick)
    steady_periods = args.steady_periods or (2 if quick else 3)
    idle_seconds = args.idle_seconds if args.idle_seconds is not None else (15.0 if quick else 60.0)
    nodes: list[int] = args.nodes
    started = time.monotonic()
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "environment": {**environment.describe(), "hidden_dev_packages": runtimeimage.apply_to_environ()},
        "options": {
            "nodes": nodes, "latency_ms": args.latency_ms, "quick": quick,
            "reference_max_nodes": args.reference_max_nodes, "register_concurrency": args.register_concurrency,
            "resync_s": args.resync, "cache_max_age_s": args.cache_max_age, "steady_periods": steady_periods,
            "idle_seconds": idle_seconds, "idle": not args.no_idle, "token_lifetime_s": args.token_lifetime,
            "identity_provider": "emulator (Keycloak-style legacy token exchange)",
            "ours_extra_flags": list(args.daemon_flag),
        },
        "runs": [],
    }
    if not args.no_footprint:
        results["footprint"] = await footprint.measure(work_dir=work_dir, log=log)
        results["server_store"] = await asyncio.to_thread(server_store, SERVER_STORE_N)
        log(f"[server-store] {results['server_store']['bytes_per_server']} B per server "
            f"({SERVER_STORE_N} servers)")
    for n in nodes:
        profile_dir = args.results_dir if args.profile and n == max(nodes) else None
        opts = Options(latency_ms=args.latency_ms, register_concurrency=args.register_concurrency,
                       resync=args.resync, cache_max_age=args.cache_max_age, steady_periods=steady_periods,
                       idle_seconds=idle_seconds, token_lifetime=args.token_lifetime, idle=not args.no_idle,
                       work_dir=work_dir, profile_dir=profile_dir, extra_flags=tuple(args.daemon_flag))
        t0 = time.monotonic()
        run_result = await run_case(n, "snapshot", opts, log)
        run_result["case_seconds"] = round(time.monotonic() - t0, 1)
        results["runs"].append(run_result)
        if 0 < n <= args.reference_max_nodes:
            ref_opts = Options(**{**opts.__dict__, "profile_dir": None})
            t0 = time.monotonic()
            ref_result = await run_case(n, "reference", ref_opts, log)
            ref_result["case_seconds"] = round(time.monotonic() - t0, 1)
            results["runs"].append(ref_result)
        elif n > args.reference_max_nodes:
            log(f"[reference-{n}] skipped: above --reference-max-nodes={args.reference_max_nodes}")
    if not args.no_node_store:
        log(f"[node-store] RSS per held Node for N = {', '.join(map(str, nodes))} (python -m bench.nodestore)")
        results["node_store"] = await asyncio.to_thread(nodestore.run, nodes)
        for r in results["node_store"]:
            log(f"[node-store] N={r['nodes']}: {r['rss_bytes_per_node']} B RSS, {r['traced_bytes_per_node']} B "
                f"traced per held Node")
    if not args.no_freshness:
        from bench.freshness import measure

        log("[freshness] calls at rest, writes per unchanged refresh, cloud change → Node, reboot → new address")
        results["freshness"] = await measure(nodes=min(nodes), period=args.freshness_period,
                                             rest_periods=4 if quick else 6, changes=8 if quick else 20,
                                             reboots=4 if quick else 10)
    results["total_seconds"] = round(time.monotonic() - started, 1)
    results["targets"] = evaluate_targets(results)
    return results


#: Servers in the snapshot measurement (as in bench.daemonheap's default).
SERVER_STORE_N = 2000


def server_store(n: int) -> dict[str, Any]:
    """``python -m bench.serverstore --servers n`` in a fresh interpreter (tracemalloc stays out of the bench)."""
    out = subprocess.run([sys.executable, "-m", "bench.serverstore", "--servers", str(n)], check=True,
                         capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    return dict(json.loads(out.stdout))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report_only is not None:
        results = json.loads(args.report_only.read_text())
        results["targets"] = evaluate_targets(results)
        write_outputs(results, args, results_path=args.report_only)
        return 0
    args.results_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="ccm-bench-"))
    ok = False
    try:
        results = asyncio.run(run(args, work_dir))
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        path = args.results_dir / f"{stamp}.json"
        text = json.dumps(results, indent=1, sort_keys=False) + "\n"
        path.write_text(text)
        (args.results_dir / "latest.json").write_text(text)
        log(f"wrote {path} (and latest.json); total {results['total_seconds']}s")
        write_outputs(results, args, results_path=path)
        ok = True
    finally:
        if args.keep_logs or not ok:
            log(f"daemon logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0
