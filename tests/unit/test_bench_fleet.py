"""The pure parts of the fleet benchmark (bench/fleet*.py): steps, slopes, burst timing, the floor's template,
targets and the rendered Markdown. Nothing here starts a process or writes a file."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.fleet import burst_timing, default_steps, marginal_costs
from bench.fleetfloor import initialised_template
from bench.fleetreport import evaluate_fleet_targets, fleet_section_for_main_report, render_fleet_page
from bench.kube import UNINITIALIZED_TAINT, Registration
from bench.stats import linear_slope


def test_linear_slope_fits_a_line_and_refuses_what_has_no_slope() -> None:
    assert linear_slope([0, 5, 10, 20], [100, 105, 110, 120]) == pytest.approx(1.0)
    assert linear_slope([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert math.isnan(linear_slope([5], [1]))
    assert math.isnan(linear_slope([5, 5], [1, 2]))
    with pytest.raises(ValueError, match="differ in length"):
        linear_slope([1, 2], [1])


def test_default_steps_read_one_tenant_apart_from_the_rest() -> None:
    assert default_steps(20, quick=False) == [0, 1, 5, 10, 20]
    assert default_steps(20, quick=True) == [0, 1, 10, 20]
    assert default_steps(2, quick=False) == [0, 1, 2]
    assert default_steps(1, quick=True) == [0, 1]


def _step(tenants: int, rss: float) -> dict[str, Any]:
    return {"tenants": tenants, "nodes": tenants * 10, "rss_mib": rss}


def test_marginal_cost_is_fitted_from_one_tenant_on_and_the_first_tenant_is_reported_apart() -> None:
    steps = [_step(0, 100.0), _step(1, 105.0), _step(5, 107.0), _step(10, 109.5), _step(20, 114.5)]
    costs = marginal_costs(steps)
    assert costs["marginal_mib_per_tenant"] == pytest.approx(0.5)
    assert costs["first_tenant_mib"] == pytest.approx(5.0)
    assert costs["slope_from_zero_mib_per_tenant"] is not None
    assert costs["slope_from_zero_mib_per_tenant"] > 0.5
    assert marginal_costs([_step(0, 100.0)]) == {"marginal_mib_per_tenant": None, "first_tenant_mib": None,
                                                 "slope_from_zero_mib_per_tenant": None}


def test_burst_timing_measures_from_the_first_create_sent_to_the_last_taint_gone() -> None:
    regs = {0: Registration(created_at={"t0-burst-0": 10.2, "t0-burst-1": 10.3}, started=10.0, finished=10.4),
            1: Registration(created_at={"t1-burst-0": 10.5, "t1-burst-1": 10.6}, started=10.1, finished=10.7)}
    watchers: Any = {0: SimpleNamespace(removed_at={"t0-burst-0": 11.2, "t0-burst-1": 10.8}),
                     1: SimpleNamespace(removed_at={"t1-burst-0": 12.0})}  # t1-burst-1 never initialised
    timing = burst_timing(watchers, regs, "burst", 2)
    assert timing["nodes"] == 4 and timing["initialized"] == 3
    assert timing["burst_s"] == pytest.approx(2.0)
    assert timing["registration_s"] == pytest.approx(0.7)
    assert timing["delays_s"] == pytest.approx([0.5, 1.0, 1.5])
    assert timing["delay_s"]["max"] == pytest.approx(1.5)


def test_the_floor_copies_what_the_ccm_wrote_and_nothing_the_kubelet_wrote() -> None:
    node = {"metadata": {"labels": {"kubernetes.io/hostname": "n", "topology.kubernetes.io/region": "zrh"}},
            "spec": {"providerID": "cloudsigma://abc", "taints": [
                {"key": UNINITIALIZED_TAINT, "value": "true", "effect": "NoSchedule"},
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "ExternalIP", "address": "192.0.2.1"}]}}
    tpl = initialised_template(node, {"kubernetes.io/hostname": "n"})
    assert tpl.labels == {"topology.kubernetes.io/region": "zrh"}
    assert tpl.taints == [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    assert tpl.provider_id == "cloudsigma://abc"
    assert tpl.addresses == [{"type": "ExternalIP", "address": "192.0.2.1"}]


def _results(*, tenants: int, marginal: float, p99: float, quick: bool = False) -> dict[str, Any]:
    steps = [_step(0, 100.0), _step(1, 104.0), _step(tenants, 104.0 + marginal * (tenants - 1))]
    return {
        "date": "2026-12-01T00:00:00+00:00", "command": "python -m bench.fleet",
        "options": {"tenants": tenants, "nodes_per_tenant": 10, "quick": quick, "idle_seconds": 20},
        "steps": steps, **marginal_costs(steps),
        "single": {"rss_mib": 100.0, "vm_hwm_mib": 110.0},
        "burst": {"nodes": tenants * 10, "initialized": tenants * 10, "burst_s": 2.0,
                  "delay_s": {"p50": 0.5, "p95": 0.9, "p99": p99, "max": p99 + 0.1},
                  "cloudsigma": {"api_total": 2 * tenants}, "cloudsigma_api_per_tenant": 2.0, "token_exchanges": 0},
        "floor": {"nodes": tenants * 10, "burst_s": 1.0, "delay_s": {"p99": 0.4}},
        "burst_vs_floor": 2.0,
    }


def _met(results: dict[str, Any], prefix: str) -> list[bool | None]:
    return [t["met"] for t in evaluate_fleet_targets(results) if t["target"].startswith(prefix)]


def test_targets_judge_the_marginal_cost_and_the_p99_only_where_the_goal_applies() -> None:
    assert _met(_results(tenants=20, marginal=0.8, p99=1.5), "marginal RSS") == [True]
    assert _met(_results(tenants=20, marginal=1.2, p99=1.5), "marginal RSS") == [False]
    assert _met(_results(tenants=20, marginal=0.8, p99=2.5), "p99") == [False]
    assert _met(_results(tenants=20, marginal=0.8, p99=1.5), "p99") == [True]
    assert _met(_results(tenants=5, marginal=0.8, p99=1.5), "p99") == [None]  # the goal is for 20 tenants


def test_the_page_labels_a_quick_run_and_sets_the_fleet_beside_one_deployment_per_tenant() -> None:
    page = render_fleet_page(_results(tenants=20, marginal=0.8, p99=1.5, quick=True),
                             report_path=Path("/repo/docs/benchmarks-fleet.md"), results_path=None)
    assert "**quick run**" in page
    assert "| 20 | 2,000 MiB | 119.2 MiB | 16.8x |" in page
    assert "2.00x" in page  # the burst as a ratio to the floor


def test_the_main_report_points_to_the_fleet_benchmark_before_it_ran(tmp_path: Path) -> None:
    lines = fleet_section_for_main_report(tmp_path, results_path=tmp_path / "missing.json")
    assert lines[0] == "## Fleet mode" and "python -m bench.fleet" in lines[2]
