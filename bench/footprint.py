"""The daemon's footprint as production runs it: start-up time and idle RSS, each beside a floor measured in the
same run (the machine is shared and noisy: ratios, not absolute figures, are what compare across runs).

- **start-up**: ``cloudsigma-ccm --help`` against a bare interpreter of the same venv importing only the design's
  libraries (:data:`DESIGN_LIBRARIES`), alternated ``repeats`` times; medians and their ratio.
- **library floor**: the RSS of that bare interpreter once the imports are done — what any process of this
  design holds before its own code runs.
- **idle**: the built console script with leader election on (a Lease in the same kube-apiserver, through its
  own management client), impersonation through the emulator's token exchange with the password as fallback,
  every other setting at its default, serving ``nodes`` Nodes it initialised: RSS (``VmRSS``) and peak
  (``VmHWM``) ``idle_seconds`` after it was started.

The daemon, ``--help`` and the floor all run with the production image's packages (:mod:`bench.runtimeimage`:
optional packages that only the development venv has are hidden). ``python -m bench.footprint`` prints the
figures as JSON; ``python -m bench`` runs it first and reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import runtimeimage
from bench.cloud import USER_EMAIL, daemon_env, node_names, start_emulator
from bench.kube import TaintWatcher, admin_client, register_burst
from bench.procs import Daemon, DaemonConfig, daemon_binary

#: The libraries of the design (pyproject's dependencies, as the daemon imports them) and nothing else.
DESIGN_LIBRARIES = ("asyncio", "ssl", "aiohttp", "pydantic", "pydantic_settings", "structlog", "cryptography.x509",
                    "joserfc.jwt", "authlib.oauth2", "prometheus_client", "cachetools", "tenacity", "yaml")
#: The password the emulator's seed gives the bench user (the fallback credential; impersonation comes first).
FALLBACK_PASSWORD = "unused-password"

_RSS_OF_IMPORTS = ("import sys\nfor m in sys.argv[1:]: __import__(m)\n"
                   "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')))")


def _run_seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    return time.perf_counter() - started


def startup(repeats: int = 7) -> dict[str, Any]:
    """``cloudsigma-ccm --help`` vs. the bare interpreter importing :data:`DESIGN_LIBRARIES`, alternated."""
    helps: list[float] = []
    bare: list[float] = []
    libraries = [sys.executable, "-c", f"import {', '.join(DESIGN_LIBRARIES)}"]
    for _ in range(repeats):
        bare.append(_run_seconds(libraries))
        helps.append(_run_seconds([str(daemon_binary()), "--help"]))
    help_s, bare_s = statistics.median(helps), statistics.median(bare)
    return {"repeats": repeats, "help_s": round(help_s, 3), "libraries_s": round(bare_s, 3),
            "ratio": round(help_s / bare_s, 2), "help_all_s": [round(x, 3) for x in helps],
            "libraries_all_s": [round(x, 3) for x in bare], "libraries": list(DESIGN_LIBRARIES)}


def library_floor_mib() -> float:
    """RSS of a bare interpreter of this venv once it has imported :data:`DESIGN_LIBRARIES`."""
    out = subprocess.run([sys.executable, "-c", _RSS_OF_IMPORTS, *DESIGN_LIBRARIES], check=True,
                         capture_output=True, text=True, timeout=120)
    return round(int(out.stdout.strip()) / 1024, 1)


def _status_mib(pid: int, field: str) -> float | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def production_env(env: dict[str, str], kubeconfig: str) -> dict[str, str]:
    """The bench's daemon environment with leader election on and the password as fallback credential."""
    return {**env, "CLOUDSIGMA_LEADER_ELECT": "true", "CLOUDSIGMA_LEADER_ELECT_KUBECONFIG": kubeconfig,
            "CLOUDSIGMA_LEADER_ELECT_RESOURCE_NAMESPACE": "kube-system",
            "CLOUDSIGMA_USERNAME": USER_EMAIL, "CLOUDSIGMA_PASSWORD": FALLBACK_PASSWORD}


async def idle(nodes: int = 20, idle_seconds: float = 60.0, *, work_dir: Path, latency_ms: float = 25.0,
               log: Any = print, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The production-shaped daemon serving ``nodes`` Nodes, ``idle_seconds`` after its start."""
    from tests.realenv.kubeapiserver import KubeAPIServer

    server = KubeAPIServer("bench-footprint")
    emulator = None
    daemon: Daemon | None = None
    watcher: TaintWatcher | None = None
    try:
        await server.astart()
        emulator = await asyncio.to_thread(start_emulator, nodes, latency_ms=latency_ms, token_lifetime=300)
        kubeconfig = str(server.admin_kubeconfig)
        env = {**production_env(daemon_env(emulator, kubeconfig), kubeconfig), **(extra_env or {})}
        daemon = Daemon(DaemonConfig(("--log-level=info", "--log-format=json"), env, "footprint-idle"), work_dir)
        await asyncio.to_thread(daemon.start)
        started = daemon.started_at
        watcher = await asyncio.to_thread(TaintWatcher(server.admin_kubeconfig).start)
        client = await admin_client(server.admin_kubeconfig, pool_size=10)
        names = node_names(nodes)
        try:
            await register_burst(client, names, 10)
        finally:
            await client.close()
        initialised = await asyncio.to_thread(watcher.wait_all, set(names), 60.0)
        await asyncio.sleep(max(0.0, started + idle_seconds - time.monotonic()))
        rss, hwm = _status_mib(daemon.pid, "VmRSS"), _status_mib(daemon.pid, "VmHWM")
        anon, files = _status_mib(daemon.pid, "RssAnon"), _status_mib(daemon.pid, "RssFile")
        threads = len(list(Path(f"/proc/{daemon.pid}/task").iterdir()))
        connections = len(psutil.Process(daemon.pid).net_connections(kind="tcp"))
        log(f"[footprint] {nodes} nodes, {idle_seconds:g}s after start: RSS {rss} MiB (peak {hwm} MiB; anonymous "
            f"{anon}, file-backed {files}; {threads} threads, {connections} TCP connections)")
        return {"nodes": nodes, "idle_seconds": idle_seconds, "all_initialized": initialised,
                "rss_mib": rss, "peak_rss_mib": hwm, "rss_anon_mib": anon, "rss_file_mib": files,
                "threads": threads, "tcp_connections": connections, "daemon_env_extra": dict(extra_env or {}),
                "settings": "leader election on (Lease in kube-system), impersonation with the password as "
                            "fallback, every other setting default"}
    finally:
        if watcher is not None:
            watcher.stop()
        if daemon is not None:
            await asyncio.to_thread(daemon.stop)
        if emulator is not None:
            await emulator.stop()
        await server.astop()


async def measure(*, nodes: int = 20, idle_seconds: float = 60.0, work_dir: Path, repeats: int = 7,
                  log: Any = print, extra_env: dict[str, str] | None = None, skip_startup: bool = False
                  ) -> dict[str, Any]:
    """Start-up, the library floor and the idle daemon, in that order; RSS ratios against the floor."""
    start: dict[str, Any] = {}
    if not skip_startup:
        log(f"[footprint] start-up: cloudsigma-ccm --help vs. the design's libraries, {repeats} times each")
        start = await asyncio.to_thread(startup, repeats)
        log(f"[footprint] --help {start['help_s']} s, libraries {start['libraries_s']} s: {start['ratio']}x")
    floor = await asyncio.to_thread(library_floor_mib)
    log(f"[footprint] library floor {floor} MiB")
    result = {"startup": start, "library_floor_mib": floor,
              "idle": await idle(nodes, idle_seconds, work_dir=work_dir, log=log, extra_env=extra_env)}
    rss = result["idle"]["rss_mib"]
    if rss:
        result["idle"]["vs_library_floor"] = round(rss / floor, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-startup", action="store_true", help="measure the idle daemon only")
    p.add_argument("--daemon-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the daemon (experiments)")
    args = p.parse_args(argv)
    hidden = runtimeimage.apply_to_environ()
    extra_env = dict(item.split("=", 1) for item in args.daemon_env)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ccm-footprint-") as work:
        result = asyncio.run(measure(nodes=args.nodes, idle_seconds=args.idle_seconds, work_dir=Path(work),
                                     repeats=args.repeats, log=lambda m: print(m, file=sys.stderr),
                                     extra_env=extra_env, skip_startup=args.no_startup))
    print(json.dumps({**result, "hidden_dev_packages": hidden}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
