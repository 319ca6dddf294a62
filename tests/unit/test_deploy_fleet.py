"""deploy/fleet and the --cluster-ref overlay: rendered by the real kustomize, RBAC exactly the fleet's (and
--cluster-ref's) declared permissions, the pod as hardened as the single-tenant one, the env a valid fleet
configuration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ccm.config import Settings, env_name, load_settings, parse_duration
from ccm.kube.permissions import Permission, cluster_ref, fleet
from ccm.shutdown import ShutdownBudget
from tests.realenv.kustomize import find_object, render
from tests.unit.test_deploy_render import container, env_of, expected_rules, plain_env, pod_spec, rules_of

REPO = Path(__file__).resolve().parents[2]
FLEET = REPO / "deploy" / "fleet"
SELECTOR = FLEET / "namespace-selector"
CLUSTER_REF = REPO / "deploy" / "overlays" / "cluster-ref-example-tenant"
BASE = REPO / "deploy" / "base"
NAME = NAMESPACE = "cloudsigma-ccm-fleet"
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {"fleet": render(FLEET), "selector": render(SELECTOR), "cluster-ref": render(CLUSTER_REF),
            "base": render(BASE)}


def fleet_pod(objects: list[Obj]) -> Obj:
    spec: Obj = find_object(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    return spec


def fleet_container(objects: list[Obj]) -> Obj:
    (only,) = fleet_pod(objects)["containers"]
    result: Obj = only
    return result


def fleet_env(objects: list[Obj]) -> dict[str, Obj]:
    return {e["name"]: e for e in fleet_container(objects)["env"]}


def split(permissions: tuple[Permission, ...]) -> tuple[list[Permission], list[Permission]]:
    cluster_wide = [p for p in permissions if p.namespace is None]
    namespaced = [p for p in permissions if p.namespace is not None]
    return cluster_wide, namespaced


def test_objects_live_in_the_fleets_own_namespace(rendered: dict[str, list[Obj]]) -> None:
    ids = sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in rendered["fleet"])
    assert ids == sorted([("Namespace", NAME, None), ("ServiceAccount", NAME, NAMESPACE), ("Role", NAME, NAMESPACE),
                          ("RoleBinding", NAME, NAMESPACE), ("ClusterRole", NAME, None),
                          ("ClusterRoleBinding", NAME, None), ("Deployment", NAME, NAMESPACE),
                          ("PodDisruptionBudget", NAME, NAMESPACE)])
    namespace = find_object(rendered["fleet"], "Namespace", NAME)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize(("variant", "selector"), [("fleet", False), ("selector", True)])
def test_rbac_is_exactly_the_fleets_permissions(rendered: dict[str, list[Obj]], variant: str, selector: bool) -> None:
    objects = rendered[variant]
    cluster_wide, namespaced = split(fleet(NAMESPACE, namespace_selector=selector))
    granted: set[tuple[str, str, str, str | None]] = set()
    for role in (o for o in objects if o["kind"] == "ClusterRole"):
        granted |= rules_of(role)
    assert granted == expected_rules(cluster_wide)
    role = find_object(objects, "Role", NAME)
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rules_of(role) == expected_rules(namespaced)
    subject = {"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["subjects"] == [subject]
    assert pod_spec_sa(objects) == NAME
    # No get on Secrets: nothing reads a Secret by name (list/watch with a label selector only).
    assert ("", "secrets", "get", None) not in granted


def pod_spec_sa(objects: list[Obj]) -> str:
    return str(fleet_pod(objects)["serviceAccountName"])


def test_the_pod_is_as_hardened_as_the_single_tenant_one(rendered: dict[str, list[Obj]]) -> None:
    fleet_objects, base = rendered["fleet"], rendered["base"]
    assert fleet_pod(fleet_objects)["securityContext"] == pod_spec(base)["securityContext"]
    assert fleet_container(fleet_objects)["securityContext"] == container(base)["securityContext"]
    mounts = {m["mountPath"]: m for m in fleet_container(fleet_objects)["volumeMounts"]}
    assert {path for path, m in mounts.items() if not m.get("readOnly")} == {"/tmp"}
    assert not any("hostPath" in v for v in fleet_pod(fleet_objects)["volumes"])


def test_availability(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["fleet"]
    deployment = find_object(objects, "Deployment", NAME)
    assert deployment["spec"]["replicas"] >= 2
    pdb = find_object(objects, "PodDisruptionBudget", NAME)
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    env = {name: e["value"] for name, e in fleet_env(objects).items() if "value" in e}
    grace = fleet_pod(objects)["terminationGracePeriodSeconds"]
    assert parse_duration(env["CLOUDSIGMA_TERMINATION_GRACE_PERIOD"]) == grace
    assert ShutdownBudget(drain=Settings.model_fields["shutdown_timeout"].default).fits(grace)
    probes = fleet_container(objects)
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("CLOUDSIGMA_") or key in ("KUBECONFIG", "POD_NAMESPACE"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize("variant", ["fleet", "selector"])
def test_the_env_is_a_valid_fleet_configuration(rendered: dict[str, list[Obj]], clean_environ: pytest.MonkeyPatch,
                                                tmp_path: Path, variant: str) -> None:
    env = fleet_env(rendered[variant])
    settings_names = {env_name(f) for f in Settings.model_fields}
    assert set(env) - settings_names == {"POD_NAMESPACE"}
    fake = {("cloudsigma-impersonation", "oauth-url"): "https://auth.example.com/realms/cloudsigma",
            ("cloudsigma-impersonation", "client-id"): "cloudsigma-ccm"}
    secret = tmp_path / "client-secret"
    secret.write_text("s3cr3t\n")
    for name, entry in env.items():
        if "value" in entry:
            clean_environ.setenv(name, entry["value"])
        elif "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            clean_environ.setenv(name, fake[(ref["name"], ref["key"])])
        else:
            clean_environ.setenv(name, {"metadata.namespace": NAMESPACE, "metadata.name": "fleet-pod-a"}[
                entry["valueFrom"]["fieldRef"]["fieldPath"]])
    clean_environ.setenv("CLOUDSIGMA_CLIENT_SECRET_FILE", str(secret))
    settings = load_settings()
    assert settings.mode == "fleet" and settings.leader_elect_identity == "fleet-pod-a"
    assert settings.credential_chain == ["keycloak-token-exchange"]
    assert (settings.fleet_namespace_selector is not None) is (variant == "selector")


def test_cluster_ref_overlay_reads_exactly_its_cloudsigmacluster(rendered: dict[str, list[Obj]],
                                                                 clean_environ: pytest.MonkeyPatch) -> None:
    objects = rendered["cluster-ref"]
    env = plain_env(objects)
    namespace, _, name = env["CLOUDSIGMA_CLUSTER_REF"].partition("/")
    role = find_object(objects, "Role", "cloudsigma-ccm-cluster-ref")
    assert role["metadata"]["namespace"] == namespace
    assert rules_of(role) == expected_rules(cluster_ref(namespace, name))
    binding = find_object(objects, "RoleBinding", "cloudsigma-ccm-cluster-ref")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cloudsigma-ccm", "namespace": namespace}]
    assert not env.get("CLOUDSIGMA_USER_EMAIL") and not env.get("CLOUDSIGMA_REGION")
    assert set(env_of(objects)) >= {"CLOUDSIGMA_CLUSTER_REF", "CLOUDSIGMA_LEADER_ELECT"}
