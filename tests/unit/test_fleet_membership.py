"""Liveness of fleet members judged by our own clock since a member Lease last changed (client-go's rule), and
member Lease names that are valid whatever the identity."""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccm.fleet.announce import check_fleet_name, member_lease_name
from ccm.fleet.membership import LivenessTracker, Membership, MembershipOptions
from ccm.kube.transport import KubeTransport

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def lease(holder: str, renew: str, duration: int = 10, rv: str = "1") -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv},
            "spec": {"holderIdentity": holder, "renewTime": renew, "leaseDurationSeconds": duration}}


def test_a_member_is_live_for_one_duration_after_its_record_last_changed() -> None:
    tracker = LivenessTracker()
    tracker.observe("ns/a", lease("a", "t1"), 100.0, default_duration=15)
    assert tracker.live(100.0) == {"a"}
    assert tracker.live(109.9) == {"a"}
    # The same record seen again (a relist, an unrelated update) does not restart the clock...
    tracker.observe("ns/a", lease("a", "t1", rv="2"), 105.0, default_duration=15)
    assert tracker.live(110.0) == frozenset()
    assert tracker.next_expiry(110.0) is None
    # ...a renewal does, whatever its timestamp says (skewed clocks do not matter: only change counts).
    tracker.observe("ns/a", lease("a", "1970-01-01T00:00:00.000000Z"), 111.0, default_duration=15)
    assert tracker.live(111.0) == {"a"}
    assert tracker.next_expiry(111.0) == 121.0


def test_several_members_expire_one_by_one_and_a_deleted_one_leaves_at_once() -> None:
    tracker = LivenessTracker()
    tracker.observe("ns/a", lease("a", "t1", duration=10), 0.0, default_duration=15)
    tracker.observe("ns/b", lease("b", "t1", duration=5), 0.0, default_duration=15)
    tracker.observe("ns/c", lease("c", "t1", duration=10), 0.0, default_duration=15)
    assert tracker.live(1.0) == {"a", "b", "c"}
    assert tracker.next_expiry(1.0) == 5.0
    assert tracker.live(6.0) == {"a", "c"}
    tracker.forget("ns/c")
    assert tracker.live(6.0) == {"a"}


def test_a_released_lease_and_a_bad_duration() -> None:
    tracker = LivenessTracker()
    tracker.observe("ns/a", lease("", "t1"), 0.0, default_duration=15)
    assert tracker.live(0.0) == frozenset(), "a lease without holder is no member"
    bad = lease("b", "t1")
    bad["spec"]["leaseDurationSeconds"] = "ten"
    tracker.observe("ns/b", bad, 0.0, default_duration=15)
    assert tracker.live(14.0) == {"b"} and tracker.live(15.0) == frozenset()


def test_silent_leases_are_candidates_for_deletion_with_their_version() -> None:
    tracker = LivenessTracker()
    tracker.observe("ns/a", lease("a", "t1", rv="41"), 0.0, default_duration=15)
    tracker.observe("ns/b", lease("b", "t1", rv="42"), 50.0, default_duration=15)
    assert tracker.silent(100.0, longer_than=60.0) == [("ns/a", "41")]


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=80))
def test_any_identity_gets_a_valid_distinct_lease_name(identity: str) -> None:
    name = member_lease_name("cloudsigma-ccm", identity)
    assert DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 253, name
    assert member_lease_name("cloudsigma-ccm", identity + "x") != name


def test_lease_names_are_readable_and_fleet_names_checked() -> None:
    assert member_lease_name("ccm", "node-1_ab12cd34").startswith("ccm-member-node-1-ab12cd34-")
    assert check_fleet_name("prod-fleet") == "prod-fleet"
    with pytest.raises(ValueError, match="fleet name 'Prod_Fleet' is not usable"):
        check_fleet_name("Prod_Fleet")


async def test_the_judging_loop_stops_when_cancelled_just_as_news_arrives() -> None:
    # Python 3.11's asyncio.wait_for returns the inner result instead of raising when a cancellation meets a
    # completed wait: the loop then runs on forever and the replica never shuts down (seen in the sharding test).
    membership = Membership(cast(KubeTransport, object()), MembershipOptions(namespace="ns", identity="a"),
                            announce=False)
    task = asyncio.create_task(membership._judge_forever())
    await asyncio.sleep(0.05)
    membership._wake.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    if not done:
        task.cancel()
    assert done and task.cancelled(), "the judging loop swallowed its cancellation"
