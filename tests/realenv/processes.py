"""Stopping the processes a test started (daemons, fleet replicas) the way Kubernetes stops a pod."""

from __future__ import annotations

import asyncio
import signal

__all__ = ["stop_process"]


async def stop_process(proc: asyncio.subprocess.Process | None, timeout: float = 30.0) -> int | None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``timeout`` (the pod's grace period); its exit code
    (``None`` when there is no process)."""
    if proc is None:
        return None
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode
