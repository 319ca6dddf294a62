"""Fencing: a writer may only write while the lease that entitles it is certainly still ours.

A :class:`Fence` is granted *until* a moment on the monotonic clock (the lease elector grants
``start of the last successful renewal + renew deadline``, which is earlier than the moment a standby may take
over, ``last renewal + lease duration``). Every mutating request to the tenant API passes through
:meth:`Fence.writing`: refused with :class:`Fenced` before it is sent once the grant has run out or the fence was
closed, and cancelled (also :class:`Fenced`) if it is still in flight at that moment. A timer closes the fence at
the end of the grant even when nothing renews it — a hanging management API cannot keep a deposed leader writing.

Since the check sits in the transport, every writer that uses it (node workers, lifecycle, events, and any
controller added later) is fenced without knowing about it. One fence per lease, no global state: a process may
hold several (one per tenant lease).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from types import TracebackType

import structlog

from ccm.kube.errors import KubeError

__all__ = ["Fence", "Fenced"]

log = structlog.get_logger(__name__)


class Fenced(KubeError):
    """The write was not sent (or was cancelled in flight): this process no longer may write."""


class Fence:
    """Permission to write, granted until a deadline on ``clock`` (monotonic seconds)."""

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._until = -math.inf
        self._granted = False  # granted and not closed since (the deadline may still have passed)
        self._reason = "not granted yet"
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[_Write] = set()
        #: Writes cancelled in flight and writes refused: tests and metrics read them.
        self.cancelled = 0
        self.refused = 0

    @property
    def is_open(self) -> bool:
        return self._clock() < self._until

    @property
    def until(self) -> float:
        return self._until

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def grant(self, until: float) -> None:
        """Allow writes until ``until`` (same clock as the fence). A grant never shortens an open one."""
        self._until = max(self._until, until) if self.is_open else until
        self._granted = True
        self._reason = "lease not renewed in time"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if math.isfinite(self._until):
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, self._until - self._clock()), self._expire)

    def close(self, reason: str, *, expected: bool = False) -> None:
        """Refuse every write from now on and cancel the ones in flight. ``expected``: a shutdown, not a loss
        (logged at info unless writes had to be cancelled)."""
        was_granted = self._granted
        self._granted = False
        self._until = -math.inf
        self._reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        cancelled = sum(1 for write in list(self._inflight) if write.cancel())
        if was_granted or cancelled:
            level = log.info if expected and not cancelled else log.warning
            level("writes_fenced", fence=self.name, reason=reason, cancelled_in_flight=cancelled)

    def _expire(self) -> None:
        self._timer = None
        if self._clock() >= self._until:
            self.close(self._reason)
        else:  # the clock disagrees with the loop's timer by a hair: check again at the real deadline
            self._timer = asyncio.get_running_loop().call_later(self._until - self._clock(), self._expire)

    def check(self, method: str = "", path: str = "") -> None:
        """Raise :class:`Fenced` unless writing is allowed right now."""
        if not self.is_open:
            self.refused += 1
            raise Fenced(f"not sent: {self._reason} (fence {self.name})", method=method, path=path)

    def writing(self, method: str, path: str) -> _Write:
        """``async with fence.writing(method, path):`` around one write; refused or cancelled → :class:`Fenced`."""
        return _Write(self, method, path)


class _Write:
    """One write in flight: an ``asyncio.timeout`` scope the fence can expire at once."""

    def __init__(self, fence: Fence, method: str, path: str) -> None:
        self._fence = fence
        self._method = method
        self._path = path
        self._scope = asyncio.timeout(None)
        self._cancelled = False

    async def __aenter__(self) -> None:
        self._fence.check(self._method, self._path)
        await self._scope.__aenter__()
        self._fence._inflight.add(self)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._fence._inflight.discard(self)
        try:
            await self._scope.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if self._cancelled:
                raise Fenced(f"cancelled in flight: {self._fence._reason} (fence {self._fence.name})",
                             method=self._method, path=self._path) from None
            raise

    def cancel(self) -> bool:
        """Expire the write's scope now; False if that was already done."""
        if self._cancelled:
            return False
        self._cancelled = True
        self._fence.cancelled += 1
        self._scope.reschedule(asyncio.get_running_loop().time())
        return True
