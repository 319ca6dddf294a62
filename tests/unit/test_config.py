"""Configuration: env + flags, and one clear line with exit code 2 for each invalid combination."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccm.cli import main, parse
from ccm.config import ConfigError, load_settings, parse_duration
from credentials.providers.keycloak import KeycloakTokenExchangeProvider
from credentials.registry import create_provider

BASE = {"CLOUDSIGMA_REGION": "zrh", "CLOUDSIGMA_USERNAME": "ops@example.com", "CLOUDSIGMA_PASSWORD": "pw-123456"}
IMPERSONATION = {"CLOUDSIGMA_REGION": "zrh", "CLOUDSIGMA_IMPERSONATION_ENABLED": "true",
                 "CLOUDSIGMA_OAUTH_URL": "http://127.0.0.1:1/realms/cloudsigma", "CLOUDSIGMA_CLIENT_ID": "ccm",
                 "CLOUDSIGMA_CLIENT_SECRET": "s3cr3t-value", "CLOUDSIGMA_USER_EMAIL": "alice@example.com"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for key in list(__import__("os").environ):
        if key.startswith("CLOUDSIGMA_") or key == "KUBECONFIG":
            monkeypatch.delenv(key)

    def set_env(values: dict[str, str]) -> None:
        for k, v in values.items():
            monkeypatch.setenv(k, v)

    return set_env


def test_seed_000_env_names(env) -> None:  # type: ignore[no-untyped-def]
    env(IMPERSONATION | {"CLOUDSIGMA_USERNAME": "ops@example.com", "CLOUDSIGMA_PASSWORD": "pw-123456"})
    s = load_settings()
    assert s.impersonation_enabled and s.user_email == "alice@example.com"
    assert s.credential_chain == ["keycloak-token-exchange", "password"]
    assert s.client_secret is not None and "s3cr3t" not in repr(s)


def test_flags_win_over_env(env) -> None:  # type: ignore[no-untyped-def]
    env(BASE)
    _, values = parse(["--region", "fra", "--concurrent-node-syncs", "8", "--node-status-update-frequency", "2m",
                       "--leader-elect=false"])
    s = load_settings(values)
    assert (s.region, s.concurrent_node_syncs, s.node_status_update_frequency, s.leader_elect) == ("fra", 8, 120.0,
                                                                                                   False)


def test_secret_from_file_is_read_by_the_provider_and_reread_after_rotation(  # type: ignore[no-untyped-def]
        env, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file-secret\n")
    env({k: v for k, v in IMPERSONATION.items() if k != "CLOUDSIGMA_CLIENT_SECRET"}
        | {"CLOUDSIGMA_CLIENT_SECRET_FILE": str(secret)})
    s = load_settings()
    # Not read into the settings once: the provider reads it, through a WatchedFile, for every exchange.
    assert s.client_secret is None and s.client_secret_file == secret
    provider = create_provider("keycloak-token-exchange", s)
    assert isinstance(provider, KeycloakTokenExchangeProvider)
    seen: list[str] = []
    provider.attach_secret_sink(seen.append)

    def form() -> dict[str, str]:
        return provider.client_form({"grant_type": "x"}, token_endpoint="https://kc.example/token", user=None)

    assert form()["client_secret"] == "from-file-secret"
    secret.write_text("rotated-secret-value\n")
    file = provider.client_auth.secret._file  # type: ignore[attr-defined]
    file._checked_at = float("-inf")  # skip the 1 s between checks
    assert form()["client_secret"] == "rotated-secret-value"
    assert seen == ["from-file-secret", "rotated-secret-value"]  # the redactor learns both


@pytest.mark.parametrize("setting", ["client_secret_file", "password_file", "static_token_file",
                                     "client_assertion_file", "client_private_key_file"])
@pytest.mark.parametrize("problem", ["missing", "empty"])
def test_secret_file_unusable_at_start_exits_2_one_line(env, capsys, tmp_path: Path, setting: str,  # type: ignore[no-untyped-def]
                                                        problem: str) -> None:
    path = tmp_path / "secret"
    if problem == "empty":
        path.write_text("\n")
    values = dict(IMPERSONATION)
    if setting in ("client_assertion_file", "client_private_key_file"):
        del values["CLOUDSIGMA_CLIENT_SECRET"]
    env(values | {f"CLOUDSIGMA_{setting.upper()}": str(path)}
        | ({"CLOUDSIGMA_USERNAME": "ops@example.com"} if setting == "password_file" else {}))
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"--{setting.replace('_', '-')}" in err and str(path) in err
    assert ("is empty" if problem == "empty" else "cannot read") in err


def test_client_authentication_settings_say_what_is_missing(env, capsys) -> None:  # type: ignore[no-untyped-def]
    without_secret = {k: v for k, v in IMPERSONATION.items() if k != "CLOUDSIGMA_CLIENT_SECRET"}
    env(without_secret)
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "CLOUDSIGMA_CLIENT_SECRET" in err and "CLOUDSIGMA_CLIENT_ASSERTION_FILE" in err and "\n" not in err

    env({"CLOUDSIGMA_CLIENT_ASSERTION_AUDIENCE": "https://kc.example/realms/cloudsigma"})
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("configuration error: CLOUDSIGMA_CLIENT_ASSERTION_FILE / --client-assertion-file is missing")


def test_secretless_client_needs_no_secret(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n")
    env({k: v for k, v in IMPERSONATION.items() if k != "CLOUDSIGMA_CLIENT_SECRET"}
        | {"CLOUDSIGMA_CLIENT_ASSERTION_FILE": str(token)})
    s = load_settings()
    assert s.client_secret is None and s.client_assertion_file == token
    provider = create_provider("keycloak-token-exchange", s)
    assert isinstance(provider, KeycloakTokenExchangeProvider)
    assert provider.describe()["client_auth"] == "client_assertion"
    assert provider.describe()["client_assertion_audience"] == "http://127.0.0.1:1/realms/cloudsigma"


def test_two_client_authentication_methods_are_refused(env, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = tmp_path / "token"
    token.write_text("x")
    env(IMPERSONATION | {"CLOUDSIGMA_CLIENT_ASSERTION_FILE": str(token)})
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "--client-assertion-file cannot be combined with a client secret" in err


@pytest.mark.parametrize(
    ("values", "setting"),
    [
        ({"CLOUDSIGMA_REGION": "zrh", "CLOUDSIGMA_IMPERSONATION_ENABLED": "true"}, "--user-email"),
        (IMPERSONATION | {"CLOUDSIGMA_CLIENT_SECRET": ""}, "--client-secret"),
        (IMPERSONATION | {"CLOUDSIGMA_OAUTH_URL": "not a url"}, "--oauth-url"),
        (IMPERSONATION | {"CLOUDSIGMA_IMPERSONATION_STRATEGY": "magic"}, "--impersonation-strategy"),
        (BASE | {"CLOUDSIGMA_NODE_MONITOR_PERIOD": "-5s"}, "--node-monitor-period"),
        (BASE | {"CLOUDSIGMA_KUBECONFIG": "/nonexistent/kubeconfig"}, "--kubeconfig"),
        (BASE | {"CLOUDSIGMA_API_URL": "ftp://x"}, "--api-url"),
        ({"CLOUDSIGMA_REGION": "zrh"}, "no credentials configured"),
        ({"CLOUDSIGMA_USERNAME": "a@b.c", "CLOUDSIGMA_PASSWORD": "x"}, "--region"),
        (BASE | {"CLOUDSIGMA_CONCURRENT_NODE_SYNCS": "0"}, "--concurrent-node-syncs"),
        (BASE | {"CLOUDSIGMA_LEADER_ELECT_RESOURCE_NAME": "Bad_Name"}, "--leader-elect-resource-name"),
        # IP claims are keyed by the cluster name: an empty one never reads back as ours (every Service CLAIM_LOST).
        (BASE | {"CLOUDSIGMA_LOAD_BALANCER": "metallb"}, "--cluster-name"),
    ],
)
def test_invalid_configuration_exit_2_one_line(env, capsys, values, setting) -> None:  # type: ignore[no-untyped-def]
    env(values)
    with pytest.raises(ConfigError):
        load_settings()
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert setting in err
    assert "s3cr3t" not in err


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("1h30m", 5400), ("10s", 10), ("250ms", 0.25),
                                                ("42", 42), (1.5, 1.5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-1s", "soon", "", "5 parsecs"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|negative"):
        parse_duration(text)
