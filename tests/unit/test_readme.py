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


def test_settings_table_is_generated_from_settings() -> None:
    """The table between the markers is exactly what ``make docs`` (python -m ccm.docs) writes."""
    from ccm.docs import BEGIN, END, settings_table

    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme, "README lacks the settings table markers"
    committed = readme[readme.index(BEGIN) + len(BEGIN):readme.index(END)].strip()
    assert committed == settings_table(), "README's settings table is out of date: run `make docs`"


def test_concurrent_node_syncs_default_is_documented_as_the_code_has_it() -> None:
    readme = (ROOT / "README.md").read_text()
    default = Settings.model_fields["concurrent_node_syncs"].default
    row = next(line for line in readme.splitlines() if line.startswith("| `CLOUDSIGMA_CONCURRENT_NODE_SYNCS`"))
    assert f"| `{default}` |" in row, row
