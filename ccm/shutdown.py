"""The shutdown budget: what a SIGTERM may take, step by step, so it all fits the pod's grace period.

On SIGTERM the daemon (1) stops taking work and lets in-flight reconciles finish (``--shutdown-timeout``),
(2) waits for Events still being sent, (3) closes the write fence and releases the Lease so a standby takes
over at once, and (4) closes its connections. Each step is bounded; the sum must be shorter than the pod's
``terminationGracePeriodSeconds`` (``--termination-grace-period``), or the kubelet's SIGKILL cuts the release
short and the standby waits a whole lease duration. The release comes after the drain on purpose: a standby
that took over while our last reconciles were still writing would make two writers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EVENT_FLUSH_TIMEOUT", "EXIT_MARGIN", "LEASE_RELEASE_TIMEOUT", "ShutdownBudget"]

#: Longest wait for Events still being sent (they are best-effort; the log line is the record).
EVENT_FLUSH_TIMEOUT = 2.0
#: Longest the Lease release (one GET and one PUT) may take; after it the lease simply expires.
LEASE_RELEASE_TIMEOUT = 3.0
#: Closing the HTTP sessions and leaving the process.
EXIT_MARGIN = 2.0


@dataclass(frozen=True)
class ShutdownBudget:
    """Upper bounds of the shutdown steps, in seconds."""

    drain: float
    flush: float = EVENT_FLUSH_TIMEOUT
    release: float = LEASE_RELEASE_TIMEOUT
    exit: float = EXIT_MARGIN

    @property
    def total(self) -> float:
        return self.drain + self.flush + self.release + self.exit

    @property
    def overhead(self) -> float:
        """What the budget needs besides the drain."""
        return self.flush + self.release + self.exit

    def fits(self, grace_period: float) -> bool:
        return self.total <= grace_period
