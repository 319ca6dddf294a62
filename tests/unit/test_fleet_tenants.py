"""Tenants from a CloudSigmaCluster and its kubeconfig Secret: the pure parsers, their typed one-line errors
(never quoting the kubeconfig), the change classification and the slimming of stored objects."""

from __future__ import annotations

import base64
import copy
from typing import Any, cast

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from ccm.clusters.tenants import (
    ClusterNotAdopted,
    InvalidCluster,
    InvalidKubeconfig,
    KubeconfigMissing,
    TenantError,
    changed_fields,
    kubeconfig_dict,
    parse_cluster,
    parse_kubeconfig_secret,
    parse_tenant,
)
from ccm.fleet.discovery import (
    TenantDiscovery,
    TenantEvent,
    TenantEventType,
    desired_tenant,
    slim_cluster,
    slim_secret,
    tenant_events,
)
from ccm.kube.transport import KubeTransport

SECRET_MARK = "c2VjcmV0LWtleS1kYXRh-DO-NOT-LEAK"
PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def kubeconfig(**user: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c1", "cluster": {"server": "https://10.0.0.1:6443",
                                                "certificate-authority-data": "Q0E="}}],
        "users": [{"name": "admin", "user": user or {"client-certificate-data": "Q0VSVA==",
                                                     "client-key-data": SECRET_MARK}}],
        "contexts": [{"name": "admin@c1", "context": {"cluster": "c1", "user": "admin"}}],
        "current-context": "admin@c1",
    }


def secret(doc: Any = None, *, raw: bytes | None = None, name: str = "c1-kubeconfig") -> dict[str, Any]:
    data = raw if raw is not None else yaml.safe_dump(doc if doc is not None else kubeconfig()).encode()
    return {"metadata": {"name": name, "namespace": "team-a", "resourceVersion": "7"},
            "data": {"value": base64.b64encode(data).decode()}}


def cluster(**spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "CloudSigmaCluster",
        "metadata": {"name": "c1", "namespace": "team-a", "uid": "uid-1", "resourceVersion": "5",
                     "labels": {"cluster.x-k8s.io/cluster-name": "c1", "other": "x"},
                     "managedFields": [{"manager": "capi"}]},
        "spec": {"region": "zrh", "userEmail": "Owner@Example.com", "vlan": {"cidr": "10.0.0.0/16"}},
        "status": {"ready": True},
    }
    obj["spec"].update(spec)
    obj["spec"] = {k: v for k, v in obj["spec"].items() if v is not None}
    return obj


def one_line_without_secret(exc: TenantError) -> str:
    text = str(exc)
    assert "\n" not in text
    assert SECRET_MARK not in text
    assert "client-key" not in text or "client-key'" in text  # a field name, never its value
    return text


# -- the CloudSigmaCluster ---------------------------------------------------------------------------------

def test_a_valid_cluster_and_secret_make_a_tenant() -> None:
    spec = parse_tenant(cluster(), secret())
    assert (spec.key, spec.cluster_name, spec.user_email, spec.region, spec.uid) == (
        "team-a/c1", "c1", "Owner@Example.com", "zrh", "uid-1")
    assert spec.credentials_key == ("owner@example.com", "zrh")
    assert spec.api_server == "https://10.0.0.1:6443"
    assert len(spec.kubeconfig_sha256) == 64
    assert kubeconfig_dict(spec) == kubeconfig()
    assert SECRET_MARK not in repr(spec), "the kubeconfig must never appear in a repr (logs, tracebacks)"


def test_cluster_name_from_the_owner_cluster_when_the_label_is_missing() -> None:
    obj = cluster()
    obj["metadata"]["labels"] = {}
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "noise"},
        {"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "name": "prod-1"},
    ]
    ref = parse_cluster(obj)
    assert (ref.cluster_name, ref.kubeconfig_secret) == ("prod-1", "prod-1-kubeconfig")


@pytest.mark.parametrize(("mutate", "error", "needle"), [
    (lambda o: o["spec"].pop("region"), InvalidCluster, "spec.region is empty: set it to the CloudSigma location"),
    (lambda o: o["spec"].update(region="Zürich 1"), InvalidCluster, "spec.region 'Zürich 1' is not a location id"),
    (lambda o: o["spec"].update(region=7), InvalidCluster, "spec.region is empty"),
    (lambda o: o["spec"].pop("userEmail"), InvalidCluster, "spec.userEmail is empty: set it to the cluster owner"),
    (lambda o: o["spec"].update(userEmail="  "), InvalidCluster, "spec.userEmail is empty"),
    (lambda o: (o["spec"].pop("userEmail"), o["spec"].update(userRef={"name": "owner"})), InvalidCluster,
     "spec.userRef is not read"),
    (lambda o: o["spec"].update(userEmail="owner at example.com"), InvalidCluster, "is not an email address"),
    (lambda o: o.pop("spec"), InvalidCluster, "spec.region is empty"),
    (lambda o: o["metadata"].pop("labels"), ClusterNotAdopted, "is missing and no Cluster owns it: wait for"),
    (lambda o: o["metadata"]["labels"].update({"cluster.x-k8s.io/cluster-name": "Bad_Name"}), InvalidCluster,
     "'Bad_Name' is not a Cluster name"),
    (lambda o: o["metadata"].update(ownerReferences=[{"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
                                                      "name": "other"}]),
     InvalidCluster, "'c1' differs from its owner Cluster 'other'"),
])
def test_a_bad_cluster_is_refused_with_a_one_line_fix(mutate: Any, error: type[TenantError], needle: str) -> None:
    obj = cluster()
    mutate(obj)
    with pytest.raises(error) as caught:
        parse_cluster(obj)
    text = one_line_without_secret(caught.value)
    assert text.startswith("CloudSigmaCluster team-a/c1: "), text
    assert needle in text, text
    assert caught.value.key == "team-a/c1"


# -- the kubeconfig Secret ---------------------------------------------------------------------------------

def _without(doc: dict[str, Any], path: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    del target[last]
    return doc


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = kubeconfig()
    *parents, last = path.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value
    return doc


@pytest.mark.parametrize(("obj", "error", "needle"), [
    (None, KubeconfigMissing, "Secret team-a/c1-kubeconfig: does not exist: wait for the control plane provider"),
    ({"metadata": {"name": "c1-kubeconfig"}, "data": {"other": "eA=="}}, KubeconfigMissing,
     "data.value is missing or empty"),
    ({"metadata": {"name": "c1-kubeconfig"}, "data": {"value": "%%%" + SECRET_MARK}}, InvalidKubeconfig,
     "data.value is not base64"),
    (secret(raw=b"clusters: [\n  - " + SECRET_MARK.encode() + b": {"), InvalidKubeconfig,
     "data.value is not YAML (line "),
    (secret(raw=b"a: \xc3\x28" + SECRET_MARK.encode()), InvalidKubeconfig, "is not YAML"),
    (secret(raw=SECRET_MARK.encode()), InvalidKubeconfig, "is not a kubeconfig (not a mapping)"),
    (secret(_without(kubeconfig(), "current-context")), InvalidKubeconfig, "has no current-context"),
    (secret(_with("current-context", "nope")), InvalidKubeconfig, "has no context named 'nope'"),
    (secret(_with("contexts.0.context.cluster", "nope")), InvalidKubeconfig, "names no existing cluster"),
    (secret(_with("contexts.0.context.user", "nope")), InvalidKubeconfig, "names no existing user"),
    (secret(_without(kubeconfig(), "clusters.0.cluster.server")), InvalidKubeconfig, "has no server URL"),
    (secret(_with("clusters.0.cluster.server", "ftp://x")), InvalidKubeconfig, "has no server URL"),
    (secret(_with("clusters.0.cluster.server", "https://h:99999")), InvalidKubeconfig, "malformed server URL"),
    (secret(_with("clusters.0.cluster.server", f"https://u:{SECRET_MARK}@h")), InvalidKubeconfig,
     "has credentials in its server URL"),
    (secret(_with("clusters.0.cluster.certificate-authority", "/etc/ca.pem")), InvalidKubeconfig,
     "refers to a file (cluster field 'certificate-authority'): inline it"),
    (secret(kubeconfig(tokenFile="/var/run/secrets/kubernetes.io/serviceaccount/token")), InvalidKubeconfig,
     "refers to a file (user field 'tokenFile')"),
    (secret(kubeconfig(**{"client-key": "/k.pem", "client-certificate-data": "x"})), InvalidKubeconfig,
     "user field 'client-key'"),
    (secret(kubeconfig(exec={"command": "sh", "args": ["-c", SECRET_MARK]})), InvalidKubeconfig,
     "uses a credential plugin (user field 'exec')"),
    (secret(kubeconfig(**{"auth-provider": {"name": "oidc"}})), InvalidKubeconfig, "user field 'auth-provider'"),
])
def test_a_bad_kubeconfig_secret_is_refused_without_echoing_it(obj: Any, error: type[TenantError],
                                                               needle: str) -> None:
    ref = parse_cluster(cluster())
    with pytest.raises(error) as caught:
        parse_kubeconfig_secret(obj, ref)
    text = one_line_without_secret(caught.value)
    assert text.startswith("Secret team-a/c1-kubeconfig: "), text
    assert needle in text, text


def test_a_token_user_and_an_anonymous_user_are_accepted() -> None:
    ref = parse_cluster(cluster())
    assert parse_kubeconfig_secret(secret(kubeconfig(token=SECRET_MARK)), ref).server == "https://10.0.0.1:6443"
    anonymous = _with("users.0.user", None)
    assert parse_kubeconfig_secret(secret(anonymous), ref).sha256


@PROPERTY
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_secret_content_is_a_kubeconfig_or_a_typed_error_that_does_not_quote_it(raw: bytes) -> None:
    ref = parse_cluster(cluster())
    marked = SECRET_MARK.encode() + raw
    for content in (raw, marked, raw + b"\n" + SECRET_MARK.encode()):
        try:
            parse_kubeconfig_secret(secret(raw=content), ref)
        except TenantError as exc:
            one_line_without_secret(exc)


@PROPERTY
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                                  max_size=4),
                    max_leaves=20),
       st.sampled_from(["spec", "metadata", "clusters", "users", "contexts", "current-context", "server"]))
def test_any_shape_in_any_place_gives_a_spec_or_a_typed_error(junk: Any, where: str) -> None:
    obj, doc = cluster(), kubeconfig()
    if where in ("spec", "metadata"):
        obj[where] = junk if where == "spec" else {**obj["metadata"], "labels": junk}
    elif where == "server":
        doc["clusters"][0]["cluster"]["server"] = junk
    else:
        doc[where] = junk
    try:
        parse_tenant(obj, secret(doc))
    except TenantError as exc:
        one_line_without_secret(exc)


# -- deciding what changed ---------------------------------------------------------------------------------

def test_changes_are_classified_by_field() -> None:
    base = parse_tenant(cluster(), secret())
    email = parse_tenant(cluster(userEmail="new@example.com"), secret())
    region = parse_tenant(cluster(region="fra"), secret())
    rotated = parse_tenant(cluster(), secret(kubeconfig(token="rotated")))
    assert changed_fields(base, email) == {"user_email"}
    assert changed_fields(base, region) == {"region"}
    assert changed_fields(base, rotated) == {"kubeconfig", "kubeconfig_sha256"}
    assert changed_fields(base, parse_tenant(cluster(), secret())) == frozenset()

    assert tenant_events("team-a/c1", None, None) == []
    assert [e.type for e in tenant_events("team-a/c1", None, base)] == [TenantEventType.ADDED]
    assert [e.type for e in tenant_events("team-a/c1", base, None)] == [TenantEventType.REMOVED]
    assert tenant_events("team-a/c1", base, parse_tenant(cluster(), secret())) == []
    [change] = tenant_events("team-a/c1", base, rotated)
    assert (change.type, change.old, change.new, change.fields) == (
        TenantEventType.CHANGED, base, rotated, {"kubeconfig", "kubeconfig_sha256"})


def test_a_recreated_cluster_is_removed_and_added_not_changed() -> None:
    base = parse_tenant(cluster(), secret())
    again = cluster()
    again["metadata"]["uid"] = "uid-2"
    recreated = parse_tenant(again, secret())
    assert [e.type for e in tenant_events("team-a/c1", base, recreated)] == [TenantEventType.REMOVED,
                                                                            TenantEventType.ADDED]


def test_desired_tenant_finds_the_secret_of_the_clusters_cluster_api_name() -> None:
    obj = cluster()
    obj["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"] = "prod-1"
    secrets = {"team-a/c1-kubeconfig": secret(), "team-a/prod-1-kubeconfig": secret(name="prod-1-kubeconfig")}
    spec = desired_tenant(obj, secrets)
    assert spec is not None and spec.cluster_name == "prod-1"
    assert desired_tenant(obj, secrets, selected=False) is None
    assert desired_tenant(None, secrets) is None
    with pytest.raises(KubeconfigMissing, match="Secret team-a/prod-1-kubeconfig: does not exist"):
        desired_tenant(obj, {})


def test_stored_objects_keep_only_what_is_read() -> None:
    obj = cluster()
    obj["metadata"]["ownerReferences"] = [{"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
                                           "name": "c1", "uid": "u", "controller": True}]
    slim = slim_cluster(obj)
    assert slim is not None
    assert "managedFields" not in slim["metadata"] and "status" not in slim and "vlan" not in slim["spec"]
    assert slim["metadata"]["labels"] == {"cluster.x-k8s.io/cluster-name": "c1"}
    assert parse_cluster(slim) == parse_cluster(obj)

    full = secret()
    full["data"]["tls.key"] = "eA=="
    full["metadata"]["annotations"] = {"a": "b"}
    kept = slim_secret(full)
    assert kept is not None and set(kept["data"]) == {"value"} and "annotations" not in kept["metadata"]
    assert slim_secret(secret(name="c1-ca")) is None, "only <cluster>-kubeconfig Secrets are kept"


async def test_a_failing_or_odd_handler_never_stops_the_others_nor_discovery() -> None:
    discovery = TenantDiscovery(cast(KubeTransport, object()))
    discovery.clusters.store["team-a/c1"] = cluster()
    discovery.secrets.store["team-a/c1-kubeconfig"] = secret()
    discovery.synced.set()
    received: list[TenantEvent] = []

    def broken(event: TenantEvent) -> None:
        raise RuntimeError("handler bug")

    discovery.add_handler(broken)
    discovery.add_handler(lambda event: 42)  # type: ignore[arg-type, return-value]  # returns a non-awaitable
    discovery.add_handler(received.append)
    with capture_logs() as logs:
        await discovery._touch(["team-a/c1"])
    assert [e.type for e in received] == [TenantEventType.ADDED]
    assert set(discovery.tenants) == {"team-a/c1"}
    failures = [e for e in logs if e["event"] == "tenant_handler_failed"]
    assert [(e["tenant"], e["change"]) for e in failures] == [("team-a/c1", "added")]
    assert not [e for e in logs if e["event"] == "tenant_evaluation_failed"]
