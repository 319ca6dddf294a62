"""Tenants as the management cluster describes them, for both process shapes.

- :mod:`ccm.clusters.clusterapi` — where tenants are described (CloudSigmaCluster CRD, Cluster API kubeconfig Secret);
- :mod:`ccm.clusters.tenants` — :class:`~ccm.clusters.tenants.TenantSpec` and the pure parsers with typed errors.

The fleet (:mod:`ccm.fleet`) discovers every tenant from them; the single-tenant process follows one
CloudSigmaCluster (``--cluster-ref``, :mod:`ccm.clusterref`).
"""
