"""deploy/tenant/token-broker(-namespace): exactly the token broker's declared permissions for its default target,
and only where it is chosen."""

from __future__ import annotations

from pathlib import Path

from ccm.config import DEFAULT_TOKEN_BROKER_TARGET, load_settings
from ccm.kube.permissions import TENANT, token_broker
from ccm.tokenbroker.wiring import token_broker_permissions
from tests.realenv.kustomize import find_object, render
from tests.unit.test_deploy_render import expected_rules, rules_of

TENANT_DIR = Path(__file__).resolve().parents[2] / "deploy" / "tenant"
NAME = "cloudsigma-ccm-token-broker"
NAMESPACE, SECRET = DEFAULT_TOKEN_BROKER_TARGET.split("/")
SUBJECTS = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "cloudsigma-ccm"}]


def test_component_grants_exactly_the_brokers_permissions_in_the_targets_namespace() -> None:
    objects = render(TENANT_DIR / "token-broker")
    assert sorted((o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in objects) == [
        ("Role", NAME, NAMESPACE), ("RoleBinding", NAME, NAMESPACE)]
    declared = token_broker([(NAMESPACE, SECRET)])
    assert rules_of(find_object(objects, "Role", NAME)) == expected_rules(declared)
    assert {p.namespace for p in declared} == {NAMESPACE}
    # get and update by name; create cannot be (the object does not exist when it is authorized).
    assert ("", "secrets", "get", SECRET) in expected_rules(declared)
    assert ("", "secrets", "update", SECRET) in expected_rules(declared)
    assert ("", "secrets", "create", None) in expected_rules(declared)
    assert not [p for p in declared if p.resource == "secrets" and p.verb in ("list", "watch", "delete", "patch")]
    binding = find_object(objects, "RoleBinding", NAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME}
    assert binding["subjects"] == SUBJECTS


def test_namespace_component_grants_only_creating_namespaces() -> None:
    objects = render(TENANT_DIR / "token-broker-namespace")
    name = f"{NAME}-namespace"
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", name), ("ClusterRoleBinding", name)]
    extra = set(token_broker([(NAMESPACE, SECRET)], create_namespace=True)) - set(token_broker([(NAMESPACE, SECRET)]))
    assert rules_of(find_object(objects, "ClusterRole", name)) == expected_rules(list(extra))
    assert find_object(objects, "ClusterRoleBinding", name)["subjects"] == SUBJECTS


def test_the_broker_is_off_unless_chosen_and_its_permissions_follow_the_settings() -> None:
    base = {"region": "zrh", "username": "a@example.com", "password": "pw"}
    assert load_settings(base).token_broker == []
    assert token_broker_permissions(load_settings(base)) == ()
    assert not [p for p in TENANT if p.resource in ("secrets", "namespaces")]
    for variant in (TENANT_DIR, TENANT_DIR / "without-deletion"):
        for obj in render(variant):
            for rule in obj.get("rules") or []:
                assert "secrets" not in rule["resources"], (variant, rule)
