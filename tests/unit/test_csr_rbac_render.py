"""deploy/tenant/csr-approval: exactly the CSR approver's declared permissions, and only where it is chosen."""

from __future__ import annotations

from pathlib import Path

from ccm.kube.permissions import TENANT, needed
from tests.realenv.kustomize import find_object, render
from tests.unit.test_deploy_render import expected_rules, rules_of

TENANT_DIR = Path(__file__).resolve().parents[2] / "deploy" / "tenant"
NAME = "cloudsigma-ccm-csr-approval"


def test_component_grants_exactly_the_approvers_permissions() -> None:
    objects = render(TENANT_DIR / "csr-approval")
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", NAME), ("ClusterRoleBinding", NAME)]
    approver = [p for p in TENANT if p.when == "csr-approval"]
    assert rules_of(find_object(objects, "ClusterRole", NAME)) == expected_rules(approver)
    # The signer rule is the one that can be scoped, and is: approving any other signer's CSR is refused.
    assert ("certificates.k8s.io", "signers", "approve", "kubernetes.io/kubelet-serving") in expected_rules(approver)
    binding = find_object(objects, "ClusterRoleBinding", NAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "cloudsigma-ccm"}]


def test_component_is_off_unless_chosen() -> None:
    assert not [p for p in needed(TENANT, deletion_enabled=True) if p.when == "csr-approval"]
    for variant in (TENANT_DIR, TENANT_DIR / "without-deletion"):
        objects = render(variant)
        assert not [o for o in objects if "csr" in o["metadata"]["name"]], variant
        for obj in objects:
            for rule in obj.get("rules") or []:
                assert "certificates.k8s.io" not in rule["apiGroups"], (variant, rule)
