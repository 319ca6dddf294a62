"""Live cloud labels (server meta, tags, host group) on the real kube-apiserver with the CloudSigma emulator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from kubernetes_asyncio.client import ApiClient

from ccm.cloudlabels.decide import HOST_GROUP, MANAGED_ANNOTATION
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, initialized, node_json, running_ccm
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for

M = "node.cloudsigma.com/meta."
T = "node.cloudsigma.com/tag."
pytestmark = pytest.mark.usefixtures("clean_nodes")


def ours(node: dict[str, Any]) -> dict[str, str]:
    """The node's labels under our prefix."""
    return {k: v for k, v in (node["metadata"].get("labels") or {}).items() if k.startswith("node.cloudsigma.com/")}


def managed(node: dict[str, Any]) -> set[str]:
    raw = (node["metadata"].get("annotations") or {}).get(MANAGED_ANNOTATION, "")
    return {k for k in raw.split(",") if k}


async def test_meta_and_tags_are_mirrored_and_follow_changes(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    gpu, team_a, team_b = (world.add_tag(n, owner=ALICE) for n in ("gpu", "team-a", "team-b"))
    srv = world.add_server(ALICE, "lbl-1", nics=[public_dhcp_nic("auto")], tags=[gpu, team_a],
                           meta={"pool": "blue", "cluster": "c1", "zone": "z1", "description": "not mirrored"})
    # Someone else's label under our prefix, and one of theirs elsewhere: never touched.
    await register_node(kube_api, "lbl-1", labels={M + "zone": "set-by-hand", "team": "ops"})
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, node_label_meta_keys="pool,cluster,zone",
                           node_label_tags="gpu,team-*", node_status_update_frequency="1s",
                           server_cache_max_age="0.5s") as ccm:
        node = await wait_for(lambda: initialized(kube_api, "lbl-1"), 20)
        # Set at initialization, in the same write that removes the taint.
        labels = ours(node)
        assert {k: v for k, v in labels.items() if k != HOST_GROUP} == {
            M + "pool": "blue", M + "cluster": "c1", M + "zone": "set-by-hand", T + "gpu": "true",
            T + "team-a": "true"}
        assert labels[HOST_GROUP]
        assert managed(node) == {M + "pool", M + "cluster", T + "gpu", T + "team-a", HOST_GROUP}

        # Changed at run time: a value changes, a key goes, a tag comes, a tag goes.
        world.set_server_meta(srv["uuid"], {"pool": "green", "zone": "z2"})
        world.set_server_tags(srv["uuid"], [team_a, team_b])

        async def followed() -> dict[str, Any] | None:
            node = await node_json(kube_api, "lbl-1")
            labels = ours(node)
            return node if (labels.get(M + "pool") == "green" and M + "cluster" not in labels
                            and T + "team-b" in labels and T + "gpu" not in labels) else None

        node = await wait_for(followed, 15)
        assert ours(node)[M + "zone"] == "set-by-hand"  # never touched
        assert node["metadata"]["labels"]["team"] == "ops"
        assert managed(node) == {M + "pool", T + "team-a", T + "team-b", HOST_GROUP}
        await asyncio.sleep(0.5)
        writes = dict(ccm.parts.kube.writes)
        await asyncio.sleep(2.5)  # a couple of resyncs with nothing changed: no writes
        assert ccm.parts.kube.writes == writes

        # Everything gone from the server: every label the CCM set goes, and its annotation with it.
        world.set_server_meta(srv["uuid"], {})
        world.set_server_tags(srv["uuid"], [])
        world.set_status(srv["uuid"], "stopped")  # a stopped server is on no host: its group label stays

        async def emptied() -> dict[str, Any] | None:
            node = await node_json(kube_api, "lbl-1")
            return node if set(ours(node)) == {M + "zone", HOST_GROUP} else None

        node = await wait_for(emptied, 15)
        assert managed(node) == {HOST_GROUP}
        writes = dict(ccm.parts.kube.writes)
        await asyncio.sleep(2.5)  # a couple of unchanged resyncs
        assert ccm.parts.kube.writes == writes


async def test_invalid_values_are_skipped_with_a_warning_naming_the_key(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    world.add_tag("has space", owner=ALICE)
    world.add_server(ALICE, "lbl-2", nics=[public_dhcp_nic("auto")],
                     meta={"pool": "not a label value", "cluster": "ok"})
    await register_node(kube_api, "lbl-2")
    with structlog.testing.capture_logs() as logs:
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, node_status_update_frequency="1s",
                               server_cache_max_age="0.5s"):
            node = await wait_for(lambda: initialized(kube_api, "lbl-2"), 20)
            await asyncio.sleep(2.5)  # resyncs: the warning is not repeated
    assert ours(node).get(M + "cluster") == "ok" and M + "pool" not in ours(node)
    skipped = [e for e in logs if e["event"] == "cloud_label_skipped"]
    assert len(skipped) == 1, skipped
    assert skipped[0]["key"] == "pool" and skipped[0]["node"] == "lbl-2" and skipped[0]["log_level"] == "warning"
    assert "not a valid label value" in skipped[0]["reason"]


async def test_host_group_label_follows_a_move_at_the_next_snapshot_refresh(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    a = world.add_server(ALICE, "hg-a", nics=[public_dhcp_nic("auto")], host="h1")
    world.add_server(ALICE, "hg-b", nics=[public_dhcp_nic("auto")], host="h1")
    world.add_server(ALICE, "hg-c", nics=[public_dhcp_nic("auto")], host="h2")
    for name in ("hg-a", "hg-b", "hg-c"):
        await register_node(kube_api, name)
    # Resyncs are an hour apart: only the snapshot refresh can bring the change.
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, node_status_update_frequency="1h") as ccm:
        nodes = [await wait_for(lambda n=n: initialized(kube_api, n), 20) for n in ("hg-a", "hg-b", "hg-c")]
        group = {n["metadata"]["name"]: ours(n)[HOST_GROUP] for n in nodes}
        assert group["hg-a"] == group["hg-b"] != group["hg-c"]
        await asyncio.sleep(0.5)

        world.move_server(a["uuid"], "h2")
        await ccm.parts.cache.refresh()  # any refresh: a reconcile's, the lifecycle controller's, a CSR's

        async def moved() -> bool:
            na, nb, nc = [ours(await node_json(kube_api, n))[HOST_GROUP] for n in ("hg-a", "hg-b", "hg-c")]
            return na == nc != nb

        await wait_for(moved, 10)


async def test_one_tag_listing_and_one_groups_call_per_snapshot(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    tag = world.add_tag("gpu", owner=ALICE)
    for i in range(12):
        world.add_server(ALICE, f"cnt-{i}", nics=[public_dhcp_nic("auto")], tags=[tag], meta={"pool": "p"})
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, node_label_tags="*",
                           concurrent_node_syncs=4) as ccm:
        await asyncio.gather(*(register_node(kube_api, f"cnt-{i}") for i in range(12)))

        async def all_labelled() -> bool:
            nodes = await asyncio.gather(*(node_json(kube_api, f"cnt-{i}") for i in range(12)))
            return all(ours(n).get(T + "gpu") == "true" and HOST_GROUP in ours(n) for n in nodes)

        await wait_for(all_labelled, 30)
        refreshes = ccm.parts.cache.refreshes
    listings = world.counters["GET /servers/detail/"]
    assert refreshes >= 1
    assert world.counters["GET /tags/"] == listings == refreshes  # one tag listing per snapshot, never per node
    assert world.counters["GET /servers/availability_groups/"] == refreshes
    assert world.counters["GET /tags/{uuid}/"] == world.counters["GET /servers/availability_groups/{uuid}/"] == 0
    assert listings <= 4, f"{listings} listings for 12 nodes"


async def test_defaults_make_no_tag_call_and_host_group_off_makes_no_groups_call(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    world.add_server(ALICE, "dflt-1", nics=[public_dhcp_nic("auto")], meta={"pool": "p"})
    await register_node(kube_api, "dflt-1")
    async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, node_label_host_group=False):
        node = await wait_for(lambda: initialized(kube_api, "dflt-1"), 20)
    assert ours(node) == {M + "pool": "p"}
    assert world.counters["GET /tags/"] == 0
    assert world.counters["GET /servers/availability_groups/"] == 0


async def test_failing_extra_calls_never_fail_the_listing_and_leave_their_labels_alone(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    gpu = world.add_tag("gpu", owner=ALICE)
    srv = world.add_server(ALICE, "flt-1", nics=[public_dhcp_nic("auto")], tags=[gpu], meta={"pool": "p"},
                           host="h1")
    world.add_server(ALICE, "neighbour", uuid="00000000-0000-4000-8000-000000000001", host="h1")  # names the group
    await register_node(kube_api, "flt-1")
    with structlog.testing.capture_logs() as logs:
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, node_label_tags="*",
                               node_status_update_frequency="1s", server_cache_max_age="0.5s",
                               api_retry_attempts=1) as ccm:
            node = await wait_for(lambda: initialized(kube_api, "flt-1"), 20)
            assert ours(node)[T + "gpu"] == "true" and HOST_GROUP in ours(node)
            group = ours(node)[HOST_GROUP]

            # Both extra calls fail from now on; the server loses its tag and moves, and its meta changes.
            world.fail_next(None, status=503, path_prefix="/tags/")  # type: ignore[arg-type]
            world.fail_next(None, status=500, path_prefix="/servers/availability_groups/")  # type: ignore[arg-type]
            world.set_server_tags(srv["uuid"], [])
            world.move_server(srv["uuid"], "elsewhere")
            world.set_server_meta(srv["uuid"], {"pool": "q"})

            async def meta_followed() -> dict[str, Any] | None:
                node = await node_json(kube_api, "flt-1")
                return node if ours(node).get(M + "pool") == "q" else None

            node = await wait_for(meta_followed, 15)  # the listing still works: meta labels follow
            await asyncio.sleep(1.5)
            node = await node_json(kube_api, "flt-1")
            assert ours(node)[T + "gpu"] == "true" and ours(node)[HOST_GROUP] == group  # left as they were
            failed_refreshes = ccm.parts.cache.refreshes

            world.clear_faults()

            async def recovered() -> dict[str, Any] | None:
                node = await node_json(kube_api, "flt-1")
                labels = ours(node)
                return node if T + "gpu" not in labels and labels.get(HOST_GROUP) not in (None, group) else None

            await wait_for(recovered, 15)
    assert failed_refreshes >= 3
    failures = [e for e in logs if e["event"] == "cloud_label_source_failed"]
    assert sorted(e["source"] for e in failures) == ["host_groups", "tags"]  # once per source, not per refresh
    assert all(e["request_id"] and e["log_level"] == "warning" for e in failures)
    assert sorted(e["source"] for e in logs if e["event"] == "cloud_label_source_recovered") == ["host_groups", "tags"]
