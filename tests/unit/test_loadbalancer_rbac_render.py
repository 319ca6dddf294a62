"""deploy/tenant/load-balancer: exactly the load-balancer controller's declared permissions, only where chosen."""

from __future__ import annotations

from pathlib import Path

from ccm.kube.permissions import TENANT, needed
from tests.realenv.kustomize import find_object, render
from tests.unit.test_deploy_render import expected_rules, rules_of

TENANT_DIR = Path(__file__).resolve().parents[2] / "deploy" / "tenant"


def test_component_grants_exactly_the_controllers_permissions() -> None:
    objects = render(TENANT_DIR / "load-balancer")
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", "cloudsigma-ccm-load-balancer"), ("ClusterRoleBinding", "cloudsigma-ccm-load-balancer"),
        ("Role", "cloudsigma-ccm-metallb"), ("RoleBinding", "cloudsigma-ccm-metallb")]
    assert rules_of(find_object(objects, "ClusterRole", "cloudsigma-ccm-load-balancer")) == expected_rules(
        [p for p in TENANT if p.when == "load-balancer"])
    role = find_object(objects, "Role", "cloudsigma-ccm-metallb")
    assert role["metadata"]["namespace"] == "metallb-system"
    assert rules_of(role) == expected_rules([p for p in TENANT if p.when == "metallb"])


def test_component_is_off_unless_chosen() -> None:
    off = needed(TENANT, deletion_enabled=True)
    assert not [p for p in off if p.when in ("load-balancer", "metallb")]
    kube_vip = needed(TENANT, deletion_enabled=True, load_balancer="kube-vip")
    assert [p for p in kube_vip if p.resource == "services"] and not [p for p in kube_vip if p.when == "metallb"]
    for obj in render(TENANT_DIR):
        for rule in obj.get("rules") or []:
            assert "services" not in rule["resources"] and "metallb.io" not in rule["apiGroups"], rule
