"""The compact Node record the store keeps (ccm/nodes/view.py): what it keeps and drops, and that every decision
made from it equals the decision made from the Node's full JSON — so dropping a field a reader needs fails here."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.nodestore import realistic_node
from ccm.cloudlabels.decide import HOST_GROUP, MANAGED_ANNOTATION, META_PREFIX, TAG_PREFIX, LabelPolicy, label_change
from ccm.cloudlabels.sync import CloudLabels
from ccm.csr.decide import ServerLookup, address_claims, decide
from ccm.csr.request import csr_view
from ccm.kube.transport import KubeTransport
from ccm.metrics import Metrics
from ccm.nodes.account import expected_servers
from ccm.nodes.changes import RequeueOnChange
from ccm.nodes.controller import NodeController
from ccm.nodes.decide import plan_initialization, plan_resync, plan_shutdown_taint
from ccm.nodes.labels import INSTANCE_TYPE
from ccm.nodes.lifecycle import needs_check
from ccm.nodes.matching import match_server
from ccm.nodes.reconcile import NodeReconciler
from ccm.nodes.view import (
    KEPT_ANNOTATIONS,
    KEPT_LABELS,
    PROVIDED_NODE_IP,
    SHUTDOWN_TAINT,
    UNINITIALIZED_TAINT,
    Address,
    NodeView,
    node_view,
    parse_time,
)
from ccm.nodes.watching import NodeWatcher
from ccm.servercache import ServerSnapshot, SnapshotExtras
from cloudsigma.client import ServerList
from cloudsigma.models import Server
from tests.unit.csr_factories import csr_object, request_pem
from tests.unit.factories import UUID1, UUID2, dhcp_nic, server, vlan_nic

UUID3 = "33333333-3333-4333-8333-333333333333"
POLICY = LabelPolicy(meta_keys=("pool", "cluster"), tags=("gpu*",), host_group=True)


# ------------------------------------------------------------------------------------------- the oracle


def full_view(node: Mapping[str, Any]) -> NodeView:
    """A NodeView with *everything* the JSON says — every label, every annotation, the taints as they are: the
    reference the record's decisions are compared with (the builder before the store was made compact)."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    ready, since = "", None
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            ready, since = str(cond.get("status", "")), parse_time(cond.get("lastTransitionTime"))
    return NodeView(
        name=str(meta.get("name", "")), uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")), provider_id=str(spec.get("providerID") or ""),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        taints=tuple(t for t in spec.get("taints") or [] if isinstance(t, dict)),
        addresses=tuple(Address(str(a.get("type", "")), str(a.get("address", "")))
                        for a in status.get("addresses") or [] if isinstance(a, dict)),
        system_uuid=str((status.get("nodeInfo") or {}).get("systemUUID") or ""),
        ready=ready, ready_since=since, created=parse_time(meta.get("creationTimestamp")))


def json_needs_check(node: Mapping[str, Any]) -> bool:
    """The lifecycle scan as it read the raw JSON."""
    for taint in (node.get("spec") or {}).get("taints") or ():
        if isinstance(taint, dict) and taint.get("key") == SHUTDOWN_TAINT:
            return True
    for cond in (node.get("status") or {}).get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond.get("status") in ("False", "Unknown")
    return False


# ------------------------------------------------------------------------------------------- every decision

CSR = csr_view(csr_object(request_pem(dns=("node-1", "host-1"), ips=("94.26.101.149", "10.0.0.7"))))
SERVERS = (
    server("node-1", UUID1, meta={"pool": "a", "cluster": "c1"}),  # public DHCP 94.26.101.149
    server("node-2", UUID2, nics=[dhcp_nic("94.26.101.150"), vlan_nic()], meta={"pool": "b"}),
    server("node-1", UUID3, status="stopped", meta={"pool": "a"}),  # a second server named node-1
)
NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)


def snapshot(servers: Iterable[Server], groups: Mapping[str, str] | None = None) -> ServerSnapshot:
    listed = tuple(servers)
    return ServerSnapshot.from_list(ServerList(servers=listed, total_count=len(listed), request_ids=(),
                                               fetched_at=0.0), 0.0, SnapshotExtras(tag_names={}, host_groups=groups))


def relabel_queue(view: NodeView, servers: tuple[Server, ...]) -> list[str]:
    """Whether a changed host group makes the refresh trigger queue the node."""
    queued: list[str] = []
    trigger = RequeueOnChange(nodes=lambda: [view], enqueue=queued.append, labels=CloudLabels(POLICY).fingerprint)
    trigger(snapshot(servers, {s.uuid: "g1" for s in servers}))
    trigger(snapshot(servers, {s.uuid: "g2" for s in servers}))
    return queued


def decisions(view: NodeView, servers: tuple[Server, ...]) -> list[Any]:
    """Every decision a controller makes from a stored Node, for one snapshot of ``servers``."""
    snap = snapshot(servers, {s.uuid: "g1" for s in servers})
    out: list[Any] = [
        match_server(view, snap.by_uuid, snap.by_name),
        match_server(view, snap.by_uuid, snap.by_name, use_system_uuid=False),
        plan_shutdown_taint(view, None),
        needs_check(view),
        expected_servers([view]),
        view.ready_since or view.created,  # the lifecycle's grace period starts here
        view.labels.get(INSTANCE_TYPE),  # named in the Synced event
        relabel_queue(view, servers),
        decide(CSR, view, None),
        (view.name, view.uid, view.resource_version),  # what every write is guarded by
    ]
    claims = address_claims([view], CSR.request.ip_addresses if CSR.request else ())
    labels = CloudLabels(POLICY)
    for s in servers:
        out += [
            plan_initialization(view, s, region="zrh", zone="zrh"),
            plan_resync(view, s),
            labels.change(view, labels.desired(s, snap)),
            label_change(view.labels, view.annotations, labels.desired(s, snapshot(servers))),
            plan_shutdown_taint(view, s.status),
            decide(CSR, view, ServerLookup(s), claims=claims),
        ]
    return out


# ------------------------------------------------------------------------------------------- generated nodes

LABEL_KEYS = [*sorted(KEPT_LABELS), META_PREFIX + "pool", META_PREFIX + "cluster", META_PREFIX + "zone",
              TAG_PREFIX + "gpu-a100", HOST_GROUP, "node.cloudsigma.com/other", "kubernetes.io/hostname", "team",
              "node-role.kubernetes.io/worker", "topology.kubernetes.io/zonex"]
LABEL_VALUES = ["zrh", "fra", "a", "b", "c1", "true", "g1", "2c-4000mhz-4096mib", ""]
MANAGED_VALUES = [f"{META_PREFIX}pool", f"{META_PREFIX}pool,{HOST_GROUP}", f"{HOST_GROUP},{META_PREFIX}cluster",
                  "", f"{TAG_PREFIX}gpu-a100,team"]
IPS = ["94.26.101.149", "94.26.101.150", "10.0.0.7", "10.0.0.8", "192.168.1.5", "fd00::1", "not-an-ip"]
TIMES = ["2026-01-01T00:00:00Z", "2026-01-01T00:09:00Z", "2025-12-31T23:00:00Z", "garbage"]

taints = st.lists(st.fixed_dictionaries(
    {"key": st.sampled_from([UNINITIALIZED_TAINT, SHUTDOWN_TAINT, "dedicated", "node.kubernetes.io/not-ready"]),
     "effect": st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"])},
    optional={"value": st.sampled_from(["true", "gpu", ""]), "timeAdded": st.sampled_from(TIMES[:2])}),
    max_size=3, unique_by=lambda t: (t["key"], t["effect"]))
addresses = st.lists(st.one_of(
    st.builds(lambda ip: {"type": "InternalIP", "address": ip}, st.sampled_from(IPS)),
    st.builds(lambda ip: {"type": "ExternalIP", "address": ip}, st.sampled_from(IPS)),
    st.builds(lambda h: {"type": "Hostname", "address": h}, st.sampled_from(["node-1", "node-2", "host-1"])),
    st.builds(lambda h: {"type": "InternalDNS", "address": h}, st.sampled_from(["node-1.internal"]))), max_size=4)
conditions = st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(["Ready", "MemoryPressure", "DiskPressure", "NetworkUnavailable"]),
     "status": st.sampled_from(["True", "False", "Unknown"]),
     "lastHeartbeatTime": st.sampled_from(TIMES), "message": st.just("kubelet is posting ready status")},
    optional={"lastTransitionTime": st.sampled_from(TIMES)}), max_size=4, unique_by=lambda c: c["type"])
annotations = st.dictionaries(st.sampled_from([PROVIDED_NODE_IP, MANAGED_ANNOTATION, "node.alpha.kubernetes.io/ttl",
                                               "kubeadm.alpha.kubernetes.io/cri-socket"]),
                              st.one_of(st.sampled_from(IPS), st.sampled_from(MANAGED_VALUES),
                                        st.just("10.0.0.7,fd00::1")), max_size=3)


@st.composite
def nodes(draw: st.DrawFn) -> dict[str, Any]:
    """Node JSON as a kubelet, other controllers and the CCM leave it — with everything the record drops too."""
    name = draw(st.sampled_from(["node-1", "node-2"]))
    meta: dict[str, Any] = {
        "name": name, "uid": draw(st.sampled_from(["uid-a", "uid-b"])),
        "resourceVersion": draw(st.sampled_from(["7", "8", "123456"])),
        "labels": draw(st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=8)),
        "annotations": draw(annotations),
        "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}],
    }
    if draw(st.booleans()):
        meta["creationTimestamp"] = draw(st.sampled_from(TIMES))
    spec: dict[str, Any] = {"taints": draw(taints), "podCIDR": "10.244.0.0/24"}
    provider_id = draw(st.sampled_from(["", f"cloudsigma://{UUID1}", f"cloudsigma://{UUID2.upper()}",
                                        f"cloudsigma://{UUID3}", "aws:///eu-west-1a/i-0abc"]))
    if provider_id:
        spec["providerID"] = provider_id
    status: dict[str, Any] = {
        "addresses": draw(addresses), "conditions": draw(conditions),
        "nodeInfo": {"systemUUID": draw(st.sampled_from(["", UUID1, UUID2.upper(), UUID3, "not-a-uuid"])),
                     "kubeletVersion": "v1.34.4"},
        "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320000}],
        "capacity": {"cpu": "2"},
    }
    return {"kind": "Node", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": status}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(node=nodes(), servers=st.lists(st.sampled_from(range(len(SERVERS))), unique=True, max_size=3).map(
    lambda picked: tuple(SERVERS[i] for i in picked)))
def test_every_decision_from_the_record_equals_the_decision_from_the_full_json(
        node: dict[str, Any], servers: tuple[Server, ...]) -> None:
    record, full = node_view(node), full_view(node)
    assert decisions(record, servers) == decisions(full, servers)
    assert needs_check(record) == json_needs_check(node)


# ------------------------------------------------------------------------------------------- every kept field


def initialized(**changes: Any) -> dict[str, Any]:
    """A kubelet-registered, CCM-initialized Node (the realistic one of the store benchmark)."""
    node = realistic_node(7)
    node["metadata"]["name"] = "node-1"
    node["spec"]["providerID"] = f"cloudsigma://{UUID1}"
    node["status"]["nodeInfo"]["systemUUID"] = UUID1
    node["status"]["addresses"] = [{"type": "ExternalIP", "address": "94.26.101.149"},
                                   {"type": "Hostname", "address": "node-1"}]
    for path, value in changes.items():
        where = node
        *parents, last = path.split("__")
        for part in parents:
            where = where.setdefault(part, {})
        if value is None:
            where.pop(last, None)
        else:
            where[last] = value
    return node


def _without_label(key: str) -> dict[str, Any]:
    node = initialized(spec__taints=[{"key": UNINITIALIZED_TAINT, "value": "true", "effect": "NoSchedule"}])
    meta = node["metadata"]
    meta["labels"] = {k: v for k, v in meta["labels"].items() if k != key}
    if key.startswith(META_PREFIX) or key.startswith(TAG_PREFIX):  # one the CCM set (so it may remove it)
        meta["annotations"][MANAGED_ANNOTATION] = ",".join({*meta["annotations"][MANAGED_ANNOTATION].split(","),
                                                            key})
    return node


@pytest.mark.parametrize("key", sorted(KEPT_LABELS | {META_PREFIX + "pool", HOST_GROUP, TAG_PREFIX + "gpu-a100"}))
def test_a_label_the_decisions_read_is_kept_and_changes_them(key: str) -> None:
    """For each label a decision reads: the decisions differ with and without it — and the record's equal the
    full JSON's either way (drop the key from the record and this fails)."""
    with_it = _without_label(key)
    # The value the decision would set (so having it is "in sync", lacking it a write), or any for the topology
    # labels (set only when absent).
    with_it["metadata"]["labels"][key] = {META_PREFIX + "pool": "a", HOST_GROUP: "g1"}.get(key, "x")
    without = _without_label(key)
    assert decisions(full_view(with_it), SERVERS[:1]) != decisions(full_view(without), SERVERS[:1]), key
    for node in (with_it, without):
        assert decisions(node_view(node), SERVERS[:1]) == decisions(full_view(node), SERVERS[:1]), key


@pytest.mark.parametrize(("what", "changes"), [
    ("provided-node-ip", {"metadata__annotations": {PROVIDED_NODE_IP: "10.0.0.9"}}),
    ("managed-labels", {"metadata__annotations": {MANAGED_ANNOTATION: f"{META_PREFIX}pool,{META_PREFIX}zone"},
                        "metadata__labels": {f"{META_PREFIX}zone": "a"}}),
    ("providerID", {"spec__providerID": None}),
    ("systemUUID", {"spec__providerID": None, "status__nodeInfo__systemUUID": UUID3}),
    ("addresses", {"status__addresses": [{"type": "ExternalIP", "address": "94.26.101.1"}]}),
    ("Hostname address", {"status__addresses": [{"type": "ExternalIP", "address": "94.26.101.149"},
                                                {"type": "Hostname", "address": "host-1"}]}),
    ("Ready", {"status__conditions": [{"type": "Ready", "status": "False"}]}),
    ("Ready since", {"status__conditions": [{"type": "Ready", "status": "False",
                                             "lastTransitionTime": "2026-01-01T00:09:30Z"}]}),
    ("created", {"status__conditions": [{"type": "Ready", "status": "False"}],
                 "metadata__creationTimestamp": "2026-01-01T00:09:30Z"}),
    ("taint value", {"spec__taints": [{"key": UNINITIALIZED_TAINT, "effect": "NoSchedule"},
                                      {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
    ("taint timeAdded", {"spec__taints": [{"key": UNINITIALIZED_TAINT, "effect": "NoSchedule"},
                                          {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                                           "timeAdded": "2026-01-01T00:05:00Z"}]}),
    ("uid", {"metadata__uid": "another-object"}),
    ("resourceVersion", {"metadata__resourceVersion": "999"}),
])
def test_each_kept_field_changes_a_decision_and_the_record_keeps_it(what: str, changes: dict[str, Any]) -> None:
    base, changed = initialized(), initialized(**changes)
    assert decisions(full_view(base), SERVERS) != decisions(full_view(changed), SERVERS), what
    for node in (base, changed):
        assert decisions(node_view(node), SERVERS) == decisions(full_view(node), SERVERS), what


# ------------------------------------------------------------------------------------------- the record itself


def test_the_record_keeps_what_decisions_read_and_nothing_else() -> None:
    node = realistic_node(3)
    node["spec"]["taints"] = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                               "timeAdded": "2026-01-05T10:00:00Z"},
                              {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    node["metadata"]["annotations"][PROVIDED_NODE_IP] = "10.0.0.3"
    record = node_view(node)
    meta, status = node["metadata"], node["status"]
    assert (record.name, record.uid, record.resource_version) == (meta["name"], meta["uid"], meta["resourceVersion"])
    assert record.provider_id == node["spec"]["providerID"]
    assert record.system_uuid == status["nodeInfo"]["systemUUID"]
    assert [a.as_dict() for a in record.addresses] == status["addresses"]
    assert (record.ready, record.ready_since) == ("True", parse_time("2026-01-05T10:00:00Z"))
    assert record.created == parse_time(meta["creationTimestamp"])
    assert [dict(t) for t in record.taints] == node["spec"]["taints"], "every taint, whole"
    assert set(record.labels) == {k for k in meta["labels"] if k in KEPT_LABELS or k.startswith("node.cloudsigma.com/")}
    assert set(record.labels) >= KEPT_LABELS and "kubernetes.io/hostname" not in record.labels
    assert dict(record.annotations) == {k: meta["annotations"][k] for k in KEPT_ANNOTATIONS}
    assert not hasattr(record, "__dict__"), "slotted: no per-instance dict"
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.name = "other"  # type: ignore[misc]


def test_repeated_keys_and_values_are_shared_between_records() -> None:
    a, b = node_view(realistic_node(1)), node_view(realistic_node(2))
    for key in a.labels:
        other = next(k for k in b.labels if k == key)
        assert other is key, key
    assert a.labels[INSTANCE_TYPE] is b.labels[INSTANCE_TYPE]
    assert a.annotations[MANAGED_ANNOTATION] is b.annotations[MANAGED_ANNOTATION]
    hostname = next(x for x in a.addresses if x.type == "Hostname")
    assert hostname.address is a.name and hostname.type is sys.intern("Hostname")


@pytest.mark.parametrize("odd", [
    {},
    {"metadata": None, "spec": "x", "status": 5},
    {"metadata": {"name": "n", "labels": ["a"], "annotations": "x"}, "spec": {"taints": "abc"},
     "status": {"addresses": 5, "conditions": {"type": "Ready"}, "nodeInfo": []}},
    {"metadata": {"name": "n", "labels": {"node.cloudsigma.com/x": 5}}, "spec": {"taints": [{"key": 1}, "t"]},
     "status": {"addresses": [{"type": None}, "a"], "conditions": [None, {"type": "Ready", "status": True}]}},
])
def test_an_odd_node_gives_a_record_not_an_error(odd: dict[str, Any]) -> None:
    record = node_view(odd)
    assert isinstance(record, NodeView)


# ------------------------------------------------------------------------------------------- the store's users


def test_the_store_holds_records_and_observe_builds_them_from_the_answer() -> None:
    watcher = NodeWatcher(cast(KubeTransport, None))
    watcher.store["node-1"] = node_view(initialized(metadata__resourceVersion="5"))
    watcher.observe(initialized(metadata__resourceVersion="6", metadata__labels={"team": "x"}))
    stored = watcher.store["node-1"]
    assert isinstance(stored, NodeView) and stored.resource_version == "6" and dict(stored.labels) == {}


def test_the_node_controller_queues_on_decided_fields_only() -> None:
    watcher = NodeWatcher(cast(KubeTransport, None))
    controller = NodeController(watcher, cast(NodeReconciler, None), workers=1, resync_period=60.0,
                                metrics=Metrics())
    base = initialized()
    heartbeat = initialized(metadata__resourceVersion="999999", status__images=[], metadata__labels={
        **base["metadata"]["labels"], "team": "x"})
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-02-01T00:00:00Z"
    controller._on_event("node-1", node_view(base), node_view(heartbeat))
    assert len(controller.queue) == 0, "heartbeats, images and labels no decision reads queue nothing"
    relabelled = initialized(metadata__labels={**base["metadata"]["labels"], META_PREFIX + "pool": "other"})
    controller._on_event("node-1", node_view(base), node_view(relabelled))
    assert len(controller.queue) == 1, "a cloud label changed by someone: decide again"


def test_the_node_controller_keeps_a_queue_it_is_given_even_an_empty_one() -> None:
    from ccm.workqueue import WorkQueue

    queue = WorkQueue()
    controller = NodeController(NodeWatcher(cast(KubeTransport, None)), cast(NodeReconciler, None), workers=1,
                                resync_period=60.0, metrics=Metrics(), queue=queue)
    assert controller.queue is queue
