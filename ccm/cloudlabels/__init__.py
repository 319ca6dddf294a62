"""Live node labels from the cloud: server ``meta`` keys, tag names and the physical host group.

The labels live under our own prefix (``node.cloudsigma.com/``) and are kept in sync at initialization, at
every resync and when a snapshot refresh shows their server changed; the keys the CCM set are listed in an
annotation, so it removes exactly those and never touches a label someone else set. :mod:`.decide` and
:mod:`.hostgroups` are pure; :mod:`.sources` fetches tag names and host groups once per server snapshot;
:mod:`.sync` is what the node reconciler calls; :mod:`ccm.nodes.changes` queues nodes after a snapshot refresh.
"""
