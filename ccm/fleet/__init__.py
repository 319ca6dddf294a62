"""Fleet mode: one set of replicas serving every CloudSigma tenant cluster of a management cluster.

- :mod:`ccm.fleet.clusterapi` — where tenants are described (CloudSigmaCluster CRD, Cluster API kubeconfig Secret);
- :mod:`ccm.fleet.tenants` — :class:`~ccm.fleet.tenants.TenantSpec` and the pure parsers with typed errors;
- :mod:`ccm.fleet.discovery` — list+watch of those objects → added/changed/removed tenant events;
- :mod:`ccm.fleet.announce` / :mod:`ccm.fleet.membership` — each replica's member Lease, and the live replicas;
- :mod:`ccm.fleet.sharding` — which live replica serves which tenant (pure).
"""
