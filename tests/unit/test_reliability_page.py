"""docs/reliability.md: written only by ``make reliability-doc``, and checked (not rewritten) by every full run."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tests.reliability import registry


class _Config:
    """The one attribute of ``pytest.Config`` the report uses."""


def _complete_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    from tests.reliability.conftest import HERE, PROPERTIES, ReliabilityReport

    monkeypatch.setattr(registry, "STORE", registry._Store())
    monkeypatch.setattr(registry, "DOC", tmp_path / "reliability.md")
    report = ReliabilityReport(_Config())  # type: ignore[arg-type]
    report.files = {PROPERTIES, *HERE.glob("test_*.py")}
    report.items = ["tests/reliability/test_x.py::test_case"]
    registry.set_outcome(report.items[0], "passed", 0.1)
    assert report.complete()
    return report


def test_a_complete_run_does_not_write_the_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CCM_WRITE_RELIABILITY_DOC", raising=False)
    report = _complete_report(monkeypatch, tmp_path)
    report.pytest_sessionfinish(None)  # type: ignore[attr-defined]
    assert not registry.DOC.exists(), "a test run rewrote docs/reliability.md"


def test_make_reliability_doc_writes_the_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(registry.WRITE_ENV, "1")
    report = _complete_report(monkeypatch, tmp_path)
    report.pytest_sessionfinish(None)  # type: ignore[attr-defined]
    assert "test_x.py::test_case" in registry.DOC.read_text()
    assert "make reliability-doc" in registry.DOC.read_text()


def test_comparable_ignores_what_a_run_measures_only() -> None:
    row = "| a case<br>`t.py::test_a` | {} | {} | {} | {} s |"
    page = "\n".join(["## Summary", "| Faults injected | 107 |", "| Run time | 12 s |",
                      row.format("503 for 20 s (34 failed calls)", "slowest 0.9 s", "passed", "1.0")])
    again = "\n".join(["## Summary", "| Faults injected | 104 |", "| Run time | 99 s |",
                       row.format("503 for 20 s (31 failed calls)", "slowest 0.8 s", "failed", "7.5")])
    assert registry.comparable(page) == registry.comparable(again)
    assert registry.comparable(page) != registry.comparable(page.replace("test_a", "test_b"))
    assert registry.comparable(page) != registry.comparable(page.replace("a case", "another case"))
    assert registry.comparable(page) != registry.comparable(page.replace("## Summary", "## Other"))


def test_reliability_page_is_current(request: pytest.FixtureRequest) -> None:
    """Runs last (the plugin moves it) in a run of the whole reliability suite; skipped in partial runs."""
    report = request.config.pluginmanager.get_plugin("reliability-report")
    if report is None or not report.items or not report.complete():
        pytest.skip("only a run of the whole reliability suite can check docs/reliability.md")
    committed = registry.comparable(registry.DOC.read_text())
    fresh = registry.comparable(report.render())
    diff = "\n".join(difflib.unified_diff(committed, fresh, "committed", "this run", lineterm="", n=0))
    assert committed == fresh, f"docs/reliability.md is out of date: run `make reliability-doc`\n{diff[:4000]}"


def test_the_freshness_table_is_on_the_page_and_names_tests_that_exist() -> None:
    page = registry.DOC.read_text()
    assert "\n".join(registry.freshness_lines()) in page, "docs/reliability.md: run `make reliability-doc`"
    root = registry.ROOT
    for action, _, _, tests in registry.FRESHNESS:
        for ref in (t.strip() for t in tests.split(",")):
            path, name = ref.split("::")
            assert f"def {name}(" in (root / path).read_text(), f"{action}: {ref} does not exist"
