"""Leadership between real daemon processes: fencing of a deposed leader, a task that dies, SIGTERM during a hang.

Two `cloudsigma-ccm` processes share one Lease. The management API is a real kube-apiserver with an audit log,
reached by each replica through its own :class:`~tests.realenv.proxy.HoldingProxy`, so it can hang for one replica
only; the tenant API is the same server reached directly, with one identity per replica. The audit log then says
which process wrote what, to the microsecond, on the server's clock — no reliance on the daemons' own account.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient

from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import delete_all_nodes, register_node, wait_for
from tests.reliability import registry
from tests.reliability.replicas import DEADLINE, LEASE, RETRY, Replica, audit_writes, one_leader, replicas
from tests.reliability.support import initialized, is_initialized, maybe_node, metric_value, missing

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_audited_nodes")]


@pytest.fixture
async def clean_audited_nodes(audited_apiserver: KubeAPIServer) -> None:
    """The audited API server lives for the session: start each case without the previous case's nodes."""
    api = await api_client_for(audited_apiserver.admin_kubeconfig)
    try:
        await delete_all_nodes(api)
    finally:
        await api.close()


async def register_steadily(api: ApiClient, names: Sequence[str], every: float) -> None:
    for name in names:
        await register_node(api, name)
        await asyncio.sleep(every)


async def count_initialized(api: ApiClient, names: Sequence[str]) -> int:
    nodes = await asyncio.gather(*(maybe_node(api, n) for n in names))
    return sum(1 for n in nodes if n is not None and is_initialized(n))


# ------------------------------------------------------------------------------------------- fencing


@pytest.mark.parametrize("hold", [0.75 * DEADLINE, math.inf], ids=["answers-late", "hangs"])
async def test_a_deposed_leader_writes_nothing_once_a_standby_may_lead(
        hold: float, world: EmulatorState, emulator: EmulatorServer, audited_apiserver: KubeAPIServer,
        tmp_path: Path) -> None:
    tag = "slow" if math.isfinite(hold) else "hung"
    how = (f"answers only after {hold:g} s (below the {DEADLINE:g} s request timeout)" if math.isfinite(hold)
           else "stops answering")
    names = [f"fence-{tag}-{i:03d}" for i in range(150)]
    for name in names:
        world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
    registry.record(
        "fault/process", f"management API {how} for the leader only, under a steady burst of new nodes",
        injected=f"two `cloudsigma-ccm` processes on one Lease ({LEASE:g}/{DEADLINE:g}/{RETRY:g} s); a proxy in front "
                 f"of the management kube-apiserver {how} to the leader while 10 nodes/s register",
        verified="from the tenant kube-apiserver's audit log: no write of the deposed leader received after its last "
                 "successful renewal + lease duration (the earliest a standby may lead), so no dual-leadership "
                 "window; the leader exits 1 with `leader_lost` and `writes_fenced`; lease failures logged at "
                 "warning; the standby takes over and initializes every node",
        faults=1, nodes_checked=len(names))
    admin = await api_client_for(audited_apiserver.admin_kubeconfig)
    group = [Replica(n, audited_apiserver, emulator, tmp_path, lease=f"ccm-fence-{tag}") for n in ("a", "b")]
    load: asyncio.Task[None] | None = None
    try:
        async with replicas(*group):
            for replica in group:
                await replica.start()
            leader = await wait_for(lambda: one_leader(group), 30, message="one leader")
            standby = next(r for r in group if r is not leader)
            load = asyncio.create_task(register_steadily(admin, names, every=0.1))
            await wait_for(lambda: _at_least(admin, names[:8], 8), 30, message="the leader writing")
            held_at = time.time()
            leader.proxy.set_hold(hold)
            code = await leader.wait(30)
            stopped_at = time.time()
            await wait_for(standby.leading, 30, message="the standby leading")
            await load
            await _all_initialized(admin, names, standby, 90)
            standby_metrics = await standby.metrics()
            leader_lines = leader.lines()
    finally:
        if load is not None:
            load.cancel()
        await admin.close()
    writes = audit_writes(audited_apiserver)
    lease_path = f"ccm-fence-{tag}"
    renewals = [w for w in writes if w.user == leader.lease_user and w.resource == "leases" and w.name == lease_path
                and w.code in (200, 201)]
    takeover = next(w for w in writes if w.user == standby.lease_user and w.resource == "leases"
                    and w.name == lease_path and w.code in (200, 201) and w.received > renewals[-1].received)
    deposed = [w for w in writes if w.user == leader.tenant_user and w.received > held_at]
    last_renewal = renewals[-1].received
    last_write = max((w.received for w in writes if w.user == leader.tenant_user), default=0.0)
    window_ms = (last_write - takeover.received) * 1000
    margin_ms = (last_renewal + LEASE - last_write) * 1000
    print(f"\n[{tag}] dual-leadership window {window_ms:.0f} ms (last write of the deposed leader minus the "
          f"standby's takeover; < 0 = none); margin to renewal+lease {margin_ms:.0f} ms; the leader wrote "
          f"{len(deposed)} times after the hold began, stopped {stopped_at - held_at:.1f} s after it")
    # The guarantee: nothing of the deposed leader reaches the tenant API once a standby may lead.
    assert last_write < last_renewal + LEASE, (
        f"the deposed leader wrote {last_write - last_renewal:.3f} s after its last renewal (lease {LEASE:g} s)")
    assert window_ms < 0
    assert code == 1, leader.log.read_text()[-3000:]
    assert [e for e in leader_lines if e.get("event") == "leader_lost"], "no leader_lost line"
    assert [e for e in leader_lines if e.get("event") == "writes_fenced"], "the fence never closed"
    failures = [e for e in leader_lines if e.get("event") == "lease_call_failed"]
    assert failures and all(e.get("level") == "warning" for e in failures)
    assert metric_value(standby_metrics, "cloudsigma_ccm_leader") == 1.0
    lost = await _missing(audited_apiserver, names)
    registry.lost(len(lost))
    assert not lost


async def _all_initialized(api: ApiClient, names: Sequence[str], replica: Replica, timeout: float) -> None:
    try:
        await wait_for(lambda: _at_least(api, names, len(names)), timeout, message="all nodes initialized")
    except TimeoutError:
        nodes = await asyncio.gather(*(maybe_node(api, n) for n in names))
        waiting = [n for n, node in zip(names, nodes, strict=True) if node is None or not is_initialized(node)]
        notable = [line for line in replica.log.read_text().splitlines()
                   if '"level": "debug"' not in line and '"action": "synced"' not in line]
        raise AssertionError(f"{len(waiting)} nodes not initialized by {replica.name}: {waiting[:10]}; its log:\n"
                             + "\n".join(notable[-40:])) from None


async def _at_least(api: ApiClient, names: Sequence[str], count: int) -> bool:
    return await count_initialized(api, names) >= count


async def _missing(server: KubeAPIServer, names: Sequence[str]) -> list[str]:
    api = await api_client_for(server.admin_kubeconfig)
    try:
        return await missing(api, names)
    finally:
        await api.close()


# ------------------------------------------------------------------------------------------- supervision


async def test_a_dead_watcher_ends_the_process_and_the_standby_takes_over(
        world: EmulatorState, emulator: EmulatorServer, audited_apiserver: KubeAPIServer, tmp_path: Path) -> None:
    names = ["dead-watch-before", "dead-watch-after"]
    for name in names:
        world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
    registry.record(
        "fault/process", "the node watcher dies of an unexpected exception",
        injected="in the leader process, the node watcher raises an exception its retry loop does not catch, 2 s "
                 "after its initial list (`python -m tests.reliability.faulty watcher-dies`)",
        verified="the process logs `ccm_task_ended` naming node-watcher and exits 1 within 5 s of the fault; the "
                 "standby takes the Lease and initializes a node registered after the crash",
        faults=1, nodes_checked=2)
    admin = await api_client_for(audited_apiserver.admin_kubeconfig)
    faulty = Replica("w1", audited_apiserver, emulator, tmp_path, lease="ccm-dead-watch", fault="watcher-dies")
    healthy = Replica("w2", audited_apiserver, emulator, tmp_path, lease="ccm-dead-watch")
    try:
        async with replicas(faulty, healthy):
            await register_node(admin, names[0])
            await faulty.start()
            await wait_for(faulty.leading, 30, message="the faulty replica leading")
            await healthy.start()
            await wait_for(lambda: initialized(admin, names[0]), 30, message="first node initialized")
            await wait_for(lambda: bool(faulty.events("injected_fault")), 20, message="the injected fault")
            fault_at = time.monotonic()
            try:
                code = await faulty.wait(30)
            except TimeoutError:
                code = None
            exited_after = time.monotonic() - fault_at
            assert code == 1, f"still running 30 s after its watcher died (exit {code})"
            await register_node(admin, names[1])
            await wait_for(healthy.leading, 30, message="the standby leading")
            await wait_for(lambda: initialized(admin, names[1]), 30, message="node initialized by the standby")
            ended = faulty.events("ccm_task_ended")
    finally:
        await admin.close()
    print(f"\nexit {code} {exited_after:.1f} s after the watcher died")
    assert exited_after < 5, f"took {exited_after:.1f} s to exit"
    assert ended and ended[0]["task"] == "node-watcher" and ended[0]["level"] == "error", ended
    lost = await _missing(audited_apiserver, names)
    registry.lost(len(lost))
    assert not lost


# ------------------------------------------------------------------------------------------- shutdown budget


async def test_sigterm_while_the_management_api_hangs_fits_the_grace_period(
        world: EmulatorState, emulator: EmulatorServer, audited_apiserver: KubeAPIServer, tmp_path: Path) -> None:
    grace, drain = 9.0, 2.0
    name = "sigterm-hung-mgmt"
    world.add_server(ALICE, name, nics=[public_dhcp_nic("auto")])
    registry.record(
        "fault/process", "SIGTERM while the management API hangs",
        injected=f"the leader (lease 15/10/2 s, the defaults) gets SIGTERM while its management API does not answer; "
                 f"`--shutdown-timeout={drain:g}s --termination-grace-period={grace:g}s`",
        verified=f"exit 0 within the {grace:g} s grace period (the lease release is bounded to 3 s and comes after "
                 "the drain); `ccm_stopping` before `lease_release_failed` (a warning)",
        faults=1, nodes_checked=1)
    admin = await api_client_for(audited_apiserver.admin_kubeconfig)
    replica = Replica("t1", audited_apiserver, emulator, tmp_path, lease="ccm-sigterm-hung",
                      CLOUDSIGMA_LEADER_ELECT_LEASE_DURATION="15s", CLOUDSIGMA_LEADER_ELECT_RENEW_DEADLINE="10s",
                      CLOUDSIGMA_LEADER_ELECT_RETRY_PERIOD="2s", CLOUDSIGMA_SHUTDOWN_TIMEOUT=f"{drain:g}s",
                      CLOUDSIGMA_TERMINATION_GRACE_PERIOD=f"{grace:g}s")
    try:
        async with replicas(replica):
            await replica.start()
            await wait_for(replica.leading, 30, message="leading")
            await register_node(admin, name)
            await wait_for(lambda: initialized(admin, name), 30, message="node initialized")
            replica.proxy.set_hold(math.inf)
            await asyncio.sleep(0.5)
            assert replica.proc is not None
            replica.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = await replica.wait(60)
            seconds = time.monotonic() - started
            lines = replica.lines()
    finally:
        await admin.close()
    print(f"\nexit {code} {seconds:.1f} s after SIGTERM (grace {grace:g} s)")
    assert code == 0, replica.log.read_text()[-3000:]
    assert seconds < grace, f"took {seconds:.1f} s, longer than the {grace:g} s grace period"
    order = [e.get("event") for e in lines]
    assert "ccm_stopping" in order and "lease_release_failed" in order
    assert order.index("ccm_stopping") < order.index("lease_release_failed")
    assert next(e for e in lines if e.get("event") == "lease_release_failed")["level"] == "warning"


# ------------------------------------------------------------------------------------------- lease failures


async def test_a_standby_that_cannot_reach_the_management_api_says_so(
        world: EmulatorState, emulator: EmulatorServer, audited_apiserver: KubeAPIServer, tmp_path: Path) -> None:
    registry.record(
        "fault/process", "a replica that cannot reach the management API",
        injected="the management API never answers this replica (proxy holds every answer) from its start",
        verified="`lease_call_failed` at warning level (step, error) and "
                 "`cloudsigma_ccm_leader_election_failures_total` counting up on /metrics; the replica stays a "
                 "standby (`cloudsigma_ccm_leader` 0) and writes nothing to the tenant API",
        faults=1)
    replica = Replica("s1", audited_apiserver, emulator, tmp_path, lease="ccm-unreachable")
    async with replicas(replica):
        replica.proxy.set_hold(math.inf)  # before it starts: the first lease request never gets an answer
        await replica.start()

        async def counted() -> str | None:
            text = await replica.metrics()
            return text if metric_value(text, "cloudsigma_ccm_leader_election_failures_total") >= 2 else None

        text = await wait_for(counted, 30, message="lease failures on /metrics")
        failures = replica.events("lease_call_failed")
    assert metric_value(text, "cloudsigma_ccm_leader") == 0.0
    assert failures and all(e["level"] == "warning" and e["step"] and e["error"] for e in failures), failures
    assert not [w for w in audit_writes(audited_apiserver) if w.user == replica.tenant_user]
