"""Supervision: the tasks of one process live and die together.

Every long-running task (node watcher, lifecycle loop, node workers, health server, lease keeper) is started
through a :class:`Supervisor`. When one of them ends while the process is not shutting down — it raised, it was
cancelled by someone else, or it returned although it should run until shutdown — :meth:`Supervisor.failure`
answers with a :class:`TaskEnded` naming it and why, and the daemon exits non-zero so the Deployment restarts the
pod (and a standby takes the lease). A leader renewing its Lease while its watch is dead is thereby impossible.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

__all__ = ["Supervisor", "TaskEnded", "cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` (``None`` and finished ones are skipped) and wait until each has ended. What they raise
    while being stopped is swallowed: the caller is tearing them down, and their failure was judged elsewhere."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    for task in live:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class TaskEnded(Exception):
    """A supervised task ended unexpectedly."""

    def __init__(self, name: str, cause: BaseException | None) -> None:
        if cause is None:
            why = "returned although it should run until shutdown"
        elif isinstance(cause, asyncio.CancelledError):
            why = "was cancelled"
        else:
            why = f"raised {type(cause).__name__}: {cause}"
        super().__init__(f"task {name} {why}")
        self.name = name
        self.cause = cause


class Supervisor:
    """Starts named tasks and reports the first one that ends unexpectedly."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[Any], tuple[str, bool]] = {}
        self._failure: asyncio.Future[TaskEnded] = asyncio.get_running_loop().create_future()
        self.stopping = False

    def start(self, name: str, coro: Coroutine[Any, Any, Any], *, may_finish: bool = False) -> asyncio.Task[Any]:
        """Run ``coro`` as task ``name``. With ``may_finish`` a normal return is fine (a one-shot step);
        raising or being cancelled is a failure either way."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[task] = (name, may_finish)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        name, may_finish = self._tasks.pop(task, ("?", False))
        if self.stopping or self._failure.done():
            if not task.cancelled():
                task.exception()  # retrieved: no "exception was never retrieved" noise
            return
        cause: BaseException | None
        if task.cancelled():
            cause = asyncio.CancelledError()
        else:
            cause = task.exception()
            if cause is None and may_finish:
                return
        # A nested supervisor (the controllers) already named the task that ended: pass that on.
        self._failure.set_result(cause if isinstance(cause, TaskEnded) else TaskEnded(name, cause))

    async def failure(self) -> TaskEnded:
        """Wait for the first unexpected end (forever if none happens)."""
        return await asyncio.shield(self._failure)

    @property
    def names(self) -> list[str]:
        return sorted(name for name, _ in self._tasks.values())

    async def stop(self) -> None:
        """Cancel every task still running and wait for them (shutdown: nothing counts as a failure now)."""
        self.stopping = True
        await cancel_and_wait(*self._tasks)
