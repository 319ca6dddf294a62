"""deploy/tenant/csr-approval: exactly what the CSR approver does, and only where it is chosen."""

from __future__ import annotations

from pathlib import Path

from ccm.csr.apply import CSRS
from ccm.csr.request import KUBELET_SERVING
from tests.realenv.kustomize import find_object, render
from tests.unit.test_deploy_render import compare_with_kubectl, rules_of

TENANT = Path(__file__).resolve().parents[2] / "deploy" / "tenant"
NAME = "cloudsigma-ccm-csr-approval"


def test_component_grants_exactly_the_approvers_calls() -> None:
    objects = render(TENANT / "csr-approval")
    compare_with_kubectl(TENANT / "csr-approval", objects)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", NAME), ("ClusterRoleBinding", NAME)]
    group = CSRS.split("/")[2]
    assert rules_of(find_object(objects, "ClusterRole", NAME)) == {
        (group, "certificatesigningrequests", "get", None),  # re-read after a conflict
        (group, "certificatesigningrequests", "list", None),
        (group, "certificatesigningrequests", "watch", None),
        (group, "certificatesigningrequests/approval", "update", None),
        (group, "signers", "approve", KUBELET_SERVING),  # this signer only
    }
    binding = find_object(objects, "ClusterRoleBinding", NAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME}
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "cloudsigma-ccm"}]


def test_component_is_off_unless_chosen() -> None:
    for variant in (TENANT, TENANT / "without-deletion"):
        objects = render(variant)
        assert not [o for o in objects if "csr" in o["metadata"]["name"]], variant
        for obj in objects:
            for rule in obj.get("rules") or []:
                assert "certificates.k8s.io" not in rule["apiGroups"], (variant, rule)
