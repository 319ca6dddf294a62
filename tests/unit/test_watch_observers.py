"""NodeWatcher.observe tells its observers of the writes whose watch events it will drop."""

from __future__ import annotations

from typing import Any, cast

from ccm.kube.transport import KubeTransport
from ccm.nodes.view import NodeView, node_view
from ccm.nodes.watching import NodeWatcher
from tests.unit.factories import node


def versioned(rv: str, **kwargs: Any) -> dict[str, Any]:
    obj = node("node-1", **kwargs)
    obj["metadata"]["resourceVersion"] = rv
    return obj


def test_observe_tells_observers_of_newer_versions_only() -> None:
    watcher = NodeWatcher(cast(KubeTransport, None))  # never run: only the store is used
    seen: list[tuple[str, str, str]] = []

    def observer(name: str, old: NodeView | None, new: NodeView) -> None:
        seen.append((name, old.resource_version if old else "", new.resource_version))

    watcher.add_observer(observer)
    watcher.store["node-1"] = node_view(versioned("5"))

    watcher.observe(versioned("6", tainted=False))  # our write: the node is initialized now
    watcher.observe(versioned("4"))  # an older answer never moves the store back, nor tells anyone
    watcher.observe({"metadata": {"name": "unknown", "resourceVersion": "9"}})  # not in the store: not ours

    assert seen == [("node-1", "5", "6")]
    stored = watcher.store["node-1"]
    assert stored.resource_version == "6" and not stored.uninitialized, "the store holds the record of the answer"


def test_a_failing_observer_does_not_fail_the_write() -> None:
    watcher = NodeWatcher(cast(KubeTransport, None))
    watcher.store["node-1"] = node_view(versioned("5"))

    def broken(*_: object) -> None:
        raise RuntimeError("bug")

    watcher.add_observer(broken)
    watcher.observe(versioned("6"))
    assert watcher.store["node-1"].resource_version == "6"
