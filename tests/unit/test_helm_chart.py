"""deploy/helm/cloudsigma-ccm: the chart renders exactly the kustomize manifests of deploy/, object by object.

Both sides are rendered by the real tools (Helm v4 and kustomize, built once per machine from the Go module proxy:
scripts/build-helm.sh, scripts/build-kustomize.sh). Each pair below is a values file set of the chart and the
kustomization it must equal; deploy/'s RBAC is checked against ccm/kube/permissions.py (test_deploy_render.py,
test_deploy_fleet.py, tests/integration/test_deploy.py), so the chart's is too. Two differences are by design and
normalized away: the ``app.kubernetes.io/managed-by`` label (``Helm`` vs ``kustomize``), and the order of the
lists the API server merges by key (env and volumes by name, volumeMounts by path).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from ccm.chartdocs import render_readme, values_of
from ccm.config import load_settings
from ccm.tokenbroker.wiring import token_broker_permissions
from tests.realenv.helm import CHART, HelmError, helm, template
from tests.realenv.kustomize import find_object, object_id, render
from tests.unit.test_deploy_render import expected_rules, plain_env, rules_of

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXAMPLES = DEPLOY / "helm" / "examples"
TENANT_NS = "cloudsigma-example-3415fbd3"
FLEET_NS = "cloudsigma-ccm-fleet"

Obj = dict[str, Any]

# name -> (values files, kustomizations whose objects together are the chart's, release namespace)
PAIRS: dict[str, tuple[list[str], list[Path], str]] = {
    "base": ([], [DEPLOY / "base"], TENANT_NS),
    "example-tenant": (["example-tenant.yaml"], [DEPLOY / "overlays" / "example-tenant"], TENANT_NS),
    "secretless": (["example-tenant.yaml", "secretless-example-tenant.yaml"],
                   [DEPLOY / "overlays" / "secretless-example-tenant"], TENANT_NS),
    "cluster-ref": (["cluster-ref-example-tenant.yaml"], [DEPLOY / "overlays" / "cluster-ref-example-tenant"],
                    TENANT_NS),
    "fleet": (["fleet.yaml"], [DEPLOY / "fleet"], FLEET_NS),
    "fleet-namespace-selector": (["fleet.yaml", "fleet-namespace-selector.yaml"],
                                 [DEPLOY / "fleet" / "namespace-selector"], FLEET_NS),
    "tenant-rbac": (["tenant-rbac.yaml"], [DEPLOY / "tenant"], "kube-system"),
    "tenant-rbac-without-deletion": (["tenant-rbac.yaml", "tenant-rbac-without-deletion.yaml"],
                                     [DEPLOY / "tenant" / "without-deletion"], "kube-system"),
    "tenant-rbac-csr-approval": (["tenant-rbac.yaml", "tenant-rbac-csr-approval.yaml"],
                                 [DEPLOY / "tenant", DEPLOY / "tenant" / "csr-approval"], "kube-system"),
    "tenant-rbac-load-balancer": (["tenant-rbac.yaml", "tenant-rbac-load-balancer.yaml"],
                                  [DEPLOY / "tenant", DEPLOY / "tenant" / "load-balancer"], "kube-system"),
    "tenant-rbac-token-broker": (["tenant-rbac.yaml", "tenant-rbac-token-broker.yaml"],
                                 [DEPLOY / "tenant", DEPLOY / "tenant" / "token-broker"], "kube-system"),
    "tenant-rbac-token-broker-namespace": (
        ["tenant-rbac.yaml", "tenant-rbac-token-broker.yaml", "tenant-rbac-token-broker-namespace.yaml"],
        [DEPLOY / "tenant", DEPLOY / "tenant" / "token-broker", DEPLOY / "tenant" / "token-broker-namespace"],
        "kube-system"),
}


def chart_objects(name: str) -> list[Obj]:
    files, _, namespace = PAIRS[name]
    return template([EXAMPLES / f for f in files], namespace=namespace)


def kustomize_objects(name: str, tmp_path: Path) -> list[Obj]:
    _, directories, namespace = PAIRS[name]
    if name == "base":
        # deploy/base leaves the namespace to its overlay; a minimal one sets what `helm install -n` sets.
        overlay = tmp_path / "namespaced-base"
        overlay.mkdir()
        base = os.path.relpath(DEPLOY / "base", overlay)
        (overlay / "kustomization.yaml").write_text(f"namespace: {namespace}\nresources:\n  - {base}\n")
        return render(overlay)
    return [obj for directory in directories for obj in render(directory)]


def normalized(obj: Obj) -> Obj:
    """``obj`` without what differs by design (see the module docstring)."""
    out = copy.deepcopy(obj)
    (out.get("metadata", {}).get("labels") or {}).pop("app.kubernetes.io/managed-by", None)
    pod = out.get("spec", {}).get("template", {}).get("spec")
    if pod:
        pod["volumes"] = sorted(pod.get("volumes", []), key=lambda v: v["name"])
        for container in pod.get("containers", []):
            container["env"] = sorted(container.get("env", []), key=lambda e: e["name"])
            container["volumeMounts"] = sorted(container.get("volumeMounts", []), key=lambda m: m["mountPath"])
    return out


def by_id(objects: list[Obj]) -> dict[tuple[str, str, str, str], Obj]:
    out = {object_id(o): normalized(o) for o in objects}
    assert len(out) == len(objects), "an object is rendered twice"
    return out


@pytest.mark.parametrize("name", list(PAIRS))
def test_chart_renders_what_kustomize_renders(name: str, tmp_path: Path) -> None:
    chart = chart_objects(name)
    kustomize = kustomize_objects(name, tmp_path)
    assert chart, "the chart rendered nothing"
    ours, theirs = by_id(chart), by_id(kustomize)
    assert sorted(ours) == sorted(theirs), "the chart and kustomize render different objects"
    for key, obj in ours.items():
        assert obj == theirs[key], key
    for obj in chart:
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm", object_id(obj)


def test_the_comparison_can_fail(tmp_path: Path) -> None:
    """One changed value changes one object, and the comparison sees it (it is not vacuous)."""
    changed = by_id(template([EXAMPLES / "example-tenant.yaml"], namespace=TENANT_NS, set_values=["region=fra"]))
    theirs = by_id(kustomize_objects("example-tenant", tmp_path))
    different = [key for key in theirs if changed[key] != theirs[key]]
    assert [key[1] for key in different] == ["Deployment"]


def test_one_replica_has_no_disruption_budget() -> None:
    """A PodDisruptionBudget with minAvailable 1 over one replica would block every drain."""
    kinds = {o["kind"] for o in template(set_values=["replicas=1"], namespace=TENANT_NS)}
    assert "PodDisruptionBudget" not in kinds and "Deployment" in kinds


@pytest.mark.parametrize(("set_values", "message"), [
    (["mode=fleets"], 'mode must be single-tenant or fleet, not "fleets"'),
    (["csrApproval=yes"], 'csrApproval must be off, approve or approve-or-deny, not "yes"'),
    (["secretless.enabled=true"], "secretless.audience is required"),
    (["clusterRef=example"], "clusterRef must be namespace/name"),
    (["loadBalancer=metallb"], "clusterName is required with loadBalancer"),
    (["tokenBroker.enabled=true", "tokenBroker.targets={cloudsigma-token}"],
     'tokenBroker.targets must be namespace/secret names, e.g. .*, not "cloudsigma-token"'),
    (["tokenBroker.enabled=true", "tokenBroker.targets={a/x,a/x}"], "tokenBroker.targets names a target twice"),
    (["tokenBroker.enabled=true", "tokenBroker.targets=null"], "tokenBroker.targets must name at least one"),
])
def test_bad_values_fail_with_a_clear_error(set_values: list[str], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        template(set_values=set_values)


def test_token_broker_targets_set_the_env_and_exactly_their_permissions() -> None:
    """Targets beyond the kustomize component's one (several per namespace, several namespaces): the Deployment's
    CLOUDSIGMA_TOKEN_BROKER is what the CCM parses back to them, and the tenant RBAC is one Role per namespace with
    exactly ccm/kube/permissions.py's token_broker() for those settings."""
    targets = ["cloudsigma-csi/cloudsigma-token", "cloudsigma-csi/other-token", "backup/cloudsigma-token"]
    objects = template(namespace=TENANT_NS, set_values=[
        "components.tenantRBAC=true", "tokenBroker.enabled=true", "tokenBroker.createNamespace=true",
        "tokenBroker.targets={" + ",".join(targets) + "}"])
    env = plain_env(objects)
    settings = load_settings({"region": "zrh", "user_email": "owner@example.com", "impersonation_enabled": True,
                              "oauth_url": "https://auth.example.com/realms/cloudsigma", "client_id": "ccm",
                              "client_secret": "s", "token_broker": env["CLOUDSIGMA_TOKEN_BROKER"],
                              "token_broker_create_namespace": env["CLOUDSIGMA_TOKEN_BROKER_CREATE_NAMESPACE"]})
    assert settings.token_broker == targets and settings.token_broker_create_namespace
    declared = token_broker_permissions(settings)
    name = "cloudsigma-ccm-token-broker"
    roles = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == name}
    assert sorted(roles) == ["backup", "cloudsigma-csi"]
    for namespace, role in roles.items():
        assert rules_of(role) == expected_rules([p for p in declared if p.namespace == namespace]), namespace
        binding = find_object([o for o in objects if o["metadata"].get("namespace") == namespace], "RoleBinding", name)
        assert binding["roleRef"]["name"] == name
    cluster_wide = [p for p in declared if p.namespace is None]
    assert rules_of(find_object(objects, "ClusterRole", f"{name}-namespace")) == expected_rules(cluster_wide)
    off = plain_env(template(namespace=TENANT_NS, set_values=["tokenBroker.createNamespace=true"]))
    assert not [key for key in off if key.startswith("CLOUDSIGMA_TOKEN_BROKER")]


@pytest.mark.parametrize("name", list(PAIRS))
def test_helm_lint_strict(name: str) -> None:
    files, _, namespace = PAIRS[name]
    args = ["lint", "--strict", str(CHART), "--namespace", namespace]
    for f in files:
        args += ["--values", str(EXAMPLES / f)]
    proc = helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


def test_values_table_is_current() -> None:
    """The table between the markers is exactly what ``make docs`` (python -m ccm.chartdocs) writes."""
    text = (CHART / "README.md").read_text()
    assert render_readme(text) == text, "the chart README's values table is out of date: run `make docs`"


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    assert [v.key for v in values_of(text)][:3] == ["mode", "components.ccm", "components.tenantRBAC"]
    with pytest.raises(ValueError, match="without a '# --' description: replicas"):
        values_of(text.replace("# -- Replicas.", "# Replicas."))


def test_readme_links_the_chart_the_monitoring_and_the_migration() -> None:
    readme = (REPO / "README.md").read_text()
    for target in ("deploy/helm/cloudsigma-ccm/README.md", "deploy/monitoring/README.md", "docs/operations.md",
                   "deploy/README.md#migrating-from-the-kube-dc-ccm"):
        assert target in readme, target
