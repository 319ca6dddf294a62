"""What every process shape does around its tenants, in one place.

- :mod:`ccm.process.lifetime` — the management cluster's client, the namespace of the Leases, the health server
  (/healthz, /readyz, /metrics) and SIGTERM/SIGINT; the shutdown budget both follow is :mod:`ccm.shutdown`, the
  Lease both hold a :class:`ccm.leader.LeaseElector`;
- :mod:`ccm.process.allocator` — the allocator setting a fleet replica pins.

The two shapes are :mod:`ccm.single.process` (one tenant, the default) and :mod:`ccm.fleet.process` (a fleet
replica); the CLI (:mod:`ccm.cli`) chooses between them, and neither imports the other.
"""
