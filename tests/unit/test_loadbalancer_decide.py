"""ccm/loadbalancer: the pure parts — IP listing and claims (ipam), the decision for one Service, the announcer's
objects and the NIC switch body."""

from __future__ import annotations

from typing import Any

import pytest

from ccm.loadbalancer import announcer
from ccm.loadbalancer.decide import (
    INVALID_REQUEST,
    NO_ELIGIBLE_NODE,
    POOL_EXHAUSTED,
    REQUESTED_IN_USE,
    REQUESTED_NOT_OWNED,
    UNSUPPORTED_POOL,
    Verdict,
    decide,
)
from ccm.loadbalancer.eligibility import definition_is_manual, manual_definition
from ccm.loadbalancer.ipam import (
    CLAIM_CLUSTER,
    CLAIM_SERVICE,
    CLAIM_UID,
    claimed_meta,
    free,
    parse_ips,
    released_meta,
)
from ccm.loadbalancer.service import FINALIZER, service_view

OWNER = {"uuid": "u1", "resource_uri": "/api/2.0/user/u1/"}
SUB = {"id": 1, "resource_uri": "/api/2.0/subscriptions/1/"}


def ip(address: str, *, subscribed: bool = True, server: str | None = None, meta: dict[str, str] | None = None,
       tags: list[str] | None = None) -> dict[str, Any]:
    return {"uuid": address, "owner": OWNER, "subscription": SUB if subscribed else None,
            "server": {"uuid": server, "resource_uri": ""} if server else None, "meta": meta or {},
            "tags": [{"uuid": t, "resource_uri": ""} for t in tags or []]}


def svc(name: str = "web", *, ns: str = "default", uid: str = "uid-1", type_: str = "LoadBalancer",
        annotations: dict[str, str] | None = None, finalizers: list[str] | None = None, deleting: bool = False,
        ingress: list[str] | None = None, lb_class: str | None = None, spec_ip: str = "") -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid, "resourceVersion": "1",
                            "annotations": annotations or {},
                            "finalizers": [FINALIZER] if finalizers is None else finalizers}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec: dict[str, Any] = {"type": type_, "loadBalancerIP": spec_ip}
    if lb_class:
        spec["loadBalancerClass"] = lb_class
    return service_view({"metadata": meta, "spec": spec,
                         "status": {"loadBalancer": {"ingress": [{"ip": i} for i in ingress or []]}}})


def claim(cluster: str, service: str, uid: str) -> dict[str, str]:
    return {CLAIM_CLUSTER: cluster, CLAIM_SERVICE: service, CLAIM_UID: uid}


def test_free_ips_are_subscribed_ipv4_on_no_nic_and_unclaimed() -> None:
    ips = parse_ips([ip("185.1.1.5"), ip("185.1.1.6", subscribed=False, server="s1"), ip("185.1.1.7", server="s2"),
                     ip("185.1.1.8", meta=claim("other", "a/b", "x")), ip("2a02::1"), ip("185.1.1.4"),
                     ip("185.1.1.9", tags=["t1", "t2"])],
                    {"t1": "cluster:old", "t2": "service:default-web"})
    assert [i.address for i in free(ips, "static")] == ["185.1.1.4", "185.1.1.5"]
    assert [i.address for i in free(ips, "static", reserved=["185.1.1.4"])] == ["185.1.1.5"]
    kube_dc = next(i for i in ips if i.address == "185.1.1.9")
    assert kube_dc.claim is not None and kube_dc.claim.source == "kube-dc-tags"


def test_claim_keeps_every_other_meta_key_and_release_removes_only_ours() -> None:
    meta = claimed_meta({"name": "my ip"}, "c1", "default/web", "uid-1")
    assert meta["name"] == "my ip" and meta[CLAIM_SERVICE] == "default/web" and all(len(k) <= 32 for k in meta)
    assert released_meta(meta) == {"name": "my ip"}


def test_claims_a_free_ip_and_two_services_spread() -> None:
    ips = parse_ips([ip(f"185.1.1.{n}") for n in range(2, 12)])
    a = decide(svc(uid="a"), ips, cluster="c1", eligible_nodes=1)
    b = decide(svc("api", uid="b"), ips, cluster="c1", eligible_nodes=1, reserved=[a.ip or ""])
    assert a.verdict is Verdict.CLAIM and b.verdict is Verdict.CLAIM and a.ip != b.ip


def test_keeps_the_ip_it_holds_and_never_takes_one_claimed_elsewhere() -> None:
    ips = parse_ips([ip("185.1.1.2", meta=claim("c2", "default/web", "uid-1")),
                     ip("185.1.1.3", meta=claim("c1", "default/web", "uid-1"))])
    d = decide(svc(), ips, cluster="c1", eligible_nodes=0, verified="185.1.1.3")
    assert (d.verdict, d.ip) == (Verdict.KEEP, "185.1.1.3")  # kept even while no Node is eligible
    other = decide(svc(uid="new-object"), ips, cluster="c1", eligible_nodes=1)
    assert (other.verdict, other.reason) == (Verdict.PENDING, POOL_EXHAUSTED)


def test_a_claim_of_ours_not_yet_verified_is_checked_again_not_kept() -> None:
    """A claim written too late after its listing (not trusted, CLAIM_LOST) stays in the IP's meta: the retry finds
    it as ours, and must check it again (write + listing after settle) rather than KEEP it unchecked."""
    ips = parse_ips([ip("185.1.1.3", meta=claim("c1", "default/web", "uid-1"))])
    d = decide(svc(), ips, cluster="c1", eligible_nodes=1)
    assert (d.verdict, d.ip) == (Verdict.CLAIM, "185.1.1.3")
    held_elsewhere = decide(svc(), ips, cluster="c1", eligible_nodes=1, verified="185.1.1.9")
    assert (held_elsewhere.verdict, held_elsewhere.ip) == (Verdict.CLAIM, "185.1.1.3")


def test_our_own_announcer_annotation_is_not_a_request() -> None:
    """The CCM writes the announcer's annotation next to the status: once its claim is lost, that annotation is its
    own output, not the user asking for an IP (no REQUESTED_IN_USE blaming the user)."""
    ours = {"metallb.io/loadBalancerIPs": "185.1.1.3", "metallb.io/address-pool": "cloudsigma-ccm"}
    lost = parse_ips([ip("185.1.1.3", meta=claim("c2", "x/y", "z"))])
    d = decide(svc(annotations=ours, ingress=["185.1.1.3"]), lost, cluster="c1", eligible_nodes=1)
    assert (d.verdict, d.reason) == (Verdict.PENDING, POOL_EXHAUSTED)
    assert svc(annotations={"kube-vip.io/loadbalancerIPs": "185.1.1.3"}, ingress=["185.1.1.3"]).requested_ip is None
    # A user's own announcer annotation (it differs from the status) still asks for that IP.
    assert svc(annotations={"metallb.io/loadBalancerIPs": "185.1.1.4"}, ingress=["185.1.1.3"]).requested_ip \
        == "185.1.1.4"


@pytest.mark.parametrize(("requested", "reason"), [
    ("185.9.9.9", REQUESTED_NOT_OWNED),  # not in the account
    ("185.1.1.4", REQUESTED_NOT_OWNED),  # a DHCP lease: no subscription
    ("185.1.1.5", REQUESTED_IN_USE),  # on a NIC
    ("185.1.1.6", REQUESTED_IN_USE),  # claimed by another cluster
    ("not-an-ip", INVALID_REQUEST),
])
def test_a_requested_ip_must_be_a_free_subscribed_ip_of_the_owner(requested: str, reason: str) -> None:
    ips = parse_ips([ip("185.1.1.2"), ip("185.1.1.4", subscribed=False, server="s9"), ip("185.1.1.5", server="s1"),
                     ip("185.1.1.6", meta=claim("c2", "x/y", "z"))])
    d = decide(svc(annotations={"loadbalancer.cloudsigma.com/ip": requested}), ips, cluster="c1", eligible_nodes=1)
    assert (d.verdict, d.reason) == (Verdict.PENDING, reason)
    ok = decide(svc(spec_ip="185.1.1.2"), ips, cluster="c1", eligible_nodes=1)
    assert (ok.verdict, ok.ip) == (Verdict.CLAIM, "185.1.1.2")


def test_no_new_claim_without_an_eligible_node() -> None:
    d = decide(svc(), parse_ips([ip("185.1.1.2")]), cluster="c1", eligible_nodes=0)
    assert (d.verdict, d.reason) == (Verdict.PENDING, NO_ELIGIBLE_NODE)


def test_migration_keeps_the_ip_in_status_when_kube_dc_tags_name_this_service() -> None:
    names = {"t1": "cluster:c1", "t2": "service:default-web", "t3": "cluster:other", "t4": "service:default-api"}
    ips = parse_ips([ip("185.1.1.2"), ip("185.1.1.7", tags=["t1", "t2"]), ip("185.1.1.8", tags=["t3", "t4"])],
                    names)
    d = decide(svc(ingress=["185.1.1.7"]), ips, cluster="c1", eligible_nodes=1)
    assert (d.verdict, d.ip) == (Verdict.CLAIM, "185.1.1.7")
    # Another cluster's kube-dc claim is respected even when a status names it.
    taken = decide(svc("api", uid="u2", ingress=["185.1.1.8"]), ips, cluster="c1", eligible_nodes=1)
    assert taken.ip == "185.1.1.2"


def test_release_on_delete_and_on_type_change_names_only_its_own_claims() -> None:
    ips = parse_ips([ip("185.1.1.3", meta=claim("c1", "default/web", "uid-1")),
                     ip("185.1.1.4", meta=claim("c1", "default/web", "older-object"))])
    gone = decide(svc(deleting=True), ips, cluster="c1", eligible_nodes=1)
    assert (gone.verdict, gone.release) == (Verdict.RELEASE, ("185.1.1.3",))
    changed = decide(svc(type_="ClusterIP"), ips, cluster="c1", eligible_nodes=1)
    assert (changed.verdict, changed.release) == (Verdict.RELEASE, ("185.1.1.3",))
    assert decide(svc(type_="ClusterIP", finalizers=[]), ips, cluster="c1", eligible_nodes=1).verdict is Verdict.SKIP


def test_other_classes_and_pools_are_not_served() -> None:
    ips = parse_ips([ip("185.1.1.2")])
    assert decide(svc(lb_class="other.io/lb", finalizers=[]), ips, cluster="c1", eligible_nodes=1).verdict \
        is Verdict.SKIP
    d = decide(svc(annotations={"cloudsigma.com/ip-pool": "dynamic"}), ips, cluster="c1", eligible_nodes=1)
    assert d.reason == UNSUPPORTED_POOL


def test_metallb_pool_holds_exactly_the_ips_and_assigns_nothing_itself() -> None:
    pool = announcer.address_pool("metallb-system", ["185.1.1.10", "185.1.1.9", "185.1.1.9"])
    assert pool["spec"] == {"addresses": ["185.1.1.9/32", "185.1.1.10/32"], "autoAssign": False,
                            "avoidBuggyIPs": False}
    l2 = announcer.l2_advertisement("metallb-system")
    assert l2["spec"]["nodeSelectors"] == [{"matchLabels": {announcer.ELIGIBLE_LABEL: "true"}}]
    assert announcer.service_annotations("metallb", "185.1.1.9") == {
        "metallb.io/loadBalancerIPs": "185.1.1.9", "metallb.io/address-pool": announcer.POOL_NAME}
    assert announcer.service_annotations("kube-vip", None) == {"kube-vip.io/loadbalancerIPs": None}


def test_nic_switch_body_keeps_writable_fields_and_drops_read_only_ones() -> None:
    server = {"uuid": "s1", "name": "n1", "cpu": 2000, "mem": 1, "vnc_password": "pw", "status": "running",
              "runtime": {}, "owner": OWNER, "meta": {"k": "v"}, "drives": [{"dev_channel": "0:0"}],
              "nics": [{"mac": "22:aa", "ip_v4_conf": {"conf": "dhcp", "ip": None}, "runtime": {"x": 1}},
                       {"mac": "22:bb", "vlan": {"uuid": "v1"}, "ip_v4_conf": None}]}
    body = manual_definition(server)
    assert body is not None and not definition_is_manual(server) and definition_is_manual(body)
    assert {"uuid", "status", "runtime", "owner"}.isdisjoint(body)
    assert body["vnc_password"] == "pw" and body["drives"] == server["drives"] and body["meta"] == {"k": "v"}
    assert body["nics"][1] == {"mac": "22:bb", "vlan": {"uuid": "v1"}, "ip_v4_conf": None}
    assert manual_definition({"nics": [{"vlan": {"uuid": "v"}, "ip_v4_conf": None}]}) is None


def test_request_endpoints_name_the_ip_listing_apart_from_one_ip() -> None:
    from cloudsigma.client import endpoint_of

    assert endpoint_of("ips/detail/") == "/ips/detail/"
    assert endpoint_of("ips/185.1.1.2/") == "/ips/{ip}/"
