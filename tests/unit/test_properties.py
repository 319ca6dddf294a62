"""Property-based tests (hypothesis) of the parsers and the pure decisions, fed arbitrary and near-valid data.

Properties: no unhandled exception (only the documented ``InvalidObject`` / ``AddressError``), and every decided
field valid for the Kubernetes API and its components: IPs that parse everywhere (Go's ``net.ParseIP``: no zone,
no whitespace), address types from the allowed set without duplicates (the API server answers 422 to a duplicate),
label values matching the label-value syntax in at most 63 characters, and a providerID the CCM recognises as its
own when it reads it back.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ccm.nodes.addresses import AddressError, decide_addresses
from ccm.nodes.decide import plan_initialization
from ccm.nodes.labels import (
    INSTANCE_TYPE,
    INSTANCE_TYPE_BETA,
    REGION,
    REGION_BETA,
    ZONE,
    ZONE_BETA,
    desired_labels,
)
from ccm.nodes.view import UNINITIALIZED_TAINT, Address, node_view
from ccm.providerid import ForeignProviderID, parse_provider_id
from cloudsigma.addresses import server_addresses
from cloudsigma.models import InvalidObject, Server, parse_server
from tests.reliability import registry

EXAMPLES = 300
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
NODE_ADDRESS_TYPES = {"InternalIP", "ExternalIP", "Hostname"}
CCM_LABELS = {INSTANCE_TYPE, INSTANCE_TYPE_BETA, REGION, REGION_BETA, ZONE, ZONE_BETA}
UUID = "3ca429cc-b4f4-4e1e-9b54-2b5e52d1d0f3"

# ------------------------------------------------------------------------------------------- strategies

TRICKY_IPS = [
    "", " ", "10.0.0.1", " 10.0.0.1 ", "10.0.0.1\n", "999.1.2.3", "01.2.3.4", "1.2.3", "0.0.0.0", "::", "::1",
    "127.0.0.1", "169.254.1.1", "224.0.0.1", "ff02::1", "fe80::1%eth0", "2001:db8::1%eth0", "2001:db8::1%",
    "::ffff:10.0.0.1", "::ffff:185.12.5.5", "2A02:1338::1", "2a02:1338:0:0::1", "100.64.0.1", "fc00::1",
    "185.12.5.5/24", "185.12.5.5:80", "[2001:db8::1]", "1.1.1.1,2.2.2.2", "\x00", "None", "185.12.5.5",
    "94.26.101.149",
]
MACS = ["22:aa:00:00:00:01", "22:AA:00:00:00:01", "22:aa:00:00:00:02", ""]

ip_text = st.one_of(st.sampled_from(TRICKY_IPS), st.ip_addresses().map(str), st.text(max_size=12))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
json_any = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                        max_leaves=6)
ref = st.one_of(ip_text, st.fixed_dictionaries({"uuid": ip_text}, optional={"resource_uri": json_any}), json_any)
conf = st.one_of(
    st.none(), json_any,
    st.fixed_dictionaries({"conf": st.one_of(st.sampled_from(["static", "dhcp", "manual", "DHCP", "other"]),
                                             json_any),
                           "ip": st.one_of(st.none(), ref)}),
)
mac = st.one_of(st.sampled_from(MACS), json_any)
runtime_nic = st.fixed_dictionaries({}, optional={
    "interface_type": st.one_of(st.sampled_from(["public", "private"]), json_any),
    "ip_v4": st.one_of(st.none(), ref), "ip_v6": st.one_of(st.none(), ref), "mac": mac, "io": json_any})
nic = st.one_of(json_any, st.fixed_dictionaries({}, optional={
    "mac": mac, "ip_v4_conf": conf, "ip_v6_conf": conf, "model": json_any,
    "vlan": st.one_of(st.none(), st.just({"uuid": UUID}), ref),
    "runtime": st.one_of(st.none(), runtime_nic, json_any)}))
size = st.one_of(st.integers(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.booleans(),
                 st.none(), st.text(max_size=6), st.sampled_from(["4096", "²", "١٢", " 12", "0x10"]), json_any)
server_uuid = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.text(max_size=40),
                        json_any)
server_dict = st.fixed_dictionaries({"uuid": server_uuid}, optional={
    "name": st.one_of(st.text(max_size=20), json_any),
    "status": st.one_of(st.sampled_from(["running", "stopped", "paused", ""]), json_any),
    "cpu": size, "smp": size, "mem": size, "meta": json_any, "tags": json_any, "owner": ref,
    "nics": st.one_of(st.lists(nic, max_size=4), json_any),
    "runtime": st.one_of(st.none(), json_any,
                         st.fixed_dictionaries({"nics": st.one_of(st.lists(runtime_nic, max_size=3), json_any)})),
    "resource_uri": json_any, "extra": json_any})
payload = st.one_of(server_dict, json_any)

dns_label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
node_name = st.lists(dns_label, min_size=1, max_size=4).map(".".join).filter(lambda n: len(n) <= 253)
address_type = st.one_of(st.sampled_from(["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"]),
                         st.text(max_size=10))
current_addresses = st.lists(st.tuples(address_type, st.one_of(ip_text, node_name)), max_size=5)
provided_node_ip = st.one_of(
    st.none(), ip_text,
    st.lists(st.one_of(ip_text, st.ip_addresses().map(str)), min_size=1, max_size=3).map(",".join))
label_text = st.one_of(st.text(max_size=70), st.sampled_from(["zrh", "fra", "", "-zrh", "zrh-", "a" * 64, "a" * 63,
                                                             "Zürich", "zrh 1", "next"]))
taint = st.fixed_dictionaries({"key": st.sampled_from([UNINITIALIZED_TAINT, "dedicated", "node.kubernetes.io/x"]),
                               "effect": st.sampled_from(["NoSchedule", "NoExecute"])},
                              optional={"value": st.text(max_size=5)})


def servers() -> st.SearchStrategy[Server]:
    """Servers the parser accepted (what the decisions ever see)."""

    def parse_or_none(raw: Any) -> Server | None:
        try:
            return parse_server(raw)
        except InvalidObject:
            return None

    return server_dict.map(parse_or_none).filter(lambda s: s is not None)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- checks


def valid_ip(text: str) -> bool:
    """Parses as an IP for every Kubernetes component (Go's net.ParseIP: no zone id, no whitespace)."""
    if "%" in text or text != text.strip():
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_addresses(addresses: tuple[Address, ...]) -> None:
    pairs = [(a.type, a.address) for a in addresses]
    assert len(set(pairs)) == len(pairs), f"duplicate addresses (the API server answers 422): {pairs}"
    for kind, value in pairs:
        assert kind in NODE_ADDRESS_TYPES, kind
        if kind != "Hostname":
            assert valid_ip(value), f"{kind} {value!r} is not an IP address"
        else:
            assert value


def check_label_value(value: str) -> None:
    assert len(value) <= 63 and LABEL_VALUE.match(value), f"invalid label value {value!r}"


def node_json(name: str, *, provider_id: str, labels: dict[str, str], annotations: dict[str, str],
              taints: list[dict[str, Any]], addresses: list[tuple[str, str]], system_uuid: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"taints": taints}
    if provider_id:
        spec["providerID"] = provider_id
    return {"metadata": {"name": name, "uid": "uid-1", "resourceVersion": "7", "labels": labels,
                         "annotations": annotations, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec,
            "status": {"addresses": [{"type": t, "address": a} for t, a in addresses],
                       "nodeInfo": {"systemUUID": system_uuid},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


nodes = st.builds(
    node_json, node_name,
    provider_id=st.one_of(st.just(""), st.just(f"cloudsigma://{UUID}"), st.text(max_size=20)),
    labels=st.dictionaries(st.sampled_from([*CCM_LABELS, "team", "kubernetes.io/hostname"]), label_text, max_size=4),
    annotations=st.one_of(st.just({}), provided_node_ip.map(
        lambda v: {} if v is None else {"alpha.kubernetes.io/provided-node-ip": v})),
    taints=st.lists(taint, max_size=3), addresses=current_addresses,
    system_uuid=st.one_of(st.just(""), st.uuids().map(str)))


# ------------------------------------------------------------------------------------------- properties

#: test -> (case, what is fed, what is verified), for docs/reliability.md
CASES = {
    "test_parse_server_raises_only_invalid_object": (
        "`parse_server` on arbitrary JSON",
        "arbitrary JSON values and server-shaped objects with missing, null and wrong-typed fields",
        "only `InvalidObject` (one line) is raised; accepted servers have a stripped non-empty uuid, int-or-None "
        "sizes, string meta"),
    "test_server_addresses_are_valid_ips": (
        "`server_addresses`",
        "parsed servers with invalid, zoned, padded, loopback IP strings and odd NIC shapes",
        "never raises; the IPv4/IPv6 lists hold valid (no zone id), de-duplicated IPs of their family"),
    "test_decide_addresses_are_valid_or_address_error": (
        "`decide_addresses`",
        "odd server addresses, kubelet addresses of any type and value, provided-node-ip values (invalid, dual, "
        "triple, zoned)",
        "only `AddressError`, and only for a provided-node-ip; addresses of allowed types, valid IPs, no duplicates "
        "(422), a Hostname, the provided IP first"),
    "test_desired_labels_are_valid_label_values": (
        "`desired_labels`",
        "servers with any sizes; any region/zone text",
        "only the six topology/instance-type keys; values match the label-value syntax in <= 63 characters"),
    "test_plan_initialization_never_raises_and_plans_valid_fields": (
        "`plan_initialization`",
        "odd servers x nodes with odd labels, taints, addresses, providerIDs and provided-node-ip",
        "never raises; blocked plans write nothing; addresses and label values valid; no existing label "
        "overwritten; only the uninitialized taint removed"),
    "test_written_provider_id_is_recognised_as_ours": (
        "providerID round trip",
        "servers whose uuid is any non-empty string",
        "a providerID the CCM writes parses back (`parse_provider_id`) to the same server (providerID is "
        "immutable)"),
}


@pytest.fixture(autouse=True)
def _record_case(request: pytest.FixtureRequest) -> None:
    case = CASES.get(request.node.originalname)
    if case is not None:
        registry.record("input/properties", case[0], injected=f"{case[1]} ({EXAMPLES} examples + pinned ones)",
                        verified=case[2], bad_inputs=EXAMPLES)



@PROPERTY
@given(payload)
@example({"uuid": None})
@example({"uuid": UUID, "cpu": "²", "mem": "١٢"})
@example({"uuid": UUID, "nics": [None, 1, "x", {"ip_v4_conf": "static", "runtime": []}], "runtime": "up"})
@example([{"uuid": UUID}])
def test_parse_server_raises_only_invalid_object(raw: Any) -> None:
    try:
        server = parse_server(raw)
    except InvalidObject as exc:
        server, message = None, str(exc)
    if server is None:
        assert message and "\n" not in message
        return
    assert isinstance(server, Server) and server.uuid == server.uuid.strip() and server.uuid
    assert all(isinstance(v, str) for v in server.meta.values())
    for value in (server.cpu, server.smp, server.mem):
        assert value is None or (isinstance(value, int) and not isinstance(value, bool))


@PROPERTY
@given(servers())
@example(parse_server({"uuid": UUID, "nics": [{"ip_v4_conf": None, "ip_v6_conf": {
    "conf": "static", "ip": {"uuid": "2001:db8::1%eth0"}}}]}))
def test_server_addresses_are_valid_ips(server: Server) -> None:
    found = server_addresses(server)
    for family, values in ((4, found.ipv4), (6, found.ipv6)):
        assert len(set(values)) == len(values)
        for value in values:
            assert valid_ip(value), f"{value!r} is not an IP address"
            assert ipaddress.ip_address(value).version == family
    assert found.unknown_public_nics >= 0
    assert all(isinstance(v, str) for v in found.invalid)


@PROPERTY
@given(servers(), node_name, current_addresses, provided_node_ip)
@example(parse_server({"uuid": UUID, "nics": [{"ip_v4_conf": {"conf": "static", "ip": {"uuid": "185.12.5.5"}}},
                                              {"vlan": {"uuid": UUID}}]}),
         "node-1", [("InternalIP", "10.0.0.7"), ("InternalIP", "10.0.0.7"), ("Hostname", "node-1")], "10.0.0.7")
@example(parse_server({"uuid": UUID, "nics": [{"ip_v4_conf": {"conf": "static", "ip": {"uuid": "185.12.5.5"}}}]}),
         "node-1", [], "185.12.5.5,2001:db8::1%eth0")
def test_decide_addresses_are_valid_or_address_error(server: Server, name: str, current: list[tuple[str, str]],
                                                     provided: str | None) -> None:
    try:
        decision = decide_addresses(name, server_addresses(server), tuple(Address(t, a) for t, a in current),
                                    provided_node_ip=provided)
    except AddressError as exc:
        decision, message = None, str(exc)
    if decision is None:
        assert message and provided is not None  # only a provided-node-ip can make addresses undecidable
        return
    check_addresses(decision.addresses)
    assert any(a.type == "Hostname" for a in decision.addresses)
    if provided is not None:
        first = ipaddress.ip_address(provided.split(",")[0].strip())
        assert ipaddress.ip_address(decision.addresses[0].address) == first


@PROPERTY
@given(servers(), label_text, label_text)
def test_desired_labels_are_valid_label_values(server: Server, region: str, zone: str) -> None:
    labels = desired_labels(server, region=region, zone=zone)
    assert set(labels) <= CCM_LABELS
    for value in labels.values():
        check_label_value(value)
    if region and len(region) <= 63 and LABEL_VALUE.match(region):
        assert labels[REGION] == region


@PROPERTY
@given(servers(), nodes, label_text)
def test_plan_initialization_never_raises_and_plans_valid_fields(server: Server, node: dict[str, Any],
                                                                 region: str) -> None:
    view = node_view(node)
    plan = plan_initialization(view, server, region=region, zone=region)
    if plan.blocked:
        assert plan.empty and "\n" not in plan.blocked
        return
    if plan.addresses is not None:
        check_addresses(plan.addresses)
    for key, value in plan.labels.items():
        assert key in CCM_LABELS and key not in view.labels
        check_label_value(value)
    if plan.taints is not None:
        assert all(t.get("key") != UNINITIALIZED_TAINT for t in plan.taints)
        assert len(plan.taints) == len(view.taints) - sum(1 for t in view.taints if t["key"] == UNINITIALIZED_TAINT)
    assert (plan.provider_id is None) == bool(view.provider_id)


def test_a_server_without_a_real_uuid_is_rejected() -> None:
    """Found by this suite: a non-uuid ``uuid`` would become a providerID the CCM later calls foreign."""
    with pytest.raises(InvalidObject):
        parse_server({"uuid": "i-0abc", "name": "node-1"})


@PROPERTY
@given(servers(), nodes)
def test_written_provider_id_is_recognised_as_ours(server: Server, node: dict[str, Any]) -> None:
    """providerID is immutable: a value the CCM writes must be one it parses back to the same server."""
    plan = plan_initialization(node_view(node), server, region="zrh", zone="zrh")
    if plan.provider_id is None:
        return
    try:
        parsed = parse_provider_id(plan.provider_id)
    except ForeignProviderID as exc:
        raise AssertionError(f"the CCM would write providerID {plan.provider_id!r} and later call it foreign: "
                             f"{exc}") from None
    assert parsed == server.uuid.lower()
