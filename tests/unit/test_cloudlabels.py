"""Cloud labels: desired labels from meta, tags and host groups, and the exact change (table tests)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccm.cloudlabels.decide import (
    HOST,
    HOST_GROUP,
    MANAGED_ANNOTATION,
    TAG,
    DesiredLabels,
    LabelPolicy,
    desired_cloud_labels,
    family,
    label_change,
    managed_keys,
    matches,
)
from ccm.cloudlabels.hostgroups import group_id, host_group_ids
from tests.unit.factories import UUID1, UUID2, server

T1, T2, T3 = ("aaaaaaaa-0000-4000-8000-000000000001", "aaaaaaaa-0000-4000-8000-000000000002",
              "aaaaaaaa-0000-4000-8000-000000000003")
TAGS = {T1: "gpu", T2: "team-a", T3: "has space"}
M = "node.cloudsigma.com/meta."
T = "node.cloudsigma.com/tag."


def srv(meta: dict[str, Any] | None = None, tags: list[str] | None = None, status: str = "running",
        uuid: str = UUID1) -> Any:
    return server(uuid=uuid, status=status, meta=meta or {},
                  tags=[{"uuid": t, "resource_uri": f"/api/2.0/tags/{t}/"} for t in tags or []])


# ------------------------------------------------------------------------------------------- desired labels


@pytest.mark.parametrize(("patterns", "name", "hit"), [
    (("pool",), "pool", True),
    (("pool",), "pool2", False),
    (("cs-*",), "cs-zone", True),
    (("cs-*",), "zone", False),
    (("*",), "anything", True),
    ((), "pool", False),
])
def test_matches(patterns: tuple[str, ...], name: str, hit: bool) -> None:
    assert matches(patterns, name) is hit


@pytest.mark.parametrize(("meta", "policy", "labels", "skipped"), [
    # the default policy mirrors pool and cluster only
    ({"pool": "workers", "cluster": "c1", "description": "my server"}, LabelPolicy(host_group=False),
     {M + "pool": "workers", M + "cluster": "c1"}, []),
    # a prefix pattern
    ({"cs-zone": "a", "cs-rack": "r1", "other": "x"}, LabelPolicy(meta_keys=("cs-*",), host_group=False),
     {M + "cs-zone": "a", M + "cs-rack": "r1"}, []),
    # nothing selected
    ({"pool": "workers"}, LabelPolicy(meta_keys=(), host_group=False), {}, []),
    # an empty value is a valid label value
    ({"pool": ""}, LabelPolicy(host_group=False), {M + "pool": ""}, []),
    # invalid values are skipped, naming the key
    ({"pool": "my pool", "cluster": "c" * 64}, LabelPolicy(host_group=False), {}, ["cluster", "pool"]),
    ({"pool": "-x"}, LabelPolicy(host_group=False), {}, ["pool"]),
    # a key that makes no valid label name is skipped too
    ({"a/b": "x", "ok": "y"}, LabelPolicy(meta_keys=("*",), host_group=False), {M + "ok": "y"}, ["a/b"]),
    ({"k" * 32: "x"}, LabelPolicy(meta_keys=("*",), host_group=False), {M + "k" * 32: "x"}, []),
])
def test_meta_labels(meta: dict[str, str], policy: LabelPolicy, labels: dict[str, str],
                     skipped: list[str]) -> None:
    got = desired_cloud_labels(srv(meta), policy, tag_names=None, host_groups=None)
    assert dict(got.labels) == labels
    assert sorted(s.name for s in got.skipped) == skipped
    assert all(s.source == "meta" and s.reason for s in got.skipped)
    assert got.unknown == frozenset()


@pytest.mark.parametrize(("tags", "patterns", "tag_names", "labels", "unknown", "skipped"), [
    ([T1, T2], ("*",), TAGS, {T + "gpu": "true", T + "team-a": "true"}, set(), []),
    ([T1, T2], ("team-*",), TAGS, {T + "team-a": "true"}, set(), []),
    ([T1, T3], ("*",), TAGS, {T + "gpu": "true"}, set(), ["has space"]),
    ([], ("*",), TAGS, {}, set(), []),
    # the tag listing failed: tag labels are unknown (left as they are), nothing is decided about them
    ([T1], ("*",), None, {}, {TAG}, []),
    # a reference without a name (a tag created after the listing): unknown as well
    ([T1, "aaaaaaaa-0000-4000-8000-000000000009"], ("*",), TAGS, {}, {TAG}, []),
    # tags not mirrored: no listing is needed, and nothing is unknown
    ([T1], (), None, {}, set(), []),
])
def test_tag_labels(tags: list[str], patterns: tuple[str, ...], tag_names: dict[str, str] | None,
                    labels: dict[str, str], unknown: set[str], skipped: list[str]) -> None:
    policy = LabelPolicy(meta_keys=(), tags=patterns, host_group=False)
    got = desired_cloud_labels(srv(tags=tags), policy, tag_names=tag_names, host_groups=None)
    assert dict(got.labels) == labels
    assert got.unknown == unknown
    assert [s.name for s in got.skipped] == skipped


@pytest.mark.parametrize(("status", "groups", "expected", "unknown"), [
    ("running", {UUID1: "g1"}, "g1", set()),
    # running but in no group: alone on its host
    ("running", {UUID2: "g2"}, group_id(UUID1), set()),
    # not running: on no host; keep the last known group
    ("stopped", {UUID1: "g1"}, None, {HOST}),
    # the call failed
    ("running", None, None, {HOST}),
])
def test_host_group_label(status: str, groups: dict[str, str] | None, expected: str | None,
                          unknown: set[str]) -> None:
    policy = LabelPolicy(meta_keys=())
    got = desired_cloud_labels(srv(status=status), policy, tag_names=None, host_groups=groups)
    assert got.labels.get(HOST_GROUP) == expected
    assert got.unknown == unknown


def test_host_group_off() -> None:
    got = desired_cloud_labels(srv(), LabelPolicy(meta_keys=(), host_group=False), tag_names=None,
                               host_groups={UUID1: "g1"})
    assert dict(got.labels) == {} and got.unknown == frozenset()


# ------------------------------------------------------------------------------------------- host groups


def test_host_groups_are_merged_and_named_by_their_smallest_member() -> None:
    a, b, c, d = (f"{i}0000000-0000-4000-8000-000000000000" for i in "1234")
    # The docs' example lists a group once per member; arrays sharing a member are one host.
    ids = host_group_ids([[b, a], [a, b], [c], [d, c], [b.upper()]])
    assert ids[a] == ids[b] == group_id(a)
    assert ids[c] == ids[d] == group_id(c)
    assert ids[a] != ids[c]
    assert len(group_id(a)) == 16 and group_id(a) == group_id(a.upper())
    # Stable while the smallest member stays: a newcomer or a leaver does not rename the group.
    assert host_group_ids([[a, b, d]])[a] == ids[a]
    assert host_group_ids([[b, d]])[b] != ids[b]  # the smallest member left: another name
    assert host_group_ids([]) == {}


# ------------------------------------------------------------------------------------------- the change


def desired(labels: dict[str, str], unknown: set[str] | None = None) -> DesiredLabels:
    return DesiredLabels(labels=labels, unknown=frozenset(unknown or ()))


def ann(*keys: str) -> dict[str, str]:
    return {MANAGED_ANNOTATION: ",".join(keys)}


@pytest.mark.parametrize(("labels", "annotations", "want", "patch", "ann_patch", "foreign"), [
    # in sync: nothing to write (0 writes per unchanged resync)
    ({M + "pool": "a", "x": "1"}, ann(M + "pool"), desired({M + "pool": "a"}), {}, {}, []),
    # added: the label and the managed-keys annotation
    ({"x": "1"}, {}, desired({M + "pool": "a"}), {M + "pool": "a"}, {MANAGED_ANNOTATION: M + "pool"}, []),
    # changed
    ({M + "pool": "a"}, ann(M + "pool"), desired({M + "pool": "b"}), {M + "pool": "b"}, {}, []),
    # removed: only what the CCM set
    ({M + "pool": "a", M + "cluster": "c"}, ann(M + "pool", M + "cluster"), desired({M + "pool": "a"}),
     {M + "cluster": None}, {MANAGED_ANNOTATION: M + "pool"}, []),
    # all removed: the annotation goes too
    ({M + "pool": "a"}, ann(M + "pool"), desired({}), {M + "pool": None}, {MANAGED_ANNOTATION: None}, []),
    # a label under our prefix the CCM did not set is never changed...
    ({M + "pool": "mine"}, {}, desired({M + "pool": "a"}), {}, {}, [M + "pool"]),
    # ... nor removed
    ({M + "pool": "mine", T + "gpu": "true"}, ann(T + "gpu"), desired({}), {T + "gpu": None},
     {MANAGED_ANNOTATION: None}, []),
    # a managed label someone removed is put back while desired
    ({}, ann(M + "pool"), desired({M + "pool": "a"}), {M + "pool": "a"}, {}, []),
    # a managed label someone removed and no longer desired is forgotten
    ({}, ann(M + "pool"), desired({}), {}, {MANAGED_ANNOTATION: None}, []),
    # an unknown source leaves its labels exactly as they are (still managed)
    ({T + "gpu": "true", HOST_GROUP: "g1"}, ann(T + "gpu", HOST_GROUP), desired({}, {TAG, HOST}), {}, {}, []),
    ({T + "gpu": "true", M + "pool": "a"}, ann(T + "gpu", M + "pool"), desired({}, {TAG}), {M + "pool": None},
     {MANAGED_ANNOTATION: T + "gpu"}, []),
    # an edited annotation cannot make the CCM remove someone else's label
    ({"team": "x", M + "pool": "a"}, ann("team", M + "pool"), desired({M + "pool": "a"}), {},
     {MANAGED_ANNOTATION: M + "pool"}, []),
    # host group moved
    ({HOST_GROUP: "g1"}, ann(HOST_GROUP), desired({HOST_GROUP: "g2"}), {HOST_GROUP: "g2"}, {}, []),
])
def test_label_change(labels: dict[str, str], annotations: dict[str, str], want: DesiredLabels,
                      patch: dict[str, str | None], ann_patch: dict[str, str | None], foreign: list[str]) -> None:
    change = label_change(labels, annotations, want)
    assert dict(change.labels) == patch
    assert dict(change.annotations) == ann_patch
    assert list(change.foreign) == foreign
    assert change.empty is (not patch and not ann_patch)


def test_applying_the_change_converges() -> None:
    """Apply each change as a merge patch would; the next change is empty."""
    labels: dict[str, str] = {M + "pool": "mine-too", "team": "x"}
    annotations: dict[str, str] = {}
    steps = [desired({M + "cluster": "c1", HOST_GROUP: "g1"}), desired({M + "cluster": "c2", HOST_GROUP: "g1"}),
             desired({HOST_GROUP: "g2"}, {TAG}), desired({})]
    for want in steps:
        change = label_change(labels, annotations, want)
        for store, patch in ((labels, change.labels), (annotations, change.annotations)):
            for key, value in patch.items():
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = value
        assert label_change(labels, annotations, want).empty
        assert labels[M + "pool"] == "mine-too" and labels["team"] == "x"  # never touched
    assert annotations == {} and labels == {M + "pool": "mine-too", "team": "x"}


def test_managed_keys_only_counts_our_families() -> None:
    assert managed_keys(ann(M + "a", " ", "team", HOST_GROUP, "node.cloudsigma.com/other")) == {M + "a", HOST_GROUP}


# ------------------------------------------------------------------------------------------- properties

_KEYS = st.sampled_from([M + "pool", M + "cluster", T + "gpu", T + "x", HOST_GROUP, "team", "kubernetes.io/os",
                         "node.cloudsigma.com/other"])
_VALUES = st.sampled_from(["a", "b", "", "true"])


@settings(max_examples=300, deadline=None, database=None)
@given(labels=st.dictionaries(_KEYS, _VALUES), listed=st.sets(_KEYS), wanted=st.dictionaries(_KEYS, _VALUES),
       unknown=st.sets(st.sampled_from([TAG, HOST, "meta"])))
def test_label_change_properties(labels: dict[str, str], listed: set[str], wanted: dict[str, str],
                                 unknown: set[str]) -> None:
    """Whatever the node and the desire: only labels the CCM set (or now sets on a free key) change, unknown
    families stay as they are, and one application converges."""
    wanted = {k: v for k, v in wanted.items() if family(k) is not None}  # what desired_cloud_labels can give
    annotations = {MANAGED_ANNOTATION: ",".join(sorted(listed))} if listed else {}
    want = DesiredLabels(labels=wanted, unknown=frozenset(unknown))
    change = label_change(labels, annotations, want)
    ours_before = managed_keys(annotations)
    for key in change.labels:
        assert key in ours_before or (key in wanted and key not in labels)  # never someone else's label
    for key, value in change.labels.items():
        if value is None:
            assert family(key) not in unknown and key not in wanted
    after = dict(labels)
    after_ann = dict(annotations)
    for store, patch in ((after, change.labels), (after_ann, change.annotations)):
        for key, value in patch.items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
    assert label_change(after, after_ann, want).empty
    for key in labels.keys() - ours_before:
        assert after.get(key) == labels[key]
