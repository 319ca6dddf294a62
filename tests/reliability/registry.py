"""The reliability suite's record: every case with what was injected and what was verified.

Tests call :func:`record` (any number of times; the current test is found from ``PYTEST_CURRENT_TEST``); the
plugin in ``tests/reliability/conftest.py`` adds each test's outcome and duration. ``make reliability-doc`` writes
``docs/reliability.md`` with :func:`render_markdown` after a run of the whole suite; any other run that ran the whole
suite checks that the committed page is current (:func:`comparable`: all but timings and outcomes).

Everything the CCM printed, served on ``/metrics`` or wrote as an Event is also collected here
(:func:`add_text`), with every secret the suite configured or saw issued (:func:`add_secret`), so the last
test can check that none leaked (:func:`leaks`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
#: Set (to 1) by ``make reliability-doc``: only then does a complete run rewrite :data:`DOC`.
WRITE_ENV = "CCM_WRITE_RELIABILITY_DOC"
REGENERATE = "make reliability-doc"
#: The test that compares the committed page with this run (the plugin runs it last).
PAGE_CHECK = "test_reliability_page.py::test_reliability_page_is_current"

CATEGORIES = {
    "fault/cloudsigma": "Faults: CloudSigma API",
    "fault/idp": "Faults: identity provider (real Keycloak)",
    "fault/kubernetes": "Faults: Kubernetes API server (real kube-apiserver)",
    "fault/process": "Faults: the process (subprocess daemon)",
    "input/config": "Bad input: configuration (subprocess `cloudsigma-ccm`, exit 2 + one line)",
    "input/cloud": "Bad input: CloudSigma data",
    "input/properties": "Bad input: property-based tests (hypothesis) of parsers and decisions",
    "input/kubernetes": "Bad input: Kubernetes data",
    "secrets": "Secrets",
}


MODULE_CATEGORY = {
    "test_cloud_faults.py": "fault/cloudsigma",
    "test_idp_faults.py": "fault/idp",
    "test_kube_faults.py": "fault/kubernetes",
    "test_process.py": "fault/process",
    "test_leadership.py": "fault/process",
    "test_kubeconfig_rotation.py": "secrets",
    "test_bad_config.py": "input/config",
    "test_bad_cloud_data.py": "input/cloud",
    "test_properties.py": "input/properties",
    "test_bad_kube_data.py": "input/kubernetes",
    "test_secrets.py": "secrets",
}


@dataclass
class Case:
    nodeid: str
    category: str
    case: str
    injected: str
    verified: str
    faults: int = 0
    bad_inputs: int = 0
    nodes_checked: int = 0
    nodes_lost: int = 0
    outcome: str = "not run"
    seconds: float = 0.0


@dataclass
class _Store:
    cases: list[Case] = field(default_factory=list)
    outcomes: dict[str, tuple[str, float]] = field(default_factory=dict)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    secrets: dict[str, str] = field(default_factory=dict)  # secret -> kind
    lock: threading.Lock = field(default_factory=threading.Lock)


STORE = _Store()


def current_nodeid() -> str:
    raw = os.environ.get("PYTEST_CURRENT_TEST", "")
    return raw.rsplit(" (", 1)[0] if raw else "<outside a test>"


def record(category: str, case: str, *, injected: str, verified: str, faults: int = 0, bad_inputs: int = 0,
           nodes_checked: int = 0, nodes_lost: int = 0) -> None:
    """Note one case of the current test (its outcome is the test's)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}")
    with STORE.lock:
        STORE.cases.append(Case(current_nodeid(), category, case, injected, verified, faults, bad_inputs,
                                nodes_checked, nodes_lost))


def lost(count: int) -> None:
    """Nodes lost in the current test (added to its cases; call after the check)."""
    nodeid = current_nodeid()
    with STORE.lock:
        mine = [c for c in STORE.cases if c.nodeid == nodeid]
        if mine:
            mine[-1].nodes_lost += count


def set_outcome(nodeid: str, outcome: str, seconds: float) -> None:
    with STORE.lock:
        previous = STORE.outcomes.get(nodeid)
        # setup/call/teardown: a failure in any phase wins; durations add up.
        if previous is not None and previous[0] != "passed":
            outcome = previous[0]
        STORE.outcomes[nodeid] = (outcome, seconds + (previous[1] if previous else 0.0))


def add_secret(value: str | None, kind: str) -> None:
    """A value that must never appear in logs, events or metrics (ignored when too short to be one)."""
    if value and len(value) >= 8:
        with STORE.lock:
            STORE.secrets.setdefault(value, kind)


def add_text(where: str, text: str) -> None:
    """Output of the CCM to check for secrets (a log, a /metrics page, event messages)."""
    if text:
        with STORE.lock:
            STORE.texts.append((where, text))


def leaks(texts: Iterable[tuple[str, str]] | None = None,
          secrets: dict[str, str] | None = None) -> list[str]:
    """``where: kind`` for every secret found in a text (never the secret itself)."""
    with STORE.lock:
        corpus = list(STORE.texts if texts is None else texts)
        known = dict(STORE.secrets if secrets is None else secrets)
    found = []
    for where, text in corpus:
        for secret, kind in known.items():
            if secret in text:
                found.append(f"{where}: {kind}")
    return sorted(set(found))


def corpus_size() -> tuple[int, int, int]:
    with STORE.lock:
        return len(STORE.texts), sum(len(t) for _, t in STORE.texts), len(STORE.secrets)


def secret_kinds() -> dict[str, int]:
    with STORE.lock:
        kinds: dict[str, int] = {}
        for kind in STORE.secrets.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds


# ------------------------------------------------------------------------------------------- freshness

#: Every irreversible or disruptive action → the evidence it requires → how fresh, relative to what → the tests that
#: prove it (``path::test``; tests/unit/test_reliability_page.py checks that each exists). Rendered as a section of
#: the page (static: a run does not change it).
FRESHNESS: tuple[tuple[str, str, str, str], ...] = (
    ("`spec.providerID` write (immutable: sets the Node's identity)",
     "by systemUUID (either byte order): a listing holding that uuid; by name: exactly one server of that name, and "
     "no systemUUID that names no server (else Warning `SystemUUIDMismatch`, unless "
     "`--node-lookup-by-system-uuid=false`)",
     "systemUUID: any snapshot (≤ max-age x stale-factor). Name: a listing that started after the node watcher saw "
     "the Node and after its `creationTimestamp` + 1 s (capped at seen + 1 s); shared by all such Nodes; during an "
     "outage none, so the taint stays. A 409 retry is held to the same rule",
     "tests/integration/test_freshness.py::test_replaced_vm_never_gets_the_old_servers_identity, "
     "tests/integration/test_freshness.py::test_a_node_registered_during_an_outage_waits_for_a_listing_newer_than_it, "
     "tests/integration/test_freshness.py::test_a_system_uuid_of_no_server_never_matches_by_name, "
     "tests/reliability/test_kube_faults.py::test_a_retry_matches_the_server_again_from_current_data"),
    ("removal of the `uninitialized` taint",
     "the providerID decision above, and at least one InternalIP/ExternalIP decided from the same listing "
     "(addresses written first, in a write guarded by uid + resourceVersion)",
     "the same listing as the providerID",
     "tests/integration/test_freshness.py::test_replaced_vm_never_gets_the_old_servers_identity, "
     "tests/reliability/test_bad_cloud_data.py::test_servers_without_an_ip_keep_their_nodes_tainted"),
    ("address removal or replacement (initialized Node)",
     "the server named by `spec.providerID`; never leaves a Node without an IP (a stopped server's or an empty "
     "answer keeps the addresses)",
     "a snapshot ≤ min(`--server-refresh-period`, resync period) old (at least max-age); every refresh re-queues "
     "a Node whose server's addresses changed (corrected within one period); after a reboot (Ready again, new "
     "bootID): a listing started after the kubelet reported it",
     "tests/integration/test_cloud_refresh.py::test_a_cloud_change_is_on_the_node_within_one_period, "
     "tests/integration/test_cloud_refresh.py::test_a_reboot_with_a_new_dhcp_address_is_seen_at_once, "
     "tests/integration/test_node_controller.py::test_changed_dhcp_ip_is_picked_up_on_resync"),
    ("cloud-label removal (`node.cloudsigma.com/…`)",
     "the server's meta keys, tag names and host group; only keys the CCM set (managed annotation); a tag or "
     "host-group source that failed this snapshot removes nothing",
     "as addresses: ≤ one refresh period old, re-queued on change",
     "tests/integration/test_cloud_refresh.py::test_a_cloud_change_is_on_the_node_within_one_period, "
     "tests/integration/test_cloud_labels.py::test_failing_extra_calls_never_fail_the_listing_and_leave_their_labels_"
     "alone"),
    ("shutdown taint (added / removed)",
     "the server's status `stopped`/`paused` while the Node is NotReady; removed when Ready or running",
     "the shared snapshot (≤ max-age; ≤ max-age x stale-factor while revalidating); reversible: the next check "
     "corrects it",
     "tests/integration/test_lifecycle.py::test_shutdown_taint_added_and_removed"),
    ("Node deletion",
     "with providerID: CloudSigma's 404 `notexist` (request id) on a direct GET by the primary credential, and a "
     "complete listing by the same credential lacking the server and holding another Node's server; without: "
     "absent from two complete listings holding another Node's server",
     "NotReady ≥ grace period; the GET and the listings started during the deleting lifecycle pass (one confirming "
     "listing per pass, shared by its decisions); never a cache answer",
     "tests/integration/test_lifecycle.py::test_deleted_after_grace_on_fresh_404, "
     "tests/integration/test_lifecycle.py::test_never_deleted_without_proof, "
     "tests/integration/test_lifecycle.py::test_one_confirming_listing_serves_every_decision_of_a_pass, "
     "tests/reliability/test_cloud_faults.py::test_wrong_endpoint_deletes_nothing"),
    ("kubelet-serving CSR approval",
     "the requesting Node initialized with a providerID; its server listed; every IP SAN an address of that "
     "server (or the kubelet's own InternalIP of a private VLAN no other Node claims)",
     "a listing that started after the CSR's `creationTimestamp` + 1 s (one, shared by the CSRs of that second)",
     "tests/integration/test_csr_approval.py::test_valid_request_is_approved, "
     "tests/integration/test_csr_approval.py::test_new_dhcp_address_is_looked_up_before_saying_no"),
)


def freshness_lines() -> list[str]:
    """The page's freshness section."""
    lines = ["## Freshness of evidence", "",
             "What cannot be undone is decided only from evidence that cannot be older than what it is about; each "
             "decision's log line names its evidence (request ids) and its age (`evidence_age_s`, `listing_age_s`).",
             "", "| Action | Evidence required | How fresh, relative to what | Proved by |", "|---|---|---|---|"]
    for action, evidence, fresh, tests in FRESHNESS:
        proved = "<br>".join(f"`{_cell(t.strip().rsplit('/', 1)[-1])}`" for t in tests.split(","))
        lines.append(f"| {_cell(action)} | {_cell(evidence)} | {_cell(fresh)} | {proved} |")
    return [*lines, ""]


# ------------------------------------------------------------------------------------------- markdown


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _final_cases(expected: Iterable[str]) -> list[Case]:
    with STORE.lock:
        cases = [Case(**{k: v for k, v in c.__dict__.items()}) for c in STORE.cases]
        outcomes = dict(STORE.outcomes)
    seen = {c.nodeid for c in cases}
    for nodeid in expected:  # a test that failed before it could record still gets a row
        if nodeid not in seen:
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            cases.append(Case(nodeid, MODULE_CATEGORY.get(module, "secrets"), nodeid.rsplit("::", 1)[-1],
                              "(not recorded: the test ended before it described itself)", "-"))
    for case in cases:
        outcome, seconds = outcomes.get(case.nodeid, ("not run", 0.0))
        case.outcome, case.seconds = outcome, seconds
    return cases


def comparable(markdown: str) -> list[str]:
    """The lines of a page that must not change between two runs of the same suite: the sections and their cases.
    Left out: what a run measures (the Injected and Verified cells and the summary counts hold figures such as
    failed calls or the slowest recovery, which differ from run to run), the outcomes (a failing case fails the
    run anyway) and the times."""
    out = []
    for line in markdown.splitlines():
        cells = line.split("|")
        if line.startswith("| ") and line.endswith(" s |") and len(cells) >= 7:
            line = "|".join(cells[:2]) + "|"  # a case row: the case (its Injected cell may count what a run did)
        elif line.startswith("| ") or line.startswith(("Regenerate with", "- `")) or line == "## Not passed":
            continue  # summary counts, secrets checked, run time, the not-passed list
        out.append(line)
    return [line for line in out if line.strip()]


def render_markdown(expected: Iterable[str], *, total_seconds: float, command: str) -> str:
    cases = _final_cases(expected)
    order = list(CATEGORIES)
    cases.sort(key=lambda c: (order.index(c.category), c.nodeid, c.case))
    faults = sum(c.faults for c in cases)
    bad = sum(c.bad_inputs for c in cases)
    lost = sum(c.nodes_lost for c in cases)
    checked = sum(c.nodes_checked for c in cases)
    passed = sum(1 for c in cases if c.outcome == "passed")
    failed = [c for c in cases if c.outcome != "passed"]
    texts, _, _ = corpus_size()
    kinds = sorted(secret_kinds())
    lines = [
        "# Reliability",
        "",
        "<!-- Generated by the reliability suite (tests/reliability/registry.py); do not edit by hand. -->",
        "",
        "The CCM keeps working through faults, rejects bad input clearly and leaks nothing. Every row below is a",
        "case of the suite, run against the real parts where they matter: a real kube-apiserver (with embedded",
        "etcd), a real Keycloak for the identity-provider cases, the CloudSigma emulator with fault injection, and",
        "the installed `cloudsigma-ccm` console script for the process and configuration cases.",
        "",
        f"Regenerate with `{command}` (it runs the whole suite and writes this file; a normal test run only "
        "checks that it is current).",
        "",
        "## Summary",
        "",
        "| | |",
        "|---|---|",
        f"| Cases | {len(cases)} ({passed} passed, {len(failed)} not passed) |",
        f"| Faults injected | {faults} |",
        f"| Bad inputs tried | {bad} |",
        f"| Nodes checked after faults / bad input | {checked} |",
        f"| Nodes lost (deleted or corrupted) | {lost} |",
        f"| Outputs checked for secrets (CCM logs, process output, Events, /metrics) | {texts}, against "
        f"{len(kinds)} kinds of secret: {'; '.join(kinds)} |",
        f"| Run time | {total_seconds:.0f} s |",
        "",
    ]
    lines += freshness_lines()
    if failed:
        lines += ["## Not passed", ""]
        lines += [f"- `{c.nodeid}` — {c.case}: **{c.outcome}**" for c in failed]
        lines += [""]
    for category in order:
        rows = [c for c in cases if c.category == category]
        if not rows:
            continue
        lines += [f"## {CATEGORIES[category]}", "",
                  "| Case | Injected | Verified | Outcome | Time |", "|---|---|---|---|---|"]
        for c in rows:
            test = c.nodeid.rsplit("/", 1)[-1]
            lines.append(f"| {_cell(c.case)}<br>`{_cell(test)}` | {_cell(c.injected)} | {_cell(c.verified)} | "
                         f"{c.outcome} | {c.seconds:.1f} s |")
        lines.append("")
    from tests.robustness.doc import section  # the hand-maintained robustness section, after the suite's cases

    lines.append(section())
    return "\n".join(lines)
