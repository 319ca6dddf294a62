"""Settings of the fleet mode and of --cluster-ref: what each mode needs, and one clear line for what it refuses."""

from __future__ import annotations

import os

import pytest

from ccm.cli import main
from ccm.config import ConfigError, load_settings
from ccm.fleet.manager import discovery_options, membership_options

FLEET = {"CLOUDSIGMA_MODE": "fleet", "CLOUDSIGMA_IMPERSONATION_ENABLED": "true",
         "CLOUDSIGMA_OAUTH_URL": "http://127.0.0.1:1/realms/cloudsigma", "CLOUDSIGMA_CLIENT_ID": "ccm",
         "CLOUDSIGMA_CLIENT_SECRET": "s3cr3t-value"}
SINGLE = {"CLOUDSIGMA_IMPERSONATION_ENABLED": "true", "CLOUDSIGMA_OAUTH_URL": "http://127.0.0.1:1/realms/cloudsigma",
          "CLOUDSIGMA_CLIENT_ID": "ccm", "CLOUDSIGMA_CLIENT_SECRET": "s3cr3t-value"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for key in list(os.environ):
        if key.startswith("CLOUDSIGMA_") or key == "KUBECONFIG":
            monkeypatch.delenv(key)

    def set_env(values: dict[str, str]) -> None:
        for k, v in values.items():
            monkeypatch.setenv(k, v)

    return set_env


def test_single_mode_is_the_default_and_unchanged(env) -> None:  # type: ignore[no-untyped-def]
    env(SINGLE | {"CLOUDSIGMA_REGION": "zrh", "CLOUDSIGMA_USER_EMAIL": "alice@example.com"})
    settings = load_settings()
    assert settings.mode == "single" and settings.cluster_ref is None
    with pytest.raises(ConfigError, match="CLOUDSIGMA_REGION / --region is required"):
        load_settings({"region": ""})


def test_fleet_mode_needs_no_region_owner_or_kubeconfig(env) -> None:  # type: ignore[no-untyped-def]
    env(FLEET | {"CLOUDSIGMA_FLEET_NAMESPACE_SELECTOR": "ccm=fleet", "CLOUDSIGMA_FLEET_TENANT_NAMESPACE": "tenants",
                 "CLOUDSIGMA_LEADER_ELECT_LEASE_DURATION": "12s", "CLOUDSIGMA_FLEET_MEMBER_FORGET_AFTER": "30m"})
    settings = load_settings()
    assert settings.region == "" and settings.user_email is None and settings.kubeconfig is None
    assert settings.credential_chain == ["keycloak-token-exchange"]
    assert settings.cloudsigma_requests_per_minute == 10_000 and settings.fleet_concurrent_node_syncs == 4
    discovery = discovery_options(settings)
    assert (discovery.namespace, discovery.namespace_selector, discovery.secret_selector) == (
        "tenants", "ccm=fleet", "cluster.x-k8s.io/cluster-name")
    members = membership_options(settings, namespace="fleet-ns", identity="pod-1")
    assert (members.namespace, members.identity, members.fleet) == ("fleet-ns", "pod-1", "cloudsigma-ccm")
    assert (members.lease_duration, members.renew_interval, members.forget_after) == (12.0, 4.0, 1800.0)


@pytest.mark.parametrize(("extra", "setting", "words"), [
    ({"CLOUDSIGMA_REGION": "zrh"}, "CLOUDSIGMA_REGION", "is a single-tenant setting"),
    ({"CLOUDSIGMA_USER_EMAIL": "alice@example.com"}, "CLOUDSIGMA_USER_EMAIL", "is a single-tenant setting"),
    ({"CLOUDSIGMA_CLUSTER_REF": "ns/c1"}, "CLOUDSIGMA_CLUSTER_REF", "is a single-tenant setting"),
    ({"CLOUDSIGMA_USERNAME": "ops@example.com", "CLOUDSIGMA_PASSWORD": "pw-123456"}, "CLOUDSIGMA_USERNAME",
     "single-tenant setting"),
    ({"CLOUDSIGMA_STATIC_TOKEN": "tok-1234567890"}, "CLOUDSIGMA_STATIC_TOKEN", "act as one CloudSigma user"),
    ({"CLOUDSIGMA_IMPERSONATION_ENABLED": "false"}, "CLOUDSIGMA_IMPERSONATION_ENABLED", "needs impersonation"),
    ({"CLOUDSIGMA_CREDENTIAL_CHAIN": "keycloak-token-exchange,password"}, "CLOUDSIGMA_CREDENTIAL_CHAIN",
     "must not list password"),
    ({"CLOUDSIGMA_LEADER_ELECT": "false"}, "CLOUDSIGMA_LEADER_ELECT", "each tenant is guarded by its own Lease"),
    ({"CLOUDSIGMA_FLEET_NAME": "Not_A_Label"}, "CLOUDSIGMA_FLEET_NAME", "is not usable"),
    ({"CLOUDSIGMA_FLEET_TENANT_NAMESPACE": "Bad_NS"}, "CLOUDSIGMA_FLEET_TENANT_NAMESPACE", "is not a namespace"),
])
def test_fleet_mode_refuses_what_it_would_ignore_or_misuse(env, capsys, extra: dict[str, str], setting: str,  # type: ignore[no-untyped-def]
                                                           words: str) -> None:
    env(FLEET | extra)
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and setting in err and words in err, err
    assert "pw-123456" not in err and "tok-1234567890" not in err


def test_cluster_ref_replaces_region_and_owner(env, capsys) -> None:  # type: ignore[no-untyped-def]
    env(SINGLE | {"CLOUDSIGMA_CLUSTER_REF": "team-a/prod-1"})
    settings = load_settings()
    assert settings.cluster_ref_parts == ("team-a", "prod-1") and settings.region == ""
    for bad in ("prod-1", "team-a/", "/prod-1", "Team/prod", "a/b/c"):
        env({"CLOUDSIGMA_CLUSTER_REF": bad})
        assert main(["run"]) == 2
        assert "CLOUDSIGMA_CLUSTER_REF / --cluster-ref must be namespace/name" in capsys.readouterr().err
    env({"CLOUDSIGMA_CLUSTER_REF": "team-a/prod-1", "CLOUDSIGMA_REGION": "zrh"})
    assert main(["run"]) == 2
    assert "CLOUDSIGMA_REGION / --region is read from the CloudSigmaCluster" in capsys.readouterr().err
