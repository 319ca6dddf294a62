"""When a server listing is judged to be another account (pure rules of ccm.nodes.account)."""

from __future__ import annotations

from ccm.nodes.account import Verdict, account_verdict, expected_servers
from ccm.nodes.view import node_view
from tests.unit.factories import UUID1, UUID2, node

UUID3 = "33333333-3333-4333-8333-333333333333"


def test_expected_servers_are_those_of_ready_nodes_with_a_cloudsigma_provider_id() -> None:
    nodes = [
        node("a", tainted=False, provider_id=f"cloudsigma://{UUID1}"),
        node("b", tainted=False, provider_id=f"cloudsigma://{UUID2.upper()}"),
        node("c", tainted=False, provider_id=f"cloudsigma://{UUID3}", ready="False"),  # its VM may be gone
        node("d", tainted=False, provider_id="aws:///eu-west-1a/i-0abc"),
        node("e"),  # not initialized yet
    ]
    assert expected_servers(node_view(n) for n in nodes) == {UUID1: "a", UUID2: "b"}


def test_verdicts() -> None:
    two = {UUID1: "a", UUID2: "b"}
    assert account_verdict({UUID1}, set(), two) is Verdict.CONFIRMED
    assert account_verdict({UUID3}, {"x"}, two) is Verdict.WRONG
    # one node alone may as well have a stale providerID (seed 001): its own reconcile diagnoses it
    assert account_verdict(set(), set(), {UUID1: "a"}) is Verdict.UNKNOWN
    # a server with a node's name: the cluster's account with stale providerIDs, not another account
    assert account_verdict({UUID3}, {"b"}, two) is Verdict.UNKNOWN
    assert account_verdict({UUID1}, set(), {}) is Verdict.UNKNOWN
