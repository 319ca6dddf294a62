"""Fleet mode: one set of replicas serving every CloudSigma tenant cluster of a management cluster (a process shape
on the tenant runtime, :mod:`ccm.tenant`; tenants are read with :mod:`ccm.clusters`).

- :mod:`ccm.fleet.process` — the fleet replica's process: shared services, the manager, the health server;
- :mod:`ccm.fleet.manager` — which tenants this replica serves, each under its own fenced Lease, and
  :mod:`ccm.fleet.runtime` — one tenant's bulkhead around the tenant runtime (:mod:`ccm.tenant`);
- :mod:`ccm.fleet.discovery` — list+watch of those objects → added/changed/removed tenant events;
- :mod:`ccm.fleet.announce` / :mod:`ccm.fleet.membership` — each replica's member Lease, and the live replicas;
- :mod:`ccm.fleet.sharding` — which live replica serves which tenant (pure).
"""
