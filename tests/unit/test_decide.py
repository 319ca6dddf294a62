"""The node plan: what initialization, resync and the lifecycle write."""

from __future__ import annotations

from ccm.nodes.decide import NO_NODE_ADDRESS, plan_initialization, plan_resync, plan_shutdown_taint
from ccm.nodes.labels import INSTANCE_TYPE, REGION, ZONE, desired_labels, instance_type, valid_label_value
from ccm.nodes.matching import MatchKind, match_server
from ccm.nodes.view import SHUTDOWN_TAINT, node_view
from ccm.servercache import ServerSnapshot
from cloudsigma.client import ServerList
from tests.unit.factories import UUID1, UUID2, dhcp_nic, node, server, static_nic, vlan_nic

#: The labels this CCM gave the servers' nodes at initialization (resync adds them where missing).
LABELED = desired_labels(server(), region="", zone="")


def test_initialization_plan_sets_everything() -> None:
    view = node_view(node("node-1"))
    plan = plan_initialization(view, server(), region="zrh", zone="zrh")
    assert plan.provider_id == f"cloudsigma://{UUID1}"
    assert plan.labels[INSTANCE_TYPE] == "2c-4000mhz-4096mib"
    assert plan.labels[REGION] == "zrh" and plan.labels[ZONE] == "zrh"
    assert plan.taints == ()
    assert plan.addresses is not None
    assert ("ExternalIP", "94.26.101.149") in {(a.type, a.address) for a in plan.addresses}


def test_existing_labels_and_provider_id_are_kept() -> None:
    view = node_view(node("node-1", provider_id=f"cloudsigma://{UUID1}", labels={INSTANCE_TYPE: "custom"}))
    plan = plan_initialization(view, server(), region="zrh", zone="zrh")
    assert plan.provider_id is None
    assert INSTANCE_TYPE not in plan.labels


def test_other_taints_survive_taint_removal() -> None:
    other = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    plan = plan_initialization(node_view(node(extra_taints=[other])), server(), region="zrh", zone="zrh")
    assert plan.taints == (other,)


def test_invalid_provided_node_ip_blocks_initialization() -> None:
    view = node_view(node(annotations={"alpha.kubernetes.io/provided-node-ip": "10.9.9.9"}))
    plan = plan_initialization(view, server(), region="zrh", zone="zrh")
    assert plan.blocked and plan.empty


def test_resync_writes_nothing_when_unchanged_and_picks_up_new_dhcp_ip() -> None:
    current = [("ExternalIP", "94.26.101.149"), ("Hostname", "node-1")]
    view = node_view(node(tainted=False, labels=LABELED, provider_id=f"cloudsigma://{UUID1}", addresses=current))
    assert plan_resync(view, server()).empty
    moved = plan_resync(view, server(nics=[dhcp_nic("94.26.101.150")]))
    assert moved.addresses is not None
    assert {a.address for a in moved.addresses} == {"94.26.101.150", "node-1"}


def test_resync_adopts_a_node_another_ccm_initialized() -> None:
    """The kube-dc CCM's Nodes: providerID set, no taint, no addresses, no type/region/zone labels. Resync adds
    the addresses and the labels, and never changes a label the node has."""
    view = node_view(node(tainted=False, provider_id=f"cloudsigma://{UUID1}", addresses=[],
                          labels={ZONE: "operator-zone"}))
    plan = plan_resync(view, server(), region="zrh", zone="zrh")
    assert plan.addresses is not None
    assert ("ExternalIP", "94.26.101.149") in {(a.type, a.address) for a in plan.addresses}
    assert plan.labels[INSTANCE_TYPE] == "2c-4000mhz-4096mib" and plan.labels[REGION] == "zrh"
    assert ZONE not in plan.labels
    assert plan.provider_id is None and plan.taints is None
    labels = {k: v for k, v in plan.labels.items() if v is not None}
    adopted = node_view(node(tainted=False, provider_id=f"cloudsigma://{UUID1}",
                             labels={**labels, ZONE: "operator-zone"},
                             addresses=[(a.type, a.address) for a in plan.addresses]))
    assert plan_resync(adopted, server(), region="zrh", zone="zrh").empty  # once adopted, nothing more to write


def test_resync_keeps_addresses_of_stopped_server() -> None:
    current = [("ExternalIP", "94.26.101.149"), ("Hostname", "node-1")]
    view = node_view(node(tainted=False, labels=LABELED, addresses=current))
    assert plan_resync(view, server(nics=[dhcp_nic(None)], status="stopped")).empty


def test_private_nic_keeps_kubelet_internal_ip() -> None:
    view = node_view(node(addresses=[("InternalIP", "10.10.0.7")]))
    plan = plan_initialization(view, server(nics=[dhcp_nic("94.26.101.149"), vlan_nic()]), region="z", zone="z")
    assert plan.addresses is not None
    assert ("InternalIP", "10.10.0.7") in {(a.type, a.address) for a in plan.addresses}


def test_shutdown_taint_rules() -> None:
    not_ready = node_view(node(tainted=False, ready="False"))
    add = plan_shutdown_taint(not_ready, "stopped")
    assert add.taints is not None and any(t["key"] == SHUTDOWN_TAINT for t in add.taints)
    assert plan_shutdown_taint(not_ready, "running").empty
    tainted_ready = node_view(node(tainted=False, ready="True",
                                   extra_taints=[{"key": SHUTDOWN_TAINT, "effect": "NoSchedule"}]))
    assert plan_shutdown_taint(tainted_ready, None).taints == ()
    assert plan_shutdown_taint(node_view(node(tainted=False, ready="True")), "stopped").empty


def test_instance_type_encoding() -> None:
    assert instance_type(server()) == "2c-4000mhz-4096mib"
    assert instance_type(server(cpu=None)) is None
    assert valid_label_value("2c-4000mhz-4096mib")
    assert not valid_label_value("-bad")
    assert desired_labels(server(mem=None), region="zrh", zone="zrh").get(INSTANCE_TYPE) is None


def _snapshot(*servers):  # type: ignore[no-untyped-def]
    return ServerSnapshot.from_list(ServerList(servers=servers, total_count=len(servers), request_ids=(),
                                               fetched_at=0.0), fetched_at=0.0)


def test_matching_rules() -> None:
    a, b = server("node-1", UUID1), server("node-1", UUID2)
    snap = _snapshot(a, b)
    ambiguous = match_server(node_view(node("node-1")), snap.by_uuid, snap.by_name)
    assert ambiguous.kind is MatchKind.AMBIGUOUS and UUID1 in ambiguous.detail and UUID2 in ambiguous.detail
    by_sys = match_server(node_view(node("node-1", system_uuid=UUID2.upper())), snap.by_uuid, snap.by_name)
    assert by_sys.kind is MatchKind.FOUND and by_sys.server == b
    by_pid = match_server(node_view(node("node-1", provider_id=f"cloudsigma://{UUID1}")), snap.by_uuid, snap.by_name)
    assert by_pid.server == a and by_pid.via == "providerID"
    stale = match_server(node_view(node("node-1", provider_id="cloudsigma://33333333-3333-4333-8333-333333333333")),
                         snap.by_uuid, snap.by_name)
    assert stale.kind is MatchKind.NOT_IN_SNAPSHOT and len(stale.name_matches) == 2
    foreign = match_server(node_view(node("node-1", provider_id="aws:///eu-west-1a/i-123")), snap.by_uuid, snap.by_name)
    assert foreign.kind is MatchKind.FOREIGN_PROVIDER_ID
    none = match_server(node_view(node("other")), snap.by_uuid, snap.by_name)
    assert none.kind is MatchKind.NO_MATCH


def test_no_taint_removal_without_an_ip_address() -> None:
    view = node_view(node())
    stopped = plan_initialization(view, server(nics=[dhcp_nic(None)], status="stopped"), region="z", zone="z")
    assert stopped.blocked and stopped.blocked_reason == NO_NODE_ADDRESS and stopped.empty
    assert "stopped" in stopped.blocked
    vlan_only = plan_initialization(view, server(nics=[vlan_nic()]), region="z", zone="z")
    assert vlan_only.blocked_reason == NO_NODE_ADDRESS and "--node-ip" in (vlan_only.blocked or "")
    not_a_list = plan_initialization(view, server(nics={"0": dhcp_nic("94.26.101.149")}), region="z", zone="z")
    assert not_a_list.blocked_reason == NO_NODE_ADDRESS and "nics is not a list" in (not_a_list.blocked or "")
    bad_ip = plan_initialization(view, server(nics=[static_nic("not-an-ip")]), region="z", zone="z")
    assert bad_ip.blocked_reason == NO_NODE_ADDRESS and 'ip "not-an-ip" ignored' in (bad_ip.blocked or "")
    # the kubelet's own InternalIP on a VLAN-only server is an address
    with_kubelet_ip = plan_initialization(node_view(node(addresses=[("InternalIP", "10.0.0.4")])),
                                          server(nics=[vlan_nic()]), region="z", zone="z")
    assert not with_kubelet_ip.blocked and with_kubelet_ip.taints == ()


def test_resync_never_takes_the_last_ip_away() -> None:
    current = [("ExternalIP", "94.26.101.149"), ("Hostname", "node-1")]
    view = node_view(node(tainted=False, labels=LABELED, provider_id=f"cloudsigma://{UUID1}", addresses=current))
    # running, but the API reports no usable address (bad data): keep what the node has
    assert plan_resync(view, server(nics=[static_nic("not-an-ip")])).empty


def test_provided_node_ip_addresses_come_first_in_the_annotations_order() -> None:
    dual = server(nics=[dhcp_nic("94.26.101.149", ipv6="2a03:b0c0::1")])
    annotations = {"alpha.kubernetes.io/provided-node-ip": "2a03:b0c0::1,94.26.101.149"}
    wrong_order = [("ExternalIP", "94.26.101.149"), ("ExternalIP", "2a03:b0c0::1"), ("Hostname", "node-1")]
    view = node_view(node(tainted=False, labels=LABELED, provider_id=f"cloudsigma://{UUID1}", addresses=wrong_order,
                          annotations=annotations))
    plan = plan_resync(view, dual)
    assert plan.addresses is not None
    assert [(a.type, a.address) for a in plan.addresses] == [
        ("ExternalIP", "2a03:b0c0::1"), ("ExternalIP", "94.26.101.149"), ("Hostname", "node-1")]
    # rewritten once: in the right order nothing more is written
    right = node_view(node(tainted=False, labels=LABELED, provider_id=f"cloudsigma://{UUID1}",
                           addresses=[(a.type, a.address) for a in plan.addresses], annotations=annotations))
    assert plan_resync(right, dual).empty
    # without the annotation the order of a node's addresses is not ours to change
    free = node_view(node(tainted=False, labels=LABELED, provider_id=f"cloudsigma://{UUID1}", addresses=wrong_order))
    assert plan_resync(free, dual).empty
