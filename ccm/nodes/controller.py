"""The node controller: watch events → de-duplicating queue → N workers → reconcile.

Initialized nodes are re-queued every ``resync_period`` (addresses from the shared snapshot); failures are
retried with per-node exponential backoff — except that nodes waiting for CloudSigma (an outage, a rate-limit
window, a listing of the wrong account) are re-queued at once when it is back (:meth:`NodeController.cloud_is_back`),
not when their backoff happens to end. A MODIFIED event only queues a node when something the controller decides
on changed (kubelet heartbeats don't). ``cloudsigma_ccm_nodes_uninitialized`` counts the nodes still tainted.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from ccm.metrics import Metrics
from ccm.nodes.reconcile import NodeReconciler, Result
from ccm.nodes.view import NodeView
from ccm.nodes.watching import NodeWatcher
from ccm.workqueue import Next, WorkQueue, run_worker

log = structlog.get_logger(__name__)


def fingerprint(node: NodeView | None) -> tuple[Any, ...]:
    """What the controllers decide on; a change to anything else (heartbeats, images) is ignored."""
    if node is None:
        return ()
    taints = tuple(sorted((str(t.get("key")), str(t.get("effect"))) for t in node.taints))
    return (node.uid, node.provider_id, taints, node.addresses, node.ready, tuple(sorted(node.annotations.items())),
            tuple(sorted(node.labels.items())), node.system_uuid, node.boot_id)


class NodeController:
    def __init__(self, watcher: NodeWatcher, reconciler: NodeReconciler, *, workers: int, resync_period: float,
                 metrics: Metrics, queue: WorkQueue | None = None) -> None:
        self._watcher = watcher
        self._reconciler = reconciler
        self._workers = workers
        self._resync = resync_period
        self._metrics = metrics
        self.queue = queue if queue is not None else WorkQueue(base_delay=1.0, max_delay=300.0)  # empty is falsy
        self._tasks: list[asyncio.Task[None]] = []
        #: Nodes whose last reconcile waited for CloudSigma (bounded by the number of nodes).
        self._waiting_for_cloud: set[str] = set()
        self._uninitialized: set[str] = set()
        watcher.add_handler(self._on_event)

    def _on_event(self, name: str, old: NodeView | None, new: NodeView | None) -> None:
        if new is None:
            self.queue.remove(name)
            self._waiting_for_cloud.discard(name)
        elif old is None or fingerprint(old) != fingerprint(new):
            self.queue.add(name)
        self._track_taint(name, new)
        self._metrics.queue_depth.set(len(self.queue))

    def _track_taint(self, name: str, node: NodeView | None) -> None:
        if node is not None and node.uninitialized:
            self._uninitialized.add(name)
        else:
            self._uninitialized.discard(name)
        self._metrics.nodes_uninitialized.set(len(self._uninitialized))

    @property
    def uninitialized(self) -> int:
        """Nodes still carrying the uninitialized taint."""
        return len(self._uninitialized)

    def cloud_is_back(self) -> None:
        """CloudSigma answers again (or lists the right account again): every node that was waiting for it is
        re-queued now instead of at the end of its backoff."""
        waiting, self._waiting_for_cloud = self._waiting_for_cloud, set()
        for name in waiting:
            self.queue.add(name)
        self._metrics.cloud_recoveries.inc()
        self._metrics.queue_depth.set(len(self.queue))
        log.info("waiting_nodes_requeued", nodes=len(waiting))

    async def run(self) -> None:
        """Run the workers until cancelled or the queue shuts down."""
        self._tasks = [asyncio.create_task(self._worker(i), name=f"node-worker-{i}") for i in range(self._workers)]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()

    async def shutdown(self, timeout: float) -> None:
        """Stop taking work; let in-flight reconciles finish within ``timeout``, then cancel them."""
        await self.queue.shutdown()
        if not self._tasks:
            return
        done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("node_controller_stopped", finished=len(done), cancelled=len(pending))

    async def _worker(self, index: int) -> None:
        await run_worker(self.queue, self._handle, crashed="reconcile_crashed", key_field="node", index=index,
                         done=self._done)

    async def _handle(self, name: str) -> Next:
        outcome = await self._reconciler.reconcile(name)
        if outcome.waiting_for_cloud:
            self._waiting_for_cloud.add(name)
        else:
            self._waiting_for_cloud.discard(name)
        if outcome.result is Result.GONE:
            return Next(remove=True)
        if outcome.retry:
            return Next(retry=True)
        return Next(after=self._resync)

    def _done(self, name: str) -> None:
        # Our own writes reach the store through observe(), not as watch events: look at it now.
        self._track_taint(name, self._watcher.store.get(name))
        self._metrics.queue_depth.set(len(self.queue))
