"""How fresh the evidence behind a decision must be, and what each decision's log line says about it.

A server snapshot is a listing that *started* at :attr:`ServerSnapshot.fetched_at` (the cache's monotonic clock).
Some decisions cannot be corrected by a later write (``spec.providerID`` is immutable), so they need evidence that
cannot be older than the Node they are about. :class:`NodeClock` keeps, per Node, the moment after which such
evidence must have started:

- **identity** (a Node without providerID, still tainted): a match *by name* needs a listing that started after the
  Node existed. Proof of that without trusting clocks: the node watcher had already received the Node (a listing
  started after that moment cannot predate it). Also, conservatively, after ``creationTimestamp + 1 s`` (the
  timestamp has whole seconds), capped at one second after the watcher saw it, so a skewed clock delays a Node by
  at most a second and never admits older evidence. A match by systemUUID (the VM's own identity) may come from any
  snapshot holding that uuid: it costs no extra listing.
- **reboot** (Ready turned True after False/Unknown, or ``status.nodeInfo.bootID`` changed): the next check of
  that Node must come from a listing started after the change was seen — a DHCP address may have changed.

Nodes needing fresh evidence share one listing: the cache coalesces every caller whose moment an in-flight or
newer listing satisfies (:meth:`ccm.servercache.ServerCache.fresh_after`).
"""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ccm.nodes.view import NodeView
from ccm.servercache import ServerSnapshot

#: The resolution of ``metadata.creationTimestamp``.
TIMESTAMP_RESOLUTION = 1.0


@dataclass(frozen=True)
class Required:
    """Evidence for ``uid`` must come from a listing started after ``after`` (cache clock) — for ``reason``."""

    uid: str
    after: float
    reason: str  # "identity" | "reboot"


def rebooted(old: NodeView | None, new: NodeView | None) -> bool:
    """The kubelet came back: Ready turned True after False/Unknown, or its boot id changed."""
    if old is None or new is None or old.uid != new.uid:
        return False
    if new.ready == "True" and old.ready in ("False", "Unknown"):
        return True
    return bool(old.boot_id and new.boot_id and old.boot_id != new.boot_id)


def needs_identity(node: NodeView) -> bool:
    """A Node whose providerID is still to be written (the one identity-setting write)."""
    return node.uninitialized and not node.provider_id


class NodeClock:
    """A node watcher handler: the moment after which each Node's next decision must be evidenced.

    Holds an entry only for Nodes awaiting their identity or a post-reboot check (bounded by the number of nodes).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._required: dict[str, Required] = {}
        #: Reboots seen (Ready back to True, or a new boot id).
        self.reboots = 0

    def __call__(self, name: str, old: NodeView | None, new: NodeView | None) -> None:
        if new is None:
            self._required.pop(name, None)
            return
        now = self._clock()
        held = self._required.get(name)
        if held is not None and held.uid != new.uid:
            held = None
            self._required.pop(name, None)
        if needs_identity(new):
            if held is None or held.reason != "identity":
                self._required[name] = Required(new.uid, self._identity_moment(new, now), "identity")
            return
        if held is not None and held.reason == "identity":
            self._required.pop(name, None)  # initialized (or given a providerID by someone): nothing to prove
        if rebooted(old, new):
            self.reboots += 1
            self._required[name] = Required(new.uid, now, "reboot")

    def _identity_moment(self, node: NodeView, seen: float) -> float:
        if node.created is None:
            return seen
        # creationTimestamp + 1 s on this clock; never later than a second after the watcher saw the Node.
        created_plus = seen - (self._wall() - node.created.timestamp()) + TIMESTAMP_RESOLUTION
        return max(seen, min(created_plus, seen + TIMESTAMP_RESOLUTION))

    def required(self, node: NodeView) -> Required | None:
        """What ``node``'s next decision must be evidenced by, if anything; Nodes the watcher has not told us
        about (a direct call) get "now", which is after they existed."""
        held = self._required.get(node.name)
        if held is not None and held.uid == node.uid and (held.reason == "reboot" or needs_identity(node)):
            return held
        if needs_identity(node):
            return Required(node.uid, self._clock(), "identity")
        return None

    def satisfied(self, node: NodeView, snapshot: ServerSnapshot) -> None:
        """A decision about ``node`` was made from ``snapshot``: a reboot's requirement is met by it."""
        held = self._required.get(node.name)
        if held is not None and held.reason == "reboot" and held.uid == node.uid and snapshot.fetched_at > held.after:
            del self._required[node.name]


def uuid_forms(value: str) -> tuple[str, ...]:
    """A systemUUID as written, and with its first three fields byte-swapped (SMBIOS before 2.6, and some
    hypervisors, report them in the other order); lower case. One form if it is no uuid."""
    text = value.strip().lower()
    if not text:
        return ()
    try:
        raw = uuidlib.UUID(text).bytes
    except ValueError:
        return (text,)
    swapped = str(uuidlib.UUID(bytes=raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]))
    return (text,) if swapped == text else (text, swapped)


def evidence_fields(snapshot: ServerSnapshot, now: float, required: Required | None = None) -> dict[str, Any]:
    """What a decision was based on, for its log line: the listing's request ids, how long before now (the write)
    it started, and the moment it had to be newer than."""
    fields: dict[str, Any] = {"evidence_request_ids": list(snapshot.request_ids)[:3],
                              "evidence_age_s": round(now - snapshot.fetched_at, 3)}
    if required is not None and snapshot.fetched_at > required.after:
        fields["evidence_rule"] = (f"listing started {round(snapshot.fetched_at - required.after, 3)} s after "
                                   f"the {required.reason} moment")
    elif required is not None:
        fields["evidence_rule"] = "matched by the VM's own uuid (systemUUID): any snapshot holding it"
    return fields
