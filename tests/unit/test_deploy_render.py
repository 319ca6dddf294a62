"""deploy/: the kustomizations render to what the CCM needs — and nothing more.

Rendered by the real kustomize (tests/realenv/kustomize.py: built once per machine from the Go module proxy by
scripts/build-kustomize.sh), exactly what ``kubectl apply -k`` applies. The RBAC is compared with the one list of
permissions the CCM's code declares and its requests are checked against (ccm/kube/permissions.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ccm.config import ConfigError, Settings, env_name, load_settings, parse_duration
from ccm.kube.permissions import EVENTS_NAMESPACE, TENANT, Permission, leader_election
from ccm.shutdown import ShutdownBudget
from credentials.clientauth import client_authentication_from
from tests.realenv.kustomize import find_object, render

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZATIONS = {
    "base": DEPLOY / "base",
    "overlay": DEPLOY / "overlays" / "example-tenant",
    "secretless": DEPLOY / "overlays" / "secretless-example-tenant",
    "tenant": DEPLOY / "tenant",
    "tenant-without-deletion": DEPLOY / "tenant" / "without-deletion",
}
NAME = "cloudsigma-ccm"
NAMESPACE = "cloudsigma-example-3415fbd3"
TENANT_USER = "cloudsigma-ccm"
KUBECONFIG_DIR = "/etc/cloudsigma-ccm/tenant"
EXTRA_ENV = {"POD_NAMESPACE"}  # read by the daemon directly (Lease namespace), not a setting

# Seed 000: the impersonation Secret and its keys; the legacy credentials Secret is optional. What is not secret
# comes as env vars from the Secrets; the secrets themselves come as files (re-read when the Secret is rotated).
SECRET_ENV = {
    "CLOUDSIGMA_OAUTH_URL": ("cloudsigma-impersonation", "oauth-url", False),
    "CLOUDSIGMA_CLIENT_ID": ("cloudsigma-impersonation", "client-id", False),
    "CLOUDSIGMA_USERNAME": ("cloudsigma-credentials", "username", True),
}
SECRET_FILES = {  # env var -> (path, Secret, key, optional)
    "CLOUDSIGMA_CLIENT_SECRET_FILE": ("/etc/cloudsigma-ccm/impersonation/client-secret", "cloudsigma-impersonation",
                                      "client-secret", False),
    "CLOUDSIGMA_PASSWORD_FILE": ("/etc/cloudsigma-ccm/credentials/password", "cloudsigma-credentials", "password",
                                 True),
}

Obj = dict[str, Any]
Rule = tuple[str, str, str, str | None]  # (apiGroup, resource, verb, resourceName)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(path) for name, path in KUSTOMIZATIONS.items()}


def deployment(objects: list[Obj]) -> Obj:
    return find_object(objects, "Deployment", NAME)


def pod_spec(objects: list[Obj]) -> Obj:
    spec: Obj = deployment(objects)["spec"]["template"]["spec"]
    return spec


def container(objects: list[Obj]) -> Obj:
    containers = pod_spec(objects)["containers"]
    assert [c["name"] for c in containers] == [NAME]
    result: Obj = containers[0]
    return result


def env_of(objects: list[Obj]) -> dict[str, Obj]:
    entries = container(objects)["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}


def plain_env(objects: list[Obj]) -> dict[str, str]:
    return {name: e["value"] for name, e in env_of(objects).items() if "value" in e}


def rules_of(role: Obj) -> set[Rule]:
    """Flatten RBAC rules; wildcards and non-resource URLs are refused outright."""
    out: set[Rule] = set()
    for rule in role.get("rules") or []:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        names: list[str | None] = list(rule.get("resourceNames") or [None])
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    out.update((group, resource, verb, name) for name in names)
    return out


# ------------------------------------------------------------------------------------------------ objects


def test_base_objects(rendered: dict[str, list[Obj]]) -> None:
    ids = sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in rendered["base"])
    assert ids == [(kind, NAME, None) for kind in
                   ("Deployment", "PodDisruptionBudget", "Role", "RoleBinding", "ServiceAccount")]


def test_overlay_sets_namespace_labels_and_image(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["overlay"]
    assert {o["kind"] for o in objects} == {o["kind"] for o in rendered["base"]}
    for obj in objects:
        assert obj["metadata"]["name"] == NAME  # no prefix: one CCM per tenant namespace
        assert obj["metadata"]["namespace"] == NAMESPACE
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == NAME
        assert labels["app.kubernetes.io/instance"] == "example"
    image = container(objects)["image"]
    assert image.endswith("/cloudsigma-ccm:0.1.0")
    assert container(rendered["base"])["image"] == "cloudsigma-ccm:latest"
    # Selectors stay those of the base (they are immutable on a Deployment).
    dep = deployment(objects)
    assert dep["spec"]["selector"] == deployment(rendered["base"])["spec"]["selector"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


# ------------------------------------------------------------------------------------------------ the pod


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_pod_security(rendered: dict[str, list[Obj]], variant: str) -> None:
    pod = pod_spec(rendered[variant])
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert (sc["runAsUser"], sc["runAsGroup"]) == (65532, 65532)
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = container(rendered[variant])["securityContext"]
    assert csc["runAsNonRoot"] is True
    assert (csc["runAsUser"], csc["runAsGroup"]) == (65532, 65532)
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc.get("privileged", False) is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")


def test_only_tmp_is_writable_and_the_kubeconfig_is_mounted_read_only(rendered: dict[str, list[Obj]]) -> None:
    pod = pod_spec(rendered["overlay"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container(rendered["overlay"])["volumeMounts"]}
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    assert writable == {"/tmp"}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert [name for name, v in volumes.items() if "emptyDir" in v] == [mounts["/tmp"]["name"]]
    kube = mounts[KUBECONFIG_DIR]
    assert "subPath" not in kube  # a rotated Secret must reach the pod
    secret = volumes[kube["name"]]["secret"]
    assert secret["secretName"] == "tenant-kubeconfig"
    assert secret["items"] == [{"key": "value", "path": "kubeconfig"}]
    assert secret["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == 65532
    assert plain_env(rendered["overlay"])["CLOUDSIGMA_KUBECONFIG"] == f"{KUBECONFIG_DIR}/kubeconfig"
    assert all("hostPath" not in v for v in volumes.values())


def test_probes_and_port(rendered: dict[str, list[Obj]]) -> None:
    c = container(rendered["overlay"])
    assert c["ports"] == [{"name": "metrics", "containerPort": 10258, "protocol": "TCP"}]
    bind = plain_env(rendered["overlay"]).get("CLOUDSIGMA_METRICS_BIND_ADDRESS",
                                              Settings.model_fields["metrics_bind_address"].default)
    assert bind.rpartition(":")[2] == "10258"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["args"] == ["run"]


def test_resources(rendered: dict[str, list[Obj]]) -> None:
    resources = container(rendered["overlay"])["resources"]
    assert resources == {"requests": {"cpu": "100m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}}


def test_availability(rendered: dict[str, list[Obj]]) -> None:
    dep = deployment(rendered["overlay"])
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    shutdown = Settings.model_fields["shutdown_timeout"].default
    assert isinstance(shutdown, float)
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["terminationGracePeriodSeconds"] > shutdown
    # The daemon checks its shutdown budget against the grace period it is told: it must be the pod's.
    env = plain_env(rendered["overlay"])
    assert parse_duration(env["CLOUDSIGMA_TERMINATION_GRACE_PERIOD"]) == pod["terminationGracePeriodSeconds"]
    drain = parse_duration(env.get("CLOUDSIGMA_SHUTDOWN_TIMEOUT", shutdown))
    assert ShutdownBudget(drain=drain).fits(pod["terminationGracePeriodSeconds"])
    assert {(t["key"], t["operator"], t["effect"]) for t in pod["tolerations"]} == {
        ("node.cloudprovider.kubernetes.io/uninitialized", "Exists", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "Exists", "NoSchedule"),
    }
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    preferred = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]
    assert [p["podAffinityTerm"]["topologyKey"] for p in preferred] == ["kubernetes.io/hostname"]
    assert preferred[0]["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    for spread in pod["topologySpreadConstraints"]:
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    pdb = find_object(rendered["overlay"], "PodDisruptionBudget", NAME)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]


# ------------------------------------------------------------------------------------------------ env


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_every_env_name_is_a_setting(rendered: dict[str, list[Obj]], variant: str) -> None:
    settings = {env_name(field) for field in Settings.model_fields}
    unknown = sorted(set(env_of(rendered[variant])) - settings - EXTRA_ENV)
    assert unknown == []


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_secret_references(rendered: dict[str, list[Obj]], variant: str) -> None:
    env = env_of(rendered[variant])
    refs = {}
    for name, entry in env.items():
        if "valueFrom" in entry and "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            refs[name] = (ref["name"], ref["key"], bool(ref.get("optional", False)))
    assert refs == SECRET_ENV
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # No secret in the environment (frozen until a restart, and visible in the pod spec's consumers): files only.
    assert not {"CLOUDSIGMA_CLIENT_SECRET", "CLOUDSIGMA_PASSWORD", "CLOUDSIGMA_STATIC_TOKEN"} & set(env)


@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_secrets_are_mounted_files_that_can_rotate(rendered: dict[str, list[Obj]], variant: str) -> None:
    plain = plain_env(rendered[variant])
    volumes = {v["name"]: v for v in pod_spec(rendered[variant])["volumes"]}
    mounts = {m["mountPath"]: m for m in container(rendered[variant])["volumeMounts"]}
    for name, (path, secret_name, key, optional) in SECRET_FILES.items():
        assert plain[name] == path
        directory, _, file_name = path.rpartition("/")
        mount = mounts[directory]
        assert mount.get("readOnly") is True and "subPath" not in mount  # a subPath mount never sees a rotation
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == secret_name
        assert secret["items"] == [{"key": key, "path": file_name}]  # only the key the CCM reads
        assert bool(secret.get("optional", False)) is optional
        assert secret["defaultMode"] == 0o440


def test_plain_env(rendered: dict[str, list[Obj]]) -> None:
    base = plain_env(rendered["base"])
    assert base["CLOUDSIGMA_IMPERSONATION_ENABLED"] == "true"
    assert base["CLOUDSIGMA_USER_EMAIL"] == "" and base["CLOUDSIGMA_REGION"] == ""  # the overlay's job
    overlay = plain_env(rendered["overlay"])
    assert overlay["CLOUDSIGMA_IMPERSONATION_ENABLED"] == "true"
    assert overlay["CLOUDSIGMA_USER_EMAIL"] == "owner@example.com"
    assert overlay["CLOUDSIGMA_REGION"] == "zrh"
    assert overlay["CLOUDSIGMA_CLUSTER_NAME"] == "example"
    assert overlay["CLOUDSIGMA_NODE_DELETION_ENABLED"] == "true"  # the example tenant binds the deletion role
    assert overlay["CLOUDSIGMA_LEADER_ELECT"] == "true"
    # Everything else of the base is kept by the patch.
    assert set(env_of(rendered["base"])) <= set(env_of(rendered["overlay"]))


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("CLOUDSIGMA_") or key in ("KUBECONFIG", "POD_NAMESPACE"):
            monkeypatch.delenv(key)
    return monkeypatch


def _pod_environment(objects: list[Obj], kubeconfig: Path, *, with_credentials: bool) -> dict[str, str]:
    """The env the container would see, with made-up Secret values and the kubeconfig at a local path."""
    fake = {
        ("cloudsigma-impersonation", "oauth-url"): "https://auth.example.com/realms/cloudsigma",
        ("cloudsigma-impersonation", "client-id"): "cloudsigma-ccm",
        ("cloudsigma-impersonation", "client-secret"): "s3cr3t",
        ("cloudsigma-credentials", "username"): "legacy@example.com",
        ("cloudsigma-credentials", "password"): "pw",
    }
    out: dict[str, str] = {}
    files = kubeconfig.parent / "secret-volumes"
    for name, entry in env_of(objects).items():
        if name in SECRET_FILES:
            _, secret_name, key, _ = SECRET_FILES[name]
            path = files / secret_name / key
            if secret_name != "cloudsigma-credentials" or with_credentials:  # an absent optional Secret: no file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(fake[(secret_name, key)] + "\n")
            out[name] = str(path)
        elif "value" in entry:
            out[name] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            if ref["name"] == "cloudsigma-credentials" and not with_credentials:
                continue
            out[name] = fake[(ref["name"], ref["key"])]
        elif "fieldRef" in entry.get("valueFrom", {}):
            out[name] = NAMESPACE
    out["CLOUDSIGMA_KUBECONFIG"] = str(kubeconfig)
    return out


@pytest.mark.parametrize("with_credentials", [False, True], ids=["impersonation-only", "with-legacy-secret"])
def test_overlay_env_is_a_valid_configuration(rendered: dict[str, list[Obj]], clean_environ: pytest.MonkeyPatch,
                                              tmp_path: Path, with_credentials: bool) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    for key, value in _pod_environment(rendered["overlay"], kubeconfig, with_credentials=with_credentials).items():
        clean_environ.setenv(key, value)
    settings = load_settings()
    assert settings.impersonation_enabled
    assert settings.user_email == "owner@example.com"
    assert settings.region == "zrh"
    assert settings.cluster_name == "example"
    assert settings.kubeconfig == kubeconfig
    assert settings.leader_elect and settings.node_deletion_enabled
    assert settings.credential_chain[0] == settings.impersonation_strategy
    assert ("password" in settings.credential_chain) is with_credentials


def test_base_alone_fails_fast(rendered: dict[str, list[Obj]], clean_environ: pytest.MonkeyPatch,
                               tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    for key, value in _pod_environment(rendered["base"], kubeconfig, with_credentials=False).items():
        clean_environ.setenv(key, value)
    with pytest.raises(ConfigError, match="CLOUDSIGMA_REGION"):
        load_settings()


def test_secretless_overlay_mounts_a_projected_token_and_no_client_secret(
        rendered: dict[str, list[Obj]], clean_environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    objects = rendered["secretless"]
    env = env_of(objects)
    referenced = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                  for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})}
    assert ("cloudsigma-impersonation", "client-secret") not in referenced
    assert not [n for n in env if "SECRET" in n]
    assert set(env) - {"CLOUDSIGMA_CLIENT_ASSERTION_FILE"} == set(env_of(rendered["overlay"])) - {
        "CLOUDSIGMA_CLIENT_SECRET_FILE"}
    # Nor is the client secret's Secret mounted at all.
    secrets = {v["secret"]["secretName"] for v in pod_spec(objects)["volumes"] if "secret" in v}
    assert "cloudsigma-impersonation" not in secrets
    token_path = Path(env["CLOUDSIGMA_CLIENT_ASSERTION_FILE"]["value"])
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    assert mounts["keycloak-token"]["readOnly"] is True
    assert token_path.parent == Path(mounts["keycloak-token"]["mountPath"])
    volume = {v["name"]: v for v in pod_spec(objects)["volumes"]}["keycloak-token"]
    (source,) = volume["projected"]["sources"]
    sa_token = source["serviceAccountToken"]
    assert sa_token["path"] == token_path.name
    # Keycloak accepts exactly one audience (its realm issuer) and, by default, assertions of at most 300 s;
    # Kubernetes issues at least 600 s: the identity provider's maximum must be raised (deploy/README.md).
    assert sa_token["audience"] == "https://auth.example.com/realms/cloudsigma"
    assert sa_token["expirationSeconds"] == 600
    assert pod_spec(objects)["serviceAccountName"] == NAME
    # The pod's environment is a valid configuration without any client secret.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    token_file = tmp_path / "token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    for key, value in _pod_environment(objects, kubeconfig, with_credentials=False).items():
        clean_environ.setenv(key, value)
    clean_environ.setenv("CLOUDSIGMA_CLIENT_ASSERTION_FILE", str(token_file))
    settings = load_settings()
    assert settings.client_secret is None and settings.client_secret_file is None
    assert settings.client_assertion_file == token_file
    # ... whose audience is the one the projected token is minted for.
    assert client_authentication_from(settings).describe()["client_assertion_audience"] == sa_token["audience"]


# ------------------------------------------------------------------------------------------------ RBAC


def expected_rules(permissions: tuple[Permission, ...] | list[Permission]) -> set[Rule]:
    return {(p.group, p.full_resource, p.verb, p.name) for p in permissions}


def test_management_cluster_rbac(rendered: dict[str, list[Obj]]) -> None:
    """The management Role grants leader election on the configured Lease: what ccm/leader.py does, nothing else."""
    objects = rendered["overlay"]
    lease_name = plain_env(objects).get("CLOUDSIGMA_LEADER_ELECT_RESOURCE_NAME",
                                        Settings.model_fields["leader_elect_resource_name"].default)
    assert lease_name == "cloudsigma-ccm"
    role = find_object(objects, "Role", NAME)
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rules_of(role) == expected_rules(leader_election(NAMESPACE, lease_name))
    binding = find_object(objects, "RoleBinding", NAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    sa = find_object(objects, "ServiceAccount", NAME)
    assert sa["automountServiceAccountToken"] is True
    assert pod_spec(objects)["serviceAccountName"] == NAME
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


# Where each part of TENANT is granted: cluster-scoped permissions in ClusterRoles, namespaced ones in a Role of
# their namespace (never cluster-wide).
CLUSTER_ROLE = "cloudsigma-ccm"
DELETION_ROLE = "cloudsigma-ccm-node-deletion"
EVENTS_ROLE = "cloudsigma-ccm-events"


def test_tenant_rbac_is_exactly_the_declared_permissions(rendered: dict[str, list[Obj]]) -> None:
    """ccm/kube/permissions.py TENANT is what the CCM's requests are checked against and what doctor asks about:
    deploy/tenant grants exactly that, each permission in the narrowest object RBAC allows."""
    objects = rendered["tenant"]
    assert sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", "")) for o in objects) == [
        ("ClusterRole", CLUSTER_ROLE, ""), ("ClusterRole", DELETION_ROLE, ""),
        ("ClusterRoleBinding", CLUSTER_ROLE, ""), ("ClusterRoleBinding", DELETION_ROLE, ""),
        ("Role", EVENTS_ROLE, EVENTS_NAMESPACE), ("RoleBinding", EVENTS_ROLE, EVENTS_NAMESPACE),
    ]
    cluster_wide = [p for p in TENANT if p.namespace is None]
    assert rules_of(find_object(objects, "ClusterRole", CLUSTER_ROLE)) == expected_rules(
        [p for p in cluster_wide if p.when == "always"])
    assert rules_of(find_object(objects, "ClusterRole", DELETION_ROLE)) == expected_rules(
        [p for p in cluster_wide if p.when == "deletion"])
    # The CSR approver's permissions are granted only by deploy/tenant/csr-approval (test_csr_rbac_render.py).
    namespaced = [p for p in TENANT if p.namespace is not None]
    assert {p.namespace for p in namespaced} == {EVENTS_NAMESPACE}
    assert rules_of(find_object(objects, "Role", EVENTS_ROLE)) == expected_rules(namespaced)
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for binding in (o for o in objects if o["kind"] == kind):
            name = binding["metadata"]["name"]
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name}
            assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                            "name": TENANT_USER}]
    # Nodes are cluster-scoped, so only a ClusterRole can grant them; nothing else is granted cluster-wide
    # (but for the opt-in CSR approver's and load balancer's permissions, in their own components).
    assert {p.resource for p in cluster_wide
            if p.when not in ("csr-approval", "load-balancer", "metallb")} == {"nodes"}


def test_tenant_rbac_drops_what_the_code_never_sends(rendered: dict[str, list[Obj]]) -> None:
    granted: set[Rule] = set()
    for obj in rendered["tenant"]:
        if obj["kind"] in ("ClusterRole", "Role"):
            granted |= rules_of(obj)
    assert ("", "nodes", "update", None) not in granted
    assert not [r for r in rules_of(find_object(rendered["tenant"], "ClusterRole", CLUSTER_ROLE))
                if r[1] == "events"]


def test_tenant_rbac_without_deletion(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["tenant-without-deletion"]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", CLUSTER_ROLE), ("ClusterRoleBinding", CLUSTER_ROLE),
        ("Role", EVENTS_ROLE), ("RoleBinding", EVENTS_ROLE)]
    assert objects == [o for o in rendered["tenant"] if not o["metadata"]["name"].endswith("-node-deletion")]


# ------------------------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomizations_render(rendered: dict[str, list[Obj]], name: str) -> None:
    objects = rendered[name]
    assert objects, name
    ids = [(o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------------------------------ README


def test_readme_names_what_the_manifests_use() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for text in ("cloudsigma-impersonation", "oauth-url", "client-id", "client-secret", "cloudsigma-credentials",
                 "tenant-kubeconfig", "--from-file=value=", NAMESPACE, "deploy/tenant/without-deletion",
                 "deploy/overlays/example-tenant", "CLOUDSIGMA_NODE_DELETION_ENABLED", "apply -k deploy/tenant\n",
                 "apply -k deploy/tenant/without-deletion\n", "apply -k deploy/overlays/example-tenant\n",
                 "create namespace cloudsigma-example-3415fbd3\n"):
        assert text in readme, text
