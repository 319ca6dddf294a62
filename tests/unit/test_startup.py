"""Start-up: secret-valued flags warn, nothing that escapes start-up leaks a secret, kubeconfigs are checked."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import ccm.single.process
from ccm.cli import main
from ccm.config import Settings
from ccm.kube.kubeconfig import KubeconfigError, parse_kubeconfig
from ccm.shutdown import ShutdownBudget

PASSWORD = "pw-on-the-command-line-0451"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() configures logging onto the captured stderr, which is closed after the test: put it back."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers, root.level = handlers, level


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(os.environ):
        if key.startswith("CLOUDSIGMA_") or key == "KUBECONFIG":
            monkeypatch.delenv(key)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    return kubeconfig


def _args(kubeconfig: Path, *extra: str) -> list[str]:
    return ["--region=zrh", "--username=ops@example.com", f"--kubeconfig={kubeconfig}", "--log-format=json",
            "--leader-elect=false", *extra]


def test_secret_flags_keep_working_but_warn(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Settings] = []

    async def fake_run(settings: Settings, redactor: Any) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(ccm.single.process, "run", fake_run)
    assert main(_args(clean_env, f"--password={PASSWORD}")) == 0
    assert seen and seen[0].password is not None and seen[0].password.get_secret_value() == PASSWORD
    err = capsys.readouterr().err
    warnings = [json.loads(line) for line in err.splitlines() if "secret_on_command_line" in line]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert warnings[0]["flag"] == "--password" and "CLOUDSIGMA_PASSWORD_FILE" in warnings[0]["instead"]
    assert PASSWORD not in err


def test_secrets_from_the_environment_do_not_warn(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    async def fake_run(settings: Settings, redactor: Any) -> int:
        return 0

    monkeypatch.setattr(ccm.single.process, "run", fake_run)
    monkeypatch.setenv("CLOUDSIGMA_PASSWORD", PASSWORD)
    assert main(_args(clean_env)) == 0
    assert "secret_on_command_line" not in capsys.readouterr().err


def test_an_exception_escaping_start_up_is_one_redacted_line(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    async def exploding_run(settings: Settings, redactor: Any) -> int:
        raise RuntimeError(f"could not start: server said password={PASSWORD} is wrong ({PASSWORD})")

    monkeypatch.setattr(ccm.single.process, "run", exploding_run)
    monkeypatch.setenv("CLOUDSIGMA_PASSWORD", PASSWORD)
    code = main(_args(clean_env))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 1
    assert PASSWORD not in captured.err + captured.out, captured.err
    assert len(lines) == 1 and "RuntimeError" in lines[0] and "Traceback" not in captured.err


@pytest.mark.parametrize(("text", "problem"), [
    ("a: [1, 2\n", "is not valid YAML at line 2"),
    ("- just\n- a list\n", "is not a kubeconfig"),
    ("apiVersion: v1\n", "has no current-context"),
    ("current-context: c\ncontexts: []\n", "'contexts' has no entry named 'c'"),
    ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
     "clusters: [{name: k, cluster: {server: ftp://x}}]\n", "cluster 'k' has no http(s) server URL"),
    ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
     "clusters: [{name: k, cluster: {server: 'https://x'}}]\nusers: [{name: u, user: {auth-provider: {name: oidc}}}]\n",
     "user 'u' authenticates with an auth-provider, which is not supported"),
    ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
     "clusters: [{name: k, cluster: {server: 'https://x'}}]\nusers: [{name: u, user: {client-certificate-data: x}}]\n",
     "client certificate without its key"),
])
def test_unusable_kubeconfigs_are_one_line_naming_the_file(text: str, problem: str) -> None:
    with pytest.raises(KubeconfigError) as err:
        parse_kubeconfig(Path("/etc/tenant/kubeconfig"), text)
    message = str(err.value)
    assert message.startswith("/etc/tenant/kubeconfig: ") and problem in message and "\n" not in message


def test_a_token_file_kubeconfig_is_accepted_and_resolved_next_to_the_file() -> None:
    text = ("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
            "clusters: [{name: k, cluster: {server: 'https://x'}}]\nusers: [{name: u, user: {tokenFile: token}}]\n")
    config = parse_kubeconfig(Path("/etc/tenant/kubeconfig"), text)
    assert (config.auth, config.token_file) == ("token-file", Path("/etc/tenant/token"))


def test_the_default_shutdown_budget_fits_the_default_grace_period() -> None:
    shutdown = Settings.model_fields["shutdown_timeout"].default
    grace = Settings.model_fields["termination_grace_period"].default
    budget = ShutdownBudget(drain=shutdown)
    assert budget.fits(grace) and budget.total == shutdown + budget.flush + budget.release + budget.exit
    assert not ShutdownBudget(drain=grace).fits(grace)


def test_the_daemon_pins_the_allocator_threshold_before_it_runs(clean_env: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Single-tenant like the fleet: freed TLS read buffers go back to the OS (ccm/process/allocator.py)."""
    import ccm.process.allocator

    calls: list[str] = []
    monkeypatch.setattr(ccm.process.allocator, "return_large_buffers", lambda: calls.append("pinned") or True)
    monkeypatch.setattr(ccm.process.allocator, "small_tls_read_buffers", lambda: calls.append("small TLS buffers"))

    async def fake_run(settings: Settings, redactor: Any) -> int:
        calls.append("run")
        return 0

    monkeypatch.setattr(ccm.single.process, "run", fake_run)
    monkeypatch.setenv("CLOUDSIGMA_PASSWORD", PASSWORD)
    assert main(_args(clean_env)) == 0
    assert calls == ["pinned", "small TLS buffers", "run"]
