"""``python -m tests.reliability.faulty FAULT [cloudsigma-ccm arguments]``: the real daemon with one fault injected.

Faults:
- ``watcher-dies``: the node watcher lists the nodes, watches for 2 s, then raises an exception its own retry loop
  does not catch (a bug, not an API error) — the case the supervisor exists for. In fleet mode every tenant's
  watcher does: a tenant's failure, which the fleet contains.
- ``discovery-dies``: fleet mode; tenant discovery lists, runs for 2 s, then raises — the fleet machinery itself
  broken, which ends the replica.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import structlog

from ccm import cli
from ccm.nodes import watching

FAULTS = ("watcher-dies", "discovery-dies")


def _crash_after_sync(cls: Any, fault: str, what: str) -> None:
    """``cls.run`` runs normally until its ``synced`` event is set, for 2 s more, then raises."""
    original = cls.run

    async def run(self: Any) -> None:
        task = asyncio.ensure_future(original(self))
        try:
            await self.synced.wait()
            await asyncio.sleep(2.0)
        finally:
            task.cancel()
        structlog.get_logger("tests.faulty").warning("injected_fault", fault=fault)
        raise RuntimeError(f"injected fault: {what} crashed")

    cls.run = run


def _watcher_dies() -> None:
    _crash_after_sync(watching.NodeWatcher, "watcher-dies", "the node watcher")


def _discovery_dies() -> None:
    from ccm.fleet import discovery

    _crash_after_sync(discovery.TenantDiscovery, "discovery-dies", "tenant discovery")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in FAULTS:
        print(f"usage: python -m tests.reliability.faulty {{{','.join(FAULTS)}}} [args]", file=sys.stderr)
        return 2
    if argv[0] == "watcher-dies":
        _watcher_dies()
    elif argv[0] == "discovery-dies":
        _discovery_dies()
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
