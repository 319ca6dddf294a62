"""LoadBalancer Services from the owner's subscribed IPs, announced by MetalLB (L2) or kube-vip.

The CCM owns the IPs, an announcer owns the ARP (the Equinix Metal CCM's split): for each ``type: LoadBalancer``
Service of ours it picks one of the owner's subscribed IPv4 addresses that no server NIC uses and no other Service
claims, records the claim on the IP itself in CloudSigma (its ``meta``), checks the claim against a listing taken
after a settle time, and only then writes ``status.loadBalancer.ingress`` and the announcer's objects. A finalizer
releases the claim when the Service goes away or stops being a LoadBalancer.

Modules: :mod:`.service` (what a Service asks for), :mod:`.ipam` (the IPs and their claims), :mod:`.decide` (pure:
what to do with one Service), :mod:`.announcer` (MetalLB's and kube-vip's objects), :mod:`.eligibility` (which
Nodes can carry the IPs: a ``manual`` public NIC), :mod:`.apply` (the one place that writes), :mod:`.listing`
(shared, fresh-enough IP listings), :mod:`.controller` (queue, workers, reporting).
"""
