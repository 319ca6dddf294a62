"""Kubernetes Events, one object per (object, reason): a repeat updates ``count``/``lastTimestamp``.

A retry loop (a node waiting through a CloudSigma outage) therefore shows up as one Event that reads
"x12 over 3m", never as a new object per attempt. Messages must not carry per-attempt values (request ids,
counters, timestamps) — those go to the log and, if useful, to the Event's annotations. Sending happens in the
background with at most one write in flight per series: repeats recorded meanwhile are folded into the next
write. Events are best-effort; the log line is the record.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from cachetools import TTLCache

from ccm.kube.errors import KubeError, KubeNotFound
from ccm.kube.permissions import EVENTS_NAMESPACE
from ccm.kube.transport import KubeTransport

log = structlog.get_logger(__name__)

COMPONENT = "cloudsigma-cloud-controller-manager"
MERGE_PATCH = "application/merge-patch+json"
#: Annotation of an Event naming the CloudSigma request id of the latest occurrence (messages never do).
REQUEST_ID_ANNOTATION = "cloudsigma-ccm/request-id"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ObjectEvent:
    """What to tell an operator about an object: the same text every time the same thing happens."""

    type: str  # "Normal" or "Warning"
    reason: str
    message: str
    #: Facts of the latest occurrence (request ids...) kept out of the message so repeats stay one Event.
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def warning(cls, reason: str, message: str, **annotations: str | None) -> ObjectEvent:
        return cls("Warning", reason, message, _clean(annotations))

    @classmethod
    def normal(cls, reason: str, message: str, **annotations: str | None) -> ObjectEvent:
        return cls("Normal", reason, message, _clean(annotations))


def _clean(annotations: Mapping[str, str | None]) -> dict[str, str]:
    names = {"request_id": REQUEST_ID_ANNOTATION}
    return {names.get(k, k): v for k, v in annotations.items() if v}


def node_ref(node: Mapping[str, Any]) -> dict[str, str]:
    """The involvedObject of an Event about a Node (given as the API's JSON)."""
    meta = node.get("metadata") or {}
    return {"kind": "Node", "name": str(meta.get("name", "")), "uid": str(meta.get("uid", "")), "apiVersion": "v1"}


@dataclass
class _Series:
    ref: dict[str, str]
    event: ObjectEvent
    count: int
    first: str
    last: str
    name: str = ""  # the Event object's name once created
    dirty: bool = True
    task: asyncio.Task[None] | None = None


class EventRecorder:
    """Records Events in ``namespace`` (``default``: where events about cluster-scoped objects live)."""

    def __init__(self, kube: KubeTransport, *, namespace: str = EVENTS_NAMESPACE, series_ttl: float = 3000.0,
                 host: str = "") -> None:
        self._kube = kube
        self._namespace = namespace
        self._host = host
        # Under the API server's default event TTL (1 h), so an update rarely meets an expired object.
        self._series: TTLCache[tuple[str, str, str], _Series] = TTLCache(maxsize=10_000, ttl=series_ttl)
        self._pending: set[asyncio.Task[None]] = set()
        self._sending = asyncio.Semaphore(8)
        #: Event objects created and updated (tests and benchmarks read them).
        self.created = 0
        self.updated = 0

    def record(self, node: Mapping[str, Any], event: ObjectEvent) -> None:
        """Record ``event`` about a Node in the background: a reconcile does not wait for the round trip."""
        self.record_for(node_ref(node), event)

    def record_for(self, ref: Mapping[str, str], event: ObjectEvent) -> None:
        """Record ``event`` about the object ``ref`` (an involvedObject: kind, name, uid, apiVersion)."""
        self._note(ref, event)

    async def emit(self, node: Mapping[str, Any], event: ObjectEvent) -> None:
        """Record ``event`` about a Node and wait until it is written (before an irreversible action)."""
        await self.emit_for(node_ref(node), event)

    async def emit_for(self, ref: Mapping[str, str], event: ObjectEvent) -> None:
        """Record ``event`` about the object ``ref`` and wait until it is written."""
        series = self._note(ref, event)
        if series.task is not None:
            await asyncio.wait({series.task})

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for events still being sent: on shutdown, so the last ones are not lost."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)

    def _note(self, ref: Mapping[str, str], event: ObjectEvent) -> _Series:
        key = (ref.get("kind", ""), ref.get("uid") or ref.get("name", ""), event.reason)
        now = _now()
        series = self._series.get(key)
        if series is None:
            series = _Series(ref=dict(ref), event=event, count=1, first=now, last=now)
            self._series[key] = series
        else:
            series.event, series.count, series.last, series.dirty = event, series.count + 1, now, True
        if series.task is None or series.task.done():
            task = asyncio.get_running_loop().create_task(self._flush(series))
            series.task = task
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return series

    async def _flush(self, series: _Series) -> None:
        async with self._sending:
            recreated = False
            while series.dirty:
                series.dirty = False
                try:
                    if not series.name:
                        await self._create(series)
                    else:
                        await self._update(series)
                except KubeNotFound:
                    if recreated:
                        return
                    # The object expired on the API server (event TTL): start a new one.
                    series.name, series.dirty, recreated = "", True, True
                except KubeError as exc:
                    log.warning("event_not_recorded", object=series.ref.get("name"), reason=series.event.reason,
                                **exc.log_fields())
                    return

    async def _create(self, series: _Series) -> None:
        name = f"{series.ref.get('name', 'object')}.{uuid.uuid4().hex[:16]}"
        event = series.event
        namespace = self._namespace_of(series)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace, "annotations": dict(event.annotations)},
            "involvedObject": series.ref,
            "reason": event.reason,
            "message": event.message[:1024],
            "type": event.type,
            "source": {"component": COMPONENT, "host": self._host},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._host or COMPONENT,
            "firstTimestamp": series.first,
            "lastTimestamp": series.last,
            "count": series.count,
        }
        await self._kube.request("POST", f"/api/v1/namespaces/{namespace}/events", body=body)
        series.name = name
        self.created += 1

    def _namespace_of(self, series: _Series) -> str:
        """An Event about a namespaced object (a Service) lives in its namespace; others in ``namespace``."""
        return series.ref.get("namespace") or self._namespace

    async def _update(self, series: _Series) -> None:
        event = series.event
        patch: dict[str, Any] = {"count": series.count, "lastTimestamp": series.last, "message": event.message[:1024],
                                 "type": event.type}
        if event.annotations:
            patch["metadata"] = {"annotations": dict(event.annotations)}
        await self._kube.request("PATCH", f"/api/v1/namespaces/{self._namespace_of(series)}/events/{series.name}",
                                 body=patch,
                                 content_type=MERGE_PATCH)
        self.updated += 1
