"""Cloud labels around the pure decisions: settings, the snapshot's extras, the refresh trigger, warnings."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
import structlog

from ccm.cli import parse
from ccm.cloudlabels.decide import META_PREFIX, DesiredLabels, LabelChange, LabelPolicy, Skipped
from ccm.cloudlabels.sources import LabelSources
from ccm.cloudlabels.sync import CloudLabels, policy_from_settings
from ccm.config import ConfigError, load_settings
from ccm.nodes.changes import RequeueOnChange
from ccm.nodes.view import node_view
from ccm.servercache import ServerCache, ServerSnapshot, SnapshotExtras
from cloudsigma.client import ServerList, TagList
from cloudsigma.errors import CallContext, ServerError
from cloudsigma.models import Server, Tag
from tests.unit.factories import UUID1, UUID2, node, server

BASE = {"region": "zrh", "username": "ops@example.com", "password": "pw-123456"}


# ------------------------------------------------------------------------------------------- settings


def test_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    policy = policy_from_settings(load_settings(BASE))
    assert policy == LabelPolicy(meta_keys=("pool", "cluster"), tags=(), host_group=True)
    assert not policy.wants_tags


@pytest.mark.parametrize(("raw", "parsed"), [
    ("gpu, team-* ,", ["gpu", "team-*"]), ("*", ["*"]), ("none", []), ("NONE", []),
])
def test_label_patterns_from_env_and_flags(clean_env: pytest.MonkeyPatch, raw: str, parsed: list[str]) -> None:
    clean_env.setenv("CLOUDSIGMA_NODE_LABEL_TAGS", raw)
    clean_env.setenv("CLOUDSIGMA_NODE_LABEL_META_KEYS", raw)
    settings = load_settings(BASE)
    assert settings.node_label_tags == parsed and settings.node_label_meta_keys == parsed
    clean_env.setenv("CLOUDSIGMA_NODE_LABEL_META_KEYS", "other")
    _, flags = parse(["run", f"--node-label-meta-keys={raw}", "--node-label-host-group=false"])
    settings = load_settings(BASE | flags)
    assert settings.node_label_meta_keys == parsed and settings.node_label_host_group is False  # flags win


def test_a_star_inside_a_name_is_one_clear_line(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(BASE | {"node_label_tags": "te*am"})
    message = str(exc.value)
    assert "\n" not in message
    assert "CLOUDSIGMA_NODE_LABEL_TAGS / --node-label-tags" in message
    assert "a '*' may only end a name" in message
    assert "te*am" not in message  # configuration errors never echo the rejected value (issue 14)


# ------------------------------------------------------------------------------------------- snapshot extras


class FakeClient:
    def __init__(self) -> None:
        self.listings = self.tag_calls = self.group_calls = 0
        self.fail_listing = self.fail_tags = self.fail_groups = False
        self.tags: dict[str, str] = {}
        self.groups: tuple[tuple[str, ...], ...] = ()

    async def list_servers(self, **_: Any) -> ServerList:
        self.listings += 1
        await asyncio.sleep(0.02)
        if self.fail_listing:
            raise ServerError("listing failed", status=503)
        return ServerList(servers=(server(),), total_count=1, request_ids=("r",), fetched_at=0.0)

    async def list_tags(self) -> TagList:
        self.tag_calls += 1
        await asyncio.sleep(0.01)
        if self.fail_tags:
            raise ServerError("tags failed", status=503, context=CallContext(request_id="rid-t"))
        return TagList(tags=tuple(Tag(uuid=u, name=n) for u, n in self.tags.items()), total_count=len(self.tags),
                       request_ids=("t",))

    async def server_availability_groups(self) -> tuple[tuple[str, ...], ...]:
        self.group_calls += 1
        if self.fail_groups:
            raise ServerError("groups failed", status=500, context=CallContext(request_id="rid-g"))
        return self.groups


T1 = "aaaaaaaa-0000-4000-8000-000000000001"


async def test_one_extras_fetch_per_refresh_however_many_callers() -> None:
    client = FakeClient()
    client.tags = {T1: "gpu"}
    client.groups = ((UUID1, UUID2),)
    sources = LabelSources(client, LabelPolicy(tags=("*",)))  # type: ignore[arg-type]
    cache = ServerCache(client, max_age=10, extras=sources)  # type: ignore[arg-type]
    snaps = await asyncio.gather(*(cache.get() for _ in range(200)))
    assert client.listings == client.tag_calls == client.group_calls == 1
    snap = snaps[0]
    assert snap.tag_names == {T1: "gpu"}
    assert snap.host_groups is not None and snap.host_groups[UUID1] == snap.host_groups[UUID2]
    await cache.refresh()
    assert client.listings == client.tag_calls == client.group_calls == 2


async def test_only_the_calls_the_policy_needs() -> None:
    client = FakeClient()
    sources = LabelSources(client, LabelPolicy(tags=(), host_group=False))  # type: ignore[arg-type]
    assert not sources.needed
    extras = await sources()
    assert extras == SnapshotExtras() and client.tag_calls == client.group_calls == 0
    extras = await LabelSources(client, LabelPolicy(tags=(), host_group=True))()  # type: ignore[arg-type]
    assert extras.tag_names is None and extras.host_groups == {} and client.tag_calls == 0


async def test_failing_extras_never_fail_the_listing_and_are_logged_once() -> None:
    client = FakeClient()
    client.fail_tags = client.fail_groups = True
    sources = LabelSources(client, LabelPolicy(tags=("*",)))  # type: ignore[arg-type]
    cache = ServerCache(client, max_age=10, extras=sources)  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            snap = await cache.refresh()
            assert len(snap.servers) == 1 and snap.tag_names is None and snap.host_groups is None
        client.fail_tags = client.fail_groups = False
        snap = await cache.refresh()
    assert snap.tag_names == {} and snap.host_groups == {}
    failed = [e for e in logs if e["event"] == "cloud_label_source_failed"]
    assert sorted((e["source"], e["request_id"]) for e in failed) == [("host_groups", "rid-g"), ("tags", "rid-t")]
    assert sorted(e["source"] for e in logs if e["event"] == "cloud_label_source_recovered") == ["host_groups",
                                                                                                "tags"]


async def test_a_broken_extras_hook_costs_nothing_but_its_facts() -> None:
    client = FakeClient()

    async def broken() -> SnapshotExtras:
        raise RuntimeError("bug")

    cache = ServerCache(client, max_age=10, extras=broken)  # type: ignore[arg-type]
    snap = await cache.refresh()
    assert len(snap.servers) == 1 and snap.tag_names is None


async def test_a_failed_listing_makes_no_extra_call() -> None:
    client = FakeClient()
    client.fail_listing = True
    sources = LabelSources(client, LabelPolicy(tags=("*",)))  # type: ignore[arg-type]
    cache = ServerCache(client, max_age=10, extras=sources, probe_interval=None)  # type: ignore[arg-type]
    for _ in range(3):
        with pytest.raises(ServerError):
            await cache.refresh()
    assert client.listings == 3 and client.tag_calls == client.group_calls == 0
    client.fail_listing = False
    await cache.refresh()
    assert client.listings == 4 and client.tag_calls == client.group_calls == 1


async def test_refresh_listeners_see_every_snapshot_and_cannot_break_it() -> None:
    client = FakeClient()
    cache = ServerCache(client, max_age=10)  # type: ignore[arg-type]
    seen: list[ServerSnapshot] = []

    def broken(_: ServerSnapshot) -> None:
        raise RuntimeError("bug")

    cache.add_refresh_listener(broken)
    cache.add_refresh_listener(seen.append)
    first = await cache.refresh()
    second = await cache.refresh()
    assert seen == [first, second]


# ------------------------------------------------------------------------------------------- refresh trigger


def snapshot(*servers: Server, groups: Mapping[str, str] | None = None) -> ServerSnapshot:
    listing = ServerList(servers=servers, total_count=len(servers), request_ids=(), fetched_at=0.0)
    return ServerSnapshot.from_list(listing, 0.0, SnapshotExtras(host_groups=groups))


def test_trigger_queues_only_initialized_nodes_whose_labels_changed() -> None:
    nodes = [node_view(node("n1", tainted=False, provider_id=f"cloudsigma://{UUID1}")),
             node_view(node("n2", tainted=False, provider_id=f"cloudsigma://{UUID2}")),
             node_view(node("n3", tainted=True, provider_id=f"cloudsigma://{UUID1}")),  # being initialized
             node_view(node("n4", tainted=False, provider_id="aws:///i-1"))]
    queued: list[str] = []
    trigger = RequeueOnChange(nodes=lambda: nodes, enqueue=queued.append,
                              labels=CloudLabels(LabelPolicy()).fingerprint)
    s1 = server(uuid=UUID1, meta={"pool": "a", "other": "x"})
    s2 = server(name="node-2", uuid=UUID2, meta={"pool": "b"})
    trigger(snapshot(s1, s2, groups={UUID1: "g1", UUID2: "g2"}))
    assert queued == []  # the first snapshot: everything is being reconciled anyway
    trigger(snapshot(server(uuid=UUID1, meta={"pool": "a", "other": "changed"}), s2,
                     groups={UUID1: "g1", UUID2: "g2"}))
    assert queued == []  # a meta key that is not mirrored changed: nothing to do
    trigger(snapshot(server(uuid=UUID1, meta={"pool": "c"}), s2, groups={UUID1: "g1", UUID2: "g2"}))
    assert queued == ["n1"]
    trigger(snapshot(server(uuid=UUID1, meta={"pool": "c"}), s2, groups={UUID1: "g1", UUID2: "g9"}))
    assert queued == ["n1", "n2"]  # moved to another host


# ------------------------------------------------------------------------------------------- warnings


def test_skipped_keys_are_reported_once_per_change() -> None:
    labels = CloudLabels(LabelPolicy())
    bad = DesiredLabels(skipped=(Skipped("meta", "pool", "bad value"),))
    foreign = LabelChange(foreign=(META_PREFIX + "zone",))
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            labels.report("n1", UUID1, bad, LabelChange())
        labels.report("n1", UUID1, bad, foreign)
        labels.report("n1", UUID1, DesiredLabels(), LabelChange())  # fixed
        labels.report("n1", UUID1, bad, LabelChange())  # broken again
    events = [(e["event"], e.get("key") or e.get("label")) for e in logs]
    assert events == [("cloud_label_skipped", "pool"), ("cloud_label_skipped", "pool"),
                      ("cloud_label_left_alone", META_PREFIX + "zone"), ("cloud_label_skipped", "pool")]
    labels.forget("n1")
