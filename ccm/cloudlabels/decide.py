"""Which cloud labels a node should carry, and the change that gets it there. Pure functions.

- ``node.cloudsigma.com/meta.<key>`` = the server's ``meta[key]``, for keys the policy selects;
- ``node.cloudsigma.com/tag.<name>`` = ``true``, for the server's tags whose name the policy selects;
- ``node.cloudsigma.com/host-group`` = an opaque id shared by the servers on one physical host.

The keys the CCM set are kept in the annotation ``node.cloudsigma.com/managed-labels`` (comma-separated), so
removal is exact: a label the CCM did not set is never changed or removed, even under our prefix. A value that
is not a valid label value (or a key that makes no valid label name) is skipped and reported. When a source is
unknown this round (the tag listing or the availability groups failed, a tag reference has no name, the server
is not running so it is on no host), the labels of that family are left exactly as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ccm.cloudlabels.hostgroups import group_id
from ccm.nodes.labels import CLOUD_LABEL_PREFIX, MANAGED_LABELS_ANNOTATION
from cloudsigma.models import Server

PREFIX = CLOUD_LABEL_PREFIX
META_PREFIX = PREFIX + "meta."
TAG_PREFIX = PREFIX + "tag."
HOST_GROUP = PREFIX + "host-group"
MANAGED_ANNOTATION = MANAGED_LABELS_ANNOTATION
TAG_VALUE = "true"

META, TAG, HOST = "meta", "tag", "host-group"

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def valid_label_name(name: str) -> bool:
    """The part of a label key after the ``prefix/``: at most 63 characters of ``[A-Za-z0-9-_.]``, alphanumeric
    at both ends."""
    return len(name) <= 63 and bool(_NAME.match(name))


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_VALUE.match(value))


def matches(patterns: Iterable[str], name: str) -> bool:
    """``name`` is one of ``patterns``; a pattern ending in ``*`` matches by prefix (``*`` alone: anything)."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return True
        elif name == pattern:
            return True
    return False


@dataclass(frozen=True)
class LabelPolicy:
    """What is mirrored: settings ``--node-label-meta-keys``, ``--node-label-tags``, ``--node-label-host-group``."""

    meta_keys: tuple[str, ...] = ("pool", "cluster")
    tags: tuple[str, ...] = ()
    host_group: bool = True

    @property
    def wants_tags(self) -> bool:
        """Tag names are needed (one ``GET /tags/`` per snapshot)."""
        return bool(self.tags)


@dataclass(frozen=True)
class Skipped:
    """A meta key or tag that selected a label the node cannot carry."""

    source: str  # "meta" or "tag"
    name: str  # the meta key or tag name
    reason: str


@dataclass(frozen=True)
class DesiredLabels:
    """The cloud labels a node should carry."""

    labels: Mapping[str, str] = field(default_factory=dict)
    #: Families (``meta``, ``tag``, ``host-group``) whose source is unknown this round: left as they are.
    unknown: frozenset[str] = frozenset()
    skipped: tuple[Skipped, ...] = ()


def family(key: str) -> str | None:
    """The family of one of our label keys, None for any other key."""
    if key.startswith(META_PREFIX):
        return META
    if key.startswith(TAG_PREFIX):
        return TAG
    if key == HOST_GROUP:
        return HOST
    return None


def desired_cloud_labels(server: Server, policy: LabelPolicy, *, tag_names: Mapping[str, str] | None,
                         host_groups: Mapping[str, str] | None) -> DesiredLabels:
    """The labels ``server``'s node should carry. ``tag_names``: tag uuid → name (None: the listing failed or
    was not made); ``host_groups``: server uuid → host group id (None: likewise)."""
    labels: dict[str, str] = {}
    unknown: set[str] = set()
    skipped: list[Skipped] = []
    for key, value in sorted(server.meta.items()):
        if not matches(policy.meta_keys, key):
            continue
        if not valid_label_name("meta." + key):
            skipped.append(Skipped(META, key, "the key makes no valid label name (at most 58 characters of "
                                              "letters, digits, '-', '_' and '.', alphanumeric at both ends)"))
        elif not valid_label_value(value):
            skipped.append(Skipped(META, key, f"the value {value[:80]!r} is not a valid label value (at most 63 "
                                              "characters of letters, digits, '-', '_' and '.', alphanumeric at "
                                              "both ends)"))
        else:
            labels[META_PREFIX + key] = value
    if policy.wants_tags:
        names = None if tag_names is None else [tag_names.get(ref.uuid.lower()) for ref in server.tags]
        if names is None or any(n is None for n in names):
            unknown.add(TAG)  # a tag we cannot name might be one a label stands for: change nothing
        else:
            for name in sorted({n for n in names if n is not None}):
                if not matches(policy.tags, name):
                    continue
                if valid_label_name("tag." + name):
                    labels[TAG_PREFIX + name] = TAG_VALUE
                else:
                    skipped.append(Skipped(TAG, name, "the name makes no valid label name (at most 59 characters "
                                                      "of letters, digits, '-', '_' and '.', alphanumeric at both "
                                                      "ends)"))
    if policy.host_group:
        if host_groups is None or server.status != "running":
            unknown.add(HOST)  # a server that is not running is on no host: keep the last known group
        else:
            # A running server in no group shares its host with none of the user's servers.
            labels[HOST_GROUP] = host_groups.get(server.uuid.lower()) or group_id(server.uuid)
    return DesiredLabels(labels=labels, unknown=frozenset(unknown), skipped=tuple(skipped))


def managed_keys(annotations: Mapping[str, str]) -> frozenset[str]:
    """The label keys the CCM set, from its annotation; only keys of our families count (an edited annotation
    cannot make the CCM remove someone else's label)."""
    raw = annotations.get(MANAGED_ANNOTATION, "")
    return frozenset(k for k in (p.strip() for p in raw.split(",")) if k and family(k) is not None)


@dataclass(frozen=True)
class LabelChange:
    """A merge patch for labels (None: remove) and the managed-keys annotation; empty when in sync."""

    labels: Mapping[str, str | None] = field(default_factory=dict)
    annotations: Mapping[str, str | None] = field(default_factory=dict)
    #: Our keys already on the node that the CCM did not set: never touched.
    foreign: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.labels and not self.annotations


def label_change(labels: Mapping[str, str], annotations: Mapping[str, str], desired: DesiredLabels) -> LabelChange:
    """What to write so the node carries ``desired`` — touching only labels the CCM set or now sets."""
    managed = managed_keys(annotations)
    patch: dict[str, str | None] = {}
    keep: set[str] = set()
    foreign: list[str] = []
    for key, value in desired.labels.items():
        if key in labels and key not in managed:
            foreign.append(key)
            continue
        keep.add(key)
        if labels.get(key) != value:
            patch[key] = value
    for key in managed - desired.labels.keys():
        if key not in labels:
            continue  # removed by someone else: forget it
        if family(key) in desired.unknown:
            keep.add(key)  # its source is unknown this round: leave it as it is
        else:
            patch[key] = None
    current = annotations.get(MANAGED_ANNOTATION)
    listed = None if current is None else {p.strip() for p in current.split(",") if p.strip()}
    ann: dict[str, str | None] = {}
    if keep != (listed or set()) or (listed == set() and not keep):
        ann[MANAGED_ANNOTATION] = ",".join(sorted(keep)) or None  # in another order is the same list: no write
    return LabelChange(labels=patch, annotations=ann, foreign=tuple(sorted(foreign)))
