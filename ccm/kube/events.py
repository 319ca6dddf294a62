"""Kubernetes Events about Nodes, de-duplicated so a retry loop does not flood the API."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from cachetools import TTLCache

from ccm.kube.errors import KubeError
from ccm.kube.permissions import EVENTS_NAMESPACE
from ccm.kube.transport import KubeTransport

log = structlog.get_logger(__name__)

COMPONENT = "cloudsigma-cloud-controller-manager"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventRecorder:
    """Creates core/v1 Events for Nodes; the same (node, reason, message) at most once per ``repeat_after``."""

    def __init__(self, kube: KubeTransport, *, namespace: str = EVENTS_NAMESPACE, repeat_after: float = 300.0,
                 host: str = "") -> None:
        self._kube = kube
        self._namespace = namespace
        self._host = host
        self._recent: TTLCache[tuple[str, str, str], float] = TTLCache(maxsize=10_000, ttl=repeat_after)
        self.emitted = 0
        self._pending: set[asyncio.Task[None]] = set()
        self._sending = asyncio.Semaphore(8)

    def record(self, node: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Send an event in the background: a reconcile does not wait for the round trip."""
        task = asyncio.get_running_loop().create_task(self._send_bounded(node, type_, reason, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_bounded(self, node: dict[str, Any], type_: str, reason: str, message: str) -> None:
        async with self._sending:
            await self.node_event(node, type_, reason, message)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for events still being sent: on shutdown, so the last ones are not lost."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)

    async def node_event(self, node: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an event; never raises (events are best-effort, the log line is the record)."""
        meta = node.get("metadata") or {}
        name = str(meta.get("name", ""))
        key = (name, reason, message)
        if key in self._recent:
            return
        self._recent[key] = time.monotonic()
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": self._namespace},
            "involvedObject": {"kind": "Node", "name": name, "uid": meta.get("uid", ""), "apiVersion": "v1"},
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": COMPONENT, "host": self._host},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._host or COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._kube.request("POST", f"/api/v1/namespaces/{self._namespace}/events", body=body)
            self.emitted += 1
        except KubeError as exc:
            self._recent.pop(key, None)
            log.warning("event_not_recorded", node=name, reason=reason, **exc.log_fields())
