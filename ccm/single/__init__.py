"""The single-tenant mode (the default): one process per tenant cluster (:mod:`ccm.single.process`), its one tenant
on the tenant runtime (:mod:`ccm.tenant`), optionally following its CloudSigmaCluster (:mod:`ccm.clusterref`).
"""
