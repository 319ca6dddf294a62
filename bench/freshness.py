"""``python -m bench.freshness``: what following the cloud costs and how fast it is (reported, not asserted).

Against a real kube-apiserver and the CloudSigma emulator (in-process), with N initialized Nodes and the daemon's
production settings except ``--server-refresh-period`` (``--period``; the defaults' 60 s makes the run minutes long,
and every figure below scales with it):

- **CloudSigma calls per minute at rest** (goal ≤ 1 per tenant): every API call in ``--rest-periods`` refresh
  periods with nothing changing, per period, scaled to the production period (one refresh per period; with the
  host-group label on, each refresh is a listing plus one ``availability_groups`` call);
- **Kubernetes writes per unchanged refresh** (goal 0);
- **seconds from a cloud change to the Node** (goal ≤ one period; p50 ≈ half of it): a server's meta value is
  changed at a random moment, timed until its label is on the Node;
- **seconds from a reboot with a new DHCP address to the new address on the Node** (goal ≤ 5 s): Ready goes
  False, the server gets a new lease, Ready goes True (timed from then);
- **fleet**: what 1,000 tenants at rest cost against the region's request budget (``--cloudsigma-requests-per-minute``).

Prints one JSON object and a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any

from bench.stats import summary
from ccm.config import Settings
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, addresses, node_json, running_ccm, taint_keys, two_users
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, set_ready, wait_for

UNINIT = "node.cloudprovider.kubernetes.io/uninitialized"
META = "node.cloudsigma.com/meta.pool"
PRODUCTION_PERIOD = float(Settings.model_fields["server_refresh_period"].default)
REGION_BUDGET = int(Settings.model_fields["cloudsigma_requests_per_minute"].default)


def _calls(state: EmulatorState) -> int:
    return sum(v for k, v in state.counters.items() if not k.startswith(("POST /oauth", "GET /oauth")))


async def measure(*, nodes: int, period: float, rest_periods: int, changes: int, reboots: int) -> dict[str, Any]:
    state = EmulatorState()
    two_users(state)
    servers = [state.add_server(ALICE, f"fr-{i}", nics=[public_dhcp_nic("auto")], meta={"pool": "p0"})
               for i in range(nodes)]
    apiserver = KubeAPIServer("bench-freshness")
    apiserver.start()
    api = await api_client_for(apiserver.admin_kubeconfig)
    out: dict[str, Any] = {"nodes": nodes, "period_s": period, "production_period_s": PRODUCTION_PERIOD}
    try:
        async with EmulatorServer(state) as emulator:
            for i in range(nodes):
                await register_node(api, f"fr-{i}")
            # Production settings (10 s cache age, 5 min resync, 10 s monitor period) but a shorter refresh period.
            async with running_ccm(apiserver.admin_kubeconfig, emulator, server_refresh_period=f"{period}s",
                                   server_cache_max_age="10s", node_status_update_frequency="300s",
                                   node_monitor_period="10s") as ccm:
                async def all_initialized() -> bool:
                    found = await asyncio.gather(*(node_json(api, f"fr-{i}") for i in range(nodes)))
                    return all(UNINIT not in taint_keys(n) for n in found)

                await wait_for(all_initialized, 120, interval=0.5)
                await asyncio.sleep(period * 1.5)  # settle: the first periodic refresh after initialization

                # ---- at rest
                calls, writes, refreshes = _calls(state), sum(ccm.parts.kube.writes.values()), ccm.parts.cache.refreshes
                await asyncio.sleep(period * rest_periods)
                rest_calls = _calls(state) - calls
                rest_refreshes = ccm.parts.cache.refreshes - refreshes
                rest_writes = sum(ccm.parts.kube.writes.values()) - writes
                per_period = rest_calls / rest_periods
                listings_per_period = rest_refreshes / rest_periods
                out["rest"] = {
                    "calls": rest_calls, "refreshes": rest_refreshes, "periods": rest_periods,
                    "calls_per_period": round(per_period, 2),
                    "calls_per_minute_at_production_period": round(per_period * 60 / PRODUCTION_PERIOD, 2),
                    "listings_per_minute_at_production_period": round(listings_per_period * 60 / PRODUCTION_PERIOD,
                                                                      2),
                    "kube_writes": rest_writes,
                    "kube_writes_per_unchanged_refresh": round(rest_writes / max(rest_refreshes, 1), 3),
                    "by_endpoint": {k: v for k, v in state.counters.items() if v},
                }

                # ---- cloud change → Node
                delays: list[float] = []
                rng = random.Random(22)
                for round_ in range(changes):
                    await asyncio.sleep(rng.uniform(0, period))
                    target = rng.randrange(nodes)
                    value = f"p{round_ + 1}"
                    state.set_server_meta(servers[target]["uuid"], {"pool": value})
                    changed = time.monotonic()

                    async def labelled(i: int = target, v: str = value) -> bool:
                        node = await node_json(api, f"fr-{i}")
                        return (node["metadata"].get("labels") or {}).get(META) == v

                    await wait_for(labelled, period * 3 + 10, interval=0.05)
                    delays.append(time.monotonic() - changed)
                out["cloud_change_to_node_s"] = summary(delays)
                out["cloud_change_to_node_s_over_period"] = {k: round(v / period, 3) for k, v in
                                                              summary(delays).items() if isinstance(v, float)}

                # ---- reboot with a new DHCP address
                reboot_delays: list[float] = []
                for i in range(reboots):
                    name, server = f"fr-{i}", servers[i]
                    await set_ready(api, name, False)
                    await asyncio.sleep(0.3)
                    state.set_server_ip(server["uuid"], "auto")
                    new_ip = state.get_server(server["uuid"])["nics"][0]["runtime"]["ip_v4"]["uuid"]
                    await asyncio.sleep(0.3)
                    await set_ready(api, name, True)
                    reported = time.monotonic()

                    async def moved(n: str = name, ip: str = new_ip) -> bool:
                        return ("ExternalIP", ip) in addresses(await node_json(api, n))

                    await wait_for(moved, 30, interval=0.05)
                    reboot_delays.append(time.monotonic() - reported)
                out["reboot_new_ip_to_node_s"] = summary(reboot_delays)
    finally:
        await api.close()
        apiserver.stop()
    per_tenant_minute = out["rest"]["calls_per_minute_at_production_period"]
    out["fleet"] = {"tenants": 1000, "calls_per_minute_at_rest": round(per_tenant_minute * 1000),
                    "region_budget_per_minute": REGION_BUDGET,
                    "share_of_budget": round(per_tenant_minute * 1000 / REGION_BUDGET, 3)}
    return out


def markdown(r: dict[str, Any]) -> str:
    rest, fleet = r["rest"], r["fleet"]
    change, reboot = r["cloud_change_to_node_s"], r["reboot_new_ip_to_node_s"]
    period = r["period_s"]
    return "\n".join([
        f"Freshness (N = {r['nodes']}, refresh period {period:g} s measured; per-minute figures scaled to the "
        f"default {r['production_period_s']:g} s)", "",
        "| metric | goal | measured |", "|---|---|---|",
        f"| CloudSigma calls per minute at rest, per tenant | ≤ 1 | {rest['calls_per_minute_at_production_period']} "
        f"({rest['listings_per_minute_at_production_period']} listings; {rest['calls']} calls in {rest['periods']} "
        "periods) |",
        f"| Kubernetes writes per unchanged refresh | 0 | {rest['kube_writes_per_unchanged_refresh']} "
        f"({rest['kube_writes']} writes in {rest['refreshes']} refreshes) |",
        f"| seconds from a cloud change to the Node | ≤ period (p50 ≈ period/2) | p50 {change.get('p50')}, max "
        f"{change.get('max')} with a {period:g} s period (p50 {r['cloud_change_to_node_s_over_period'].get('p50')} "
        "periods) |",
        f"| seconds from reboot-with-new-IP (Ready again) to the new address | ≤ 5 | p50 {reboot.get('p50')}, max "
        f"{reboot.get('max')} |",
        f"| fleet: 1,000 tenants at rest | within the region budget | {fleet['calls_per_minute_at_rest']} calls/min "
        f"of {fleet['region_budget_per_minute']} ({fleet['share_of_budget']:.1%}) |",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--period", type=float, default=5.0, help="--server-refresh-period of the run (default 5 s)")
    p.add_argument("--rest-periods", type=int, default=6)
    p.add_argument("--changes", type=int, default=10)
    p.add_argument("--reboots", type=int, default=5)
    args = p.parse_args(argv)
    result = asyncio.run(measure(nodes=args.nodes, period=args.period, rest_periods=args.rest_periods,
                                 changes=args.changes, reboots=args.reboots))
    print(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
