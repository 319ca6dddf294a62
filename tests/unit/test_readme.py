"""The README's configuration reference names every setting, and its test command is what CI runs."""

from __future__ import annotations

from pathlib import Path

from ccm.config import Settings, env_name, flag_name

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if env_name(name) not in readme or flag_name(name) not in readme]
    assert not missing, f"README lacks: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    assert "exec make test" in ci
