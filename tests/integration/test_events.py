"""Events against the real kube-apiserver: one object per (node, reason), its count and lastTimestamp updated."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client import ApiClient

from ccm.kube.events import REQUEST_ID_ANNOTATION, EventRecorder, ObjectEvent
from ccm.kube.transport import KubeTransport
from tests.integration.harness import events_for, node_json
from tests.realenv.nodes import register_node

pytestmark = pytest.mark.usefixtures("clean_nodes")


async def test_a_repeated_reason_updates_one_event(kube_api: ApiClient) -> None:
    await register_node(kube_api, "evented")
    node = await node_json(kube_api, "evented")
    kube = KubeTransport(kube_api)
    recorder = EventRecorder(kube)
    for attempt in range(5):
        message = "cannot initialize: status=503" if attempt < 3 else "cannot initialize: status=500"
        recorder.record(node, ObjectEvent.warning("CloudSigmaUnavailable", message, request_id=f"rid-{attempt}"))
        await recorder.flush()
    recorder.record(node, ObjectEvent.normal("Synced", "initialized"))
    await recorder.flush()
    events = await events_for(kube_api, "evented")
    warnings = [e for e in events if e["reason"] == "CloudSigmaUnavailable"]
    assert len(warnings) == 1, f"{len(warnings)} objects for one (node, reason)"
    warning = warnings[0]
    assert warning["count"] == 5 and warning["type"] == "Warning"
    assert warning["message"] == "cannot initialize: status=500"  # the latest words
    assert warning["lastTimestamp"] >= warning["firstTimestamp"]
    assert warning["metadata"]["annotations"][REQUEST_ID_ANNOTATION] == "rid-4"
    assert [e["reason"] for e in events].count("Synced") == 1
    assert kube.writes == {"POST events": 2, "PATCH events": 4}

    # a burst recorded faster than it is written is folded into a few writes
    for _ in range(20):
        recorder.record(node, ObjectEvent.warning("Burst", "the same thing again"))
    await recorder.flush()
    burst = [e for e in await events_for(kube_api, "evented") if e["reason"] == "Burst"]
    assert len(burst) == 1 and burst[0]["count"] == 20
    assert kube.writes["POST events"] + kube.writes["PATCH events"] <= 2 + 4 + 3

    # the object expired on the API server (event TTL): the next occurrence starts a new one
    await kube.request("DELETE", f"/api/v1/namespaces/default/events/{warning['metadata']['name']}")
    recorder.record(node, ObjectEvent.warning("CloudSigmaUnavailable", "cannot initialize: status=500"))
    await recorder.flush()
    again = [e for e in await events_for(kube_api, "evented") if e["reason"] == "CloudSigmaUnavailable"]
    assert len(again) == 1 and again[0]["count"] == 6
