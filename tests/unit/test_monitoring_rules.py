"""deploy/monitoring: the alert rules pass ``promtool check rules`` and, per alert, ``promtool test rules`` with a
case where it fires and one where it stays silent — both fed with series shaped like the daemon's /metrics (the
same names and label names as ccm/metrics.py exports, plus the target labels Prometheus adds; the live scrape is
checked in tests/integration/test_monitoring.py).

promtool is the real one (tests/realenv/promtool.py: Prometheus built from the Go module proxy, cached per
machine). The rules file is the PrometheusRule's spec, cut out at test time: one source.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from ccm.metrics import MetricFamilies
from tests.promql_names import queried_metrics
from tests.realenv.kustomize import render
from tests.realenv.promtool import promtool

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
OPERATIONS = REPO / "docs" / "operations.md"

#: What the scrape adds to every series (podmonitor.yaml): not the daemon's labels.
TARGET = {"job": "cloudsigma-ccm", "instance": "10.42.0.17:10258", "namespace": "tenant-a",
          "pod": "cloudsigma-ccm-5d8f7c9b6-x2x7q"}
STANDBY = {**TARGET, "instance": "10.42.1.9:10258", "pod": "cloudsigma-ccm-5d8f7c9b6-qk4zp"}
FLEET_A = {**TARGET, "namespace": "cloudsigma-ccm-fleet", "pod": "cloudsigma-ccm-fleet-7c9f-abcde"}
FLEET_B = {**FLEET_A, "instance": "10.42.1.9:10258", "pod": "cloudsigma-ccm-fleet-7c9f-fghij"}
CLUSTER = "example"
TENANT = "tenants/example"


def series(name: str, target: dict[str, str], **labels: str) -> str:
    items = {**target, **labels}
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in items.items()) + "}"


@dataclass
class Case:
    """Input series (selector -> promtool values notation, one sample a minute), when to look (``<n>m``), and the
    alerts' labels expected then (besides alertname and severity); an empty ``fires`` is the silent case, checked
    at every minute up to ``at``."""

    series: dict[str, str]
    at: str
    fires: list[dict[str, str]] = field(default_factory=list)


N = "node"
REQ = "cloudsigma_api_requests_total"
SERVERS = {"endpoint": "servers/detail", "method": "GET"}

CASES: dict[str, tuple[Case, Case]] = {
    "CloudSigmaCCMNodesUninitialized": (
        Case({series("cloudsigma_ccm_nodes_uninitialized", TARGET, cluster=CLUSTER): "0 2x20",
              series("cloudsigma_ccm_nodes_uninitialized", STANDBY, cluster=CLUSTER): "0x20"},
             "17m", [{"namespace": "tenant-a", "cluster": CLUSTER}]),
        # A scale-up: nodes come and are initialized within a minute each.
        Case({series("cloudsigma_ccm_nodes_uninitialized", TARGET, cluster=CLUSTER):
              "0 3 0 0 2 0 0 1 0 0 5 0 0 0 1 0 0 2 0 0 0"}, "17m"),
    ),
    "CloudSigmaCCMNodeInitializationBlocked": (
        Case({series("cloudsigma_ccm_reconciles_total", TARGET, cluster=CLUSTER, controller=N, result="blocked"):
              "0+2x30",
              series("cloudsigma_ccm_nodes_uninitialized", TARGET, cluster=CLUSTER): "1x30"},
             "15m", [{"namespace": "tenant-a", "cluster": CLUSTER}]),
        # Blocked reconciles of initialized nodes (e.g. an address problem) hold no node back: not this alert.
        Case({series("cloudsigma_ccm_reconciles_total", TARGET, cluster=CLUSTER, controller=N, result="blocked"):
              "0+2x30",
              series("cloudsigma_ccm_nodes_uninitialized", TARGET, cluster=CLUSTER): "0x30"}, "15m"),
    ),
    "CloudSigmaCCMCredentialFallbackInUse": (
        Case({series("cloudsigma_ccm_credential_provider_active", TARGET, provider="keycloak-token-exchange"):
              "1 1 0x30",
              series("cloudsigma_ccm_credential_provider_active", TARGET, provider="password"): "_ _ 1x30",
              series("cloudsigma_ccm_credential_fallbacks_total", TARGET, provider="keycloak-token-exchange",
                     reason="timeout"): "0 0 1 1 2x27"},
             "15m", [{"namespace": "tenant-a", "pod": TARGET["pod"], "provider": "password"}]),
        # A CCM configured with the password alone: it never fell back, nothing to say.
        Case({series("cloudsigma_ccm_credential_provider_active", TARGET, provider="password"): "1x30"}, "15m"),
    ),
    "CloudSigmaCCMWrongAccount": (
        Case({series("cloudsigma_ccm_wrong_account", TARGET, cluster=CLUSTER): "0 0 1x20"},
             "10m", [{"namespace": "tenant-a", "cluster": CLUSTER}]),
        Case({series("cloudsigma_ccm_wrong_account", TARGET, cluster=CLUSTER): "0 1 1 0x20"}, "10m"),
    ),
    "CloudSigmaCCMTokenVerificationFailures": (
        Case({series("cloudsigma_ccm_token_verifications_total", TARGET, provider="keycloak-token-exchange",
                     result="token_unknown_key"): "0+1x30"},
             "20m", [{"namespace": "tenant-a", "pod": TARGET["pod"], "result": "token_unknown_key"}]),
        # One failure during a key rotation, verified tokens before and after.
        Case({series("cloudsigma_ccm_token_verifications_total", TARGET, provider="keycloak-token-exchange",
                     result="token_unknown_key"): "0 0 1x28",
              series("cloudsigma_ccm_token_verifications_total", TARGET, provider="keycloak-token-exchange",
                     result="verified"): "0+3x30"}, "12m"),
    ),
    "CloudSigmaCCMImpersonationSubjectMismatch": (
        Case({series("cloudsigma_ccm_impersonation_subject_mismatches_total", TARGET,
                     provider="keycloak-token-exchange"): "0 0 1x20"},
             "3m", [{"namespace": "tenant-a", "pod": TARGET["pod"]}]),
        Case({series("cloudsigma_ccm_impersonation_subject_mismatches_total", TARGET,
                     provider="keycloak-token-exchange"): "0x20"}, "3m"),
    ),
    "CloudSigmaCCMNoLeader": (
        Case({series("cloudsigma_ccm_leader", TARGET, cluster=CLUSTER): "1 1 1 0x10",
              series("cloudsigma_ccm_leader", STANDBY, cluster=CLUSTER): "0x13"},
             "8m", [{"namespace": "tenant-a", "cluster": CLUSTER}]),
        # A handover: one minute without a leader.
        Case({series("cloudsigma_ccm_leader", TARGET, cluster=CLUSTER): "1 1 1 0x10",
              series("cloudsigma_ccm_leader", STANDBY, cluster=CLUSTER): "0 0 0 0 1x9"}, "8m"),
    ),
    "CloudSigmaCCMLeaderFlapping": (
        Case({series("cloudsigma_ccm_leader", TARGET, cluster=CLUSTER): " ".join(["1 1 1 1 1 0 0 0 0 0"] * 7),
              series("cloudsigma_ccm_leader", STANDBY, cluster=CLUSTER): " ".join(["0 0 0 0 0 1 1 1 1 1"] * 7)},
             "65m", [{"namespace": "tenant-a", "cluster": CLUSTER}]),
        # A rolling update: two handovers in the hour.
        Case({series("cloudsigma_ccm_leader", TARGET, cluster=CLUSTER): "1x30 0x10 1x25",
              series("cloudsigma_ccm_leader", STANDBY, cluster=CLUSTER): "0x30 1x10 0x25"}, "65m"),
    ),
    "CloudSigmaCCMCloudSigmaErrors": (
        Case({series(REQ, TARGET, cluster=CLUSTER, **SERVERS, code="200"): "0+10x40",
              series(REQ, TARGET, cluster=CLUSTER, **SERVERS, code="503"): "0+3x40",
              series(REQ, TARGET, cluster=CLUSTER, **SERVERS, code="TimeoutError"): "0+2x40"},
             "30m", [{"namespace": "tenant-a", "cluster": CLUSTER}]),
        # 404s are how deleted servers answer, not errors.
        Case({series(REQ, TARGET, cluster=CLUSTER, **SERVERS, code="200"): "0+10x40",
              series(REQ, TARGET, cluster=CLUSTER, endpoint="servers/{uuid}", method="GET", code="404"):
              "0+5x40"}, "30m"),
    ),
    "CloudSigmaCCMCloudSigmaRateLimited": (
        Case({series(REQ, TARGET, cluster=CLUSTER, **SERVERS, code="200"): "0+10x40",
              series(REQ, TARGET, cluster=CLUSTER, **SERVERS, code="429"): "0+2x40"},
             "30m", [{"namespace": "tenant-a", "cluster": CLUSTER}]),
        # One burst of 429s while many nodes joined.
        Case({series(REQ, TARGET, cluster=CLUSTER, **SERVERS, code="200"): "0+10x40",
              series(REQ, TARGET, cluster=CLUSTER, **SERVERS, code="429"): "0 0 0 6 6x37"}, "30m"),
    ),
    "CloudSigmaCCMFleetTenantFailing": (
        Case({series("cloudsigma_ccm_tenant_failures_total", FLEET_A, cluster=TENANT): "0 1 2 3 4 5 6x30"},
             "12m", [{"namespace": "cloudsigma-ccm-fleet", "cluster": TENANT}]),
        # One failure (the tenant's API restarted), then it recovered.
        Case({series("cloudsigma_ccm_tenant_failures_total", FLEET_A, cluster=TENANT): "0 1 1x30"}, "12m"),
    ),
    "CloudSigmaCCMFleetTenantsUnserved": (
        Case({series("cloudsigma_ccm_fleet_tenants", FLEET_A, state="known"): "3x20",
              series("cloudsigma_ccm_fleet_tenants", FLEET_B, state="known"): "3x20",
              series("cloudsigma_ccm_fleet_tenants", FLEET_A, state="served"): "2 1x19",
              series("cloudsigma_ccm_fleet_tenants", FLEET_B, state="served"): "1x20"},
             "10m", [{"namespace": "cloudsigma-ccm-fleet"}]),
        # A replica leaves; the other takes its tenants within a minute.
        Case({series("cloudsigma_ccm_fleet_tenants", FLEET_A, state="known"): "3x20",
              series("cloudsigma_ccm_fleet_tenants", FLEET_B, state="known"): "3 3 _x18",
              series("cloudsigma_ccm_fleet_tenants", FLEET_A, state="served"): "2 2 2 3x17",
              series("cloudsigma_ccm_fleet_tenants", FLEET_B, state="served"): "1 1 _x18"}, "10m"),
    ),
    "CloudSigmaCCMFleetTenantInvalid": (
        Case({series("cloudsigma_ccm_fleet_tenants", FLEET_A, state="invalid"): "1x30"},
             "20m", [{"namespace": "cloudsigma-ccm-fleet"}]),
        # A cluster being created: its kubeconfig Secret shows up after a few minutes.
        Case({series("cloudsigma_ccm_fleet_tenants", FLEET_A, state="invalid"): "1 1 1 1 0x26"}, "20m"),
    ),
}

_SERIES = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\}$')
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>[^"]*)"')
_TEMPLATE = re.compile(r"{{\s*\$labels\.(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*}}")


def rules() -> list[dict[str, Any]]:
    """Every alerting rule of the PrometheusRule."""
    spec = yaml.safe_load(RULE.read_text())["spec"]
    return [rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule]


def rule(alert: str) -> dict[str, Any]:
    return next(r for r in rules() if r["alert"] == alert)


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rules")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(RULE.read_text())["spec"], sort_keys=False))
    return path


def annotations(alert: str, labels: dict[str, str]) -> dict[str, str]:
    """The rule's annotations for an alert with ``labels``: they use only ``{{ $labels.x }}`` (asserted)."""
    out = {}
    for key, text in rule(alert)["annotations"].items():
        filled = _TEMPLATE.sub(lambda m: labels[m["label"]], text)
        assert "{{" not in filled, f"{alert} {key}: only {{{{ $labels.* }}}} templates, please"
        out[key] = filled
    return out


def promtool_tests(alert: str, cases: tuple[Case, ...]) -> dict[str, Any]:
    groups = []
    for case in cases:
        expected = []
        for fired in case.fires:
            labels = {**fired, "alertname": alert, "severity": rule(alert)["labels"]["severity"]}
            expected.append({"exp_labels": {k: v for k, v in labels.items() if k != "alertname"},
                             "exp_annotations": annotations(alert, labels)})
        # A firing case is checked at ``at``; a silent one at every evaluation up to it (never pending long enough).
        times = [case.at] if case.fires else [f"{m}m" for m in range(int(case.at.removesuffix("m")) + 1)]
        groups.append({"interval": "1m",
                       "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                       "alert_rule_test": [{"eval_time": t, "alertname": alert, "exp_alerts": expected}
                                           for t in times]})
    return {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": groups}




def test_rules_pass_promtool_check(rules_file: Path) -> None:
    proc = promtool("check", "rules", str(rules_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout, proc.stdout


def test_every_alert_has_cases_a_runbook_and_a_severity() -> None:
    alerts = [r["alert"] for r in rules()]
    assert sorted(alerts) == sorted(CASES)
    headings = re.findall(r"^## (\S+)$", OPERATIONS.read_text(), flags=re.MULTILINE)
    for r in rules():
        assert r["alert"] in headings, f"docs/operations.md has no runbook for {r['alert']}"
        assert r["annotations"]["runbook"] == f"docs/operations.md#{r['alert'].lower()}"
        assert r["labels"]["severity"] in ("warning", "critical")


@pytest.mark.parametrize("alert", list(CASES))
def test_alert_fires_and_stays_silent(alert: str, rules_file: Path) -> None:
    firing, silent = CASES[alert]
    assert firing.fires and not silent.fires
    path = rules_file.parent / f"{alert}_test.yaml"
    path.write_text(yaml.safe_dump(promtool_tests(alert, (firing, silent)), sort_keys=False))
    proc = promtool("test", "rules", path.name, cwd=rules_file.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_wrong_expectation_fails(rules_file: Path) -> None:
    """The harness can fail: the silent case of one alert, expected to fire, is a promtool failure."""
    firing, silent = CASES["CloudSigmaCCMNoLeader"]
    path = rules_file.parent / "wrong_test.yaml"
    path.write_text(yaml.safe_dump(promtool_tests("CloudSigmaCCMNoLeader", (Case(silent.series, silent.at,
                                                                              firing.fires),)), sort_keys=False))
    proc = promtool("test", "rules", path.name, cwd=rules_file.parent)
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


def exported() -> dict[str, set[str]]:
    """Sample name -> the daemon's label names, from ccm/metrics.py's families (as prometheus_client exposes
    them: counters with ``_total``, histograms as ``_bucket``/``_sum``/``_count``)."""
    out: dict[str, set[str]] = {}
    for family in vars(MetricFamilies()).values():
        if not isinstance(family, MetricWrapperBase):
            continue
        labels = set(family._labelnames)
        name = family._name
        kind = family._type
        if kind == "counter":
            out[f"{name}_total"] = labels
        elif kind == "histogram":
            out.update({f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels})
        else:
            out[name] = labels
    return out


def test_case_series_are_shaped_like_the_daemons_metrics() -> None:
    names = exported()
    for alert, cases in CASES.items():
        for case in cases:
            for selector in case.series:
                match = _SERIES.match(selector)
                assert match, selector
                labels = {m["key"] for m in _LABEL.finditer(match["labels"])}
                assert match["name"] in names, f"{alert}: {match['name']} is not a metric of the daemon"
                assert labels - set(TARGET) == names[match["name"]], (alert, selector)


def test_rules_and_dashboard_query_metrics_of_ccm_metrics() -> None:
    """The fast check (the live scrape is tests/integration/test_monitoring.py)."""
    names = exported()
    missing = {name: sorted(used) for name, used in queried_metrics().items() if name not in names}
    assert not missing, missing


def test_monitoring_kustomization_renders() -> None:
    objects = render(MONITORING)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ConfigMap", "cloudsigma-ccm-dashboard"), ("PodMonitor", "cloudsigma-ccm"),
        ("PrometheusRule", "cloudsigma-ccm")]
    dashboard = json.loads(next(o for o in objects if o["kind"] == "ConfigMap")["data"]["dashboard.json"])
    assert dashboard["uid"] == "cloudsigma-ccm"
