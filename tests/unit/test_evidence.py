"""Freshness of evidence: systemUUID byte orders, when a Node's evidence must have started, the cache serving
"a listing started after T" to many callers with one listing, and the change trigger."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

from ccm.cloudlabels.decide import LabelPolicy
from ccm.cloudlabels.sync import CloudLabels
from ccm.nodes.changes import RequeueOnChange
from ccm.nodes.evidence import NodeClock, uuid_forms
from ccm.nodes.lifecycle import Pass
from ccm.nodes.matching import MatchKind, match_server
from ccm.nodes.view import node_view
from ccm.servercache import ServerCache, ServerSnapshot, SnapshotExtras
from cloudsigma.client import ServerList
from cloudsigma.models import Server
from tests.unit.factories import UUID1, UUID2, dhcp_nic, node, server

SWAPPED = "33221100-5544-7766-8899-aabbccddeeff"
PLAIN = "00112233-4455-6677-8899-aabbccddeeff"


def snapshot(*servers: Server, at: float = 0.0) -> ServerSnapshot:
    listing = ServerList(servers=servers, total_count=len(servers), request_ids=("rid",), fetched_at=at)
    return ServerSnapshot.from_list(listing, at, SnapshotExtras(tag_names={}, host_groups={}))


def test_system_uuid_is_compared_in_both_byte_orders() -> None:
    assert uuid_forms(PLAIN.upper()) == (PLAIN, SWAPPED)
    assert uuid_forms(SWAPPED) == (SWAPPED, PLAIN)
    assert uuid_forms("not-a-uuid") == ("not-a-uuid",) and uuid_forms("") == ()
    snap = snapshot(server("n1", PLAIN))
    match = match_server(node_view(node("n1", system_uuid=SWAPPED.upper())), snap.by_uuid, snap.by_name)
    assert match.kind is MatchKind.FOUND and match.via == "systemUUID"


def test_a_system_uuid_of_no_server_is_a_mismatch_not_a_name_match() -> None:
    snap = snapshot(server("n1", UUID1))
    view = node_view(node("n1", system_uuid=UUID2))
    assert match_server(view, snap.by_uuid, snap.by_name).kind is MatchKind.SYSTEM_UUID_MISMATCH
    off = match_server(view, snap.by_uuid, snap.by_name, use_system_uuid=False)
    assert off.kind is MatchKind.FOUND and off.via == "name"
    assert match_server(node_view(node("n2", system_uuid=UUID2)), snap.by_uuid, snap.by_name).kind \
        is MatchKind.NO_MATCH


def test_identity_needs_a_listing_after_the_node_was_seen_and_after_its_timestamp() -> None:
    now = [100.0]
    created = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    wall = [created.timestamp() + 0.3]  # seen 0.3 s after the (whole-second) creationTimestamp
    clock = NodeClock(clock=lambda: now[0], wall=lambda: wall[0])
    raw = node("n1")
    view = node_view(raw)
    assert view.created == created
    clock("n1", None, view)
    required = clock.required(view)
    assert required is not None and required.reason == "identity"
    assert abs(required.after - 100.7) < 1e-6  # creationTimestamp + 1 s
    wall[0] += 1000  # a clock far ahead of the API server's never makes a Node wait more than a second
    clock("n2", None, node_view(node("n2")))
    late = clock.required(node_view(node("n2")))
    assert late is not None and late.after == 100.0
    done = node_view(node("n1", tainted=False, provider_id=f"cloudsigma://{UUID1}"))
    clock("n1", view, done)
    assert clock.required(done) is None


def test_a_reboot_requires_a_listing_newer_than_it_once() -> None:
    now = [50.0]
    clock = NodeClock(clock=lambda: now[0])
    up = node_view(node("n1", tainted=False, provider_id=f"cloudsigma://{UUID1}"))
    down = dataclasses.replace(up, ready="False")
    clock("n1", up, down)
    assert clock.required(down) is None
    now[0] = 60.0
    clock("n1", down, up)
    required = clock.required(up)
    assert required is not None and required.reason == "reboot" and required.after == 60.0
    clock.satisfied(up, snapshot(at=59.0))  # older than the reboot: not enough
    assert clock.required(up) is not None
    clock.satisfied(up, snapshot(at=60.5))
    assert clock.required(up) is None
    clock("n1", up, dataclasses.replace(up, boot_id="b2"))
    assert clock.required(up) is None  # no boot id before: nothing to compare
    booted = dataclasses.replace(up, boot_id="b1")
    clock("n1", booted, dataclasses.replace(up, boot_id="b2"))
    assert clock.reboots == 2


class SlowClient:
    def __init__(self) -> None:
        self.calls = 0

    async def list_servers(self, **_: Any) -> ServerList:
        self.calls += 1
        await asyncio.sleep(0.05)
        return ServerList(servers=(server(),), total_count=1, request_ids=(f"r{self.calls}",), fetched_at=0.0)


async def test_a_listing_that_started_too_early_is_not_shared_but_the_next_one_is() -> None:
    client = SlowClient()
    cache = ServerCache(client, probe_interval=None)  # type: ignore[arg-type]
    early = asyncio.ensure_future(cache.refresh())
    await asyncio.sleep(0.01)
    moment = cache.now()  # e.g. the moment a Node was seen: the listing in flight started before it
    late = await asyncio.gather(*(cache.fresh_after(moment) for _ in range(50)))
    assert (await early).fetched_at < moment
    assert client.calls == 2 and all(s is late[0] and s.fetched_at > moment for s in late)


async def test_one_pass_shares_its_confirming_listings() -> None:
    client = SlowClient()
    cache = ServerCache(client, probe_interval=None)  # type: ignore[arg-type]
    await cache.refresh()
    this_pass = Pass(started=cache.now())
    first = [await this_pass.listing(cache) for _ in range(5)]
    second = [await this_pass.listing(cache, 1) for _ in range(5)]
    assert client.calls == 3  # the one before the pass, then one confirming listing and one second listing
    assert first[0].fetched_at > this_pass.started and second[0].fetched_at > first[0].fetched_at


def test_the_change_trigger_covers_addresses_state_and_labels_and_nothing_else() -> None:
    view = node_view(node("n1", tainted=False, provider_id=f"cloudsigma://{UUID1}"))
    queued: list[str] = []
    trigger = RequeueOnChange(nodes=lambda: [view], enqueue=queued.append,
                              labels=CloudLabels(LabelPolicy()).fingerprint)
    base = server("n1", UUID1, nics=[dhcp_nic("94.26.101.1")], meta={"pool": "a"})
    trigger(snapshot(base))
    trigger(snapshot(base))
    assert queued == []  # unchanged
    trigger(snapshot(server("n1", UUID1, nics=[dhcp_nic("94.26.101.2")], meta={"pool": "a"})))
    assert queued == ["n1"]  # address
    trigger(snapshot(server("n1", UUID1, nics=[dhcp_nic("94.26.101.2")], meta={"pool": "a"}, status="stopped")))
    assert queued == ["n1", "n1"]  # running state
    trigger(snapshot(server("n1", UUID1, nics=[dhcp_nic("94.26.101.2")], meta={"pool": "b"}, status="stopped")))
    assert queued == ["n1", "n1", "n1"]  # a mirrored meta key
    trigger(snapshot(server("n1", UUID1, nics=[dhcp_nic("94.26.101.2")], meta={"pool": "b", "x": "y"},
                            status="stopped", cpu=8000)))
    assert len(queued) == 3  # a meta key that is not mirrored, the cpu: nothing a Node shows
