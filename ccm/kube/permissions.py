"""The Kubernetes permissions the CCM uses: the one list the RBAC manifests, ``doctor`` and the transport follow.

- :data:`TENANT` is everything the CCM does in the tenant cluster, :func:`leader_election` what it does in its
  own namespace of the management cluster.
- :class:`~ccm.kube.transport.KubeTransport` refuses, before sending, any request these lists do not declare
  (:class:`UndeclaredRequest`): a new call site cannot ship without its permission being declared here.
- ``cloudsigma-ccm doctor`` asks the tenant cluster about exactly :data:`TENANT`; the tests compare
  ``deploy/`` with :func:`rbac_rules` of these lists, so manifests, doctor and code cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: Where the CCM records its Events about Nodes in the tenant cluster (Nodes are cluster-scoped; Events about
#: cluster-scoped objects conventionally go to "default", as the kubelet's and upstream controllers' do).
EVENTS_NAMESPACE = "default"
LEASES_GROUP = "coordination.k8s.io"
#: The Cluster API infrastructure provider's group (CloudSigmaCluster, see ccm/clusters/clusterapi.py).
CLUSTERAPI_GROUP = "infrastructure.cluster.x-k8s.io"
CERTIFICATES_GROUP = "certificates.k8s.io"
KUBELET_SERVING_SIGNER = "kubernetes.io/kubelet-serving"
METALLB_GROUP = "metallb.io"

When = Literal["always", "deletion", "csr-approval", "load-balancer", "metallb"]


@dataclass(frozen=True)
class Permission:
    """One RBAC permission: ``verb`` on ``group``/``resource``[/``subresource``], optionally in one namespace and
    for one object name (``resourceNames``)."""

    verb: str
    resource: str
    subresource: str = ""
    group: str = ""
    namespace: str | None = None  # None: cluster-wide (or any namespace)
    name: str | None = None  # None: any object
    #: "deletion": only with --node-deletion-enabled; "csr-approval": only with --csr-approval other than off;
    #: "load-balancer": only with --load-balancer other than off; "metallb": only with --load-balancer=metallb.
    when: When = "always"

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    @property
    def label(self) -> str:
        """``patch nodes/status``, ``create events in default``, ``get leases/cloudsigma-ccm in ns``."""
        text = f"{self.verb} {self.full_resource}" + (f" {self.name!r}" if self.name else "")
        return text + (f" in {self.namespace}" if self.namespace else "")

    def review(self) -> dict[str, Any]:
        """A SelfSubjectAccessReview asking for this permission."""
        attrs = {"verb": self.verb, "group": self.group, "resource": self.resource, "subresource": self.subresource,
                 "namespace": self.namespace or "", "name": self.name or ""}
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {k: v for k, v in attrs.items() if v}}}


TENANT: tuple[Permission, ...] = (
    Permission("list", "nodes"),  # ccm/kube/fetching.py list_nodes (initial list, relist after 410)
    Permission("watch", "nodes"),  # ccm/nodes/watching.py
    Permission("get", "nodes"),  # ccm/kube/fetching.py get_node (fresh read before a decision)
    Permission("patch", "nodes"),  # ccm/kube/patching.py patch_node: providerID, labels, taints
    Permission("patch", "nodes", "status"),  # ccm/kube/patching.py replace_addresses
    Permission("delete", "nodes", when="deletion"),  # ccm/kube/patching.py delete_node (lifecycle controller)
    Permission("create", "events", namespace=EVENTS_NAMESPACE),  # ccm/kube/events.py
    # A repeated Event is updated in place (count, lastTimestamp) instead of created again.
    Permission("patch", "events", namespace=EVENTS_NAMESPACE),
    # ccm/csr: the opt-in kubelet-serving CSR approver (deploy/tenant/csr-approval).
    Permission("list", "certificatesigningrequests", group=CERTIFICATES_GROUP, when="csr-approval"),
    Permission("watch", "certificatesigningrequests", group=CERTIFICATES_GROUP, when="csr-approval"),
    Permission("get", "certificatesigningrequests", group=CERTIFICATES_GROUP, when="csr-approval"),
    Permission("update", "certificatesigningrequests", "approval", group=CERTIFICATES_GROUP, when="csr-approval"),
    # Never a request of ours: the CertificateApproval admission plugin checks it on the approval write above.
    Permission("approve", "signers", group=CERTIFICATES_GROUP, name=KUBELET_SERVING_SIGNER, when="csr-approval"),
    # ccm/loadbalancer: LoadBalancer Services (deploy/tenant/load-balancer). Services of every namespace are
    # watched; the finalizer and the announcer's annotations are patched, the IP goes into the status.
    Permission("list", "services", when="load-balancer"),
    Permission("watch", "services", when="load-balancer"),
    Permission("patch", "services", when="load-balancer"),
    Permission("patch", "services", "status", when="load-balancer"),
    # Events about a Service live in the Service's namespace.
    Permission("create", "events", when="load-balancer"),
    Permission("patch", "events", when="load-balancer"),
    # MetalLB's IPAddressPool and L2Advertisement (server-side apply: patch, which creates them too).
    Permission("create", "ipaddresspools", group=METALLB_GROUP, when="metallb"),
    Permission("patch", "ipaddresspools", group=METALLB_GROUP, when="metallb"),
    Permission("delete", "ipaddresspools", group=METALLB_GROUP, when="metallb"),
    Permission("create", "l2advertisements", group=METALLB_GROUP, when="metallb"),
    Permission("patch", "l2advertisements", group=METALLB_GROUP, when="metallb"),
)


def leader_election(namespace: str, lease: str) -> tuple[Permission, ...]:
    """What leader election (ccm/leader.py) does in the management cluster: the Lease ``namespace/lease``."""
    return (
        # RBAC cannot restrict `create` by name: the object does not exist yet when the request is authorized.
        Permission("create", "leases", group=LEASES_GROUP, namespace=namespace),
        Permission("get", "leases", group=LEASES_GROUP, namespace=namespace, name=lease),
        Permission("update", "leases", group=LEASES_GROUP, namespace=namespace, name=lease),
    )


def cluster_ref(namespace: str, name: str) -> tuple[Permission, ...]:
    """What ``--cluster-ref namespace/name`` reads in the management cluster: that one CloudSigmaCluster, listed
    and watched with a ``metadata.name`` field selector (which RBAC authorizes by ``resourceNames``)."""
    return (
        Permission("list", "cloudsigmaclusters", group=CLUSTERAPI_GROUP, namespace=namespace, name=name),
        Permission("watch", "cloudsigmaclusters", group=CLUSTERAPI_GROUP, namespace=namespace, name=name),
    )


def fleet(namespace: str, *, tenant_namespace: str | None = None,
          namespace_selector: bool = False) -> tuple[Permission, ...]:
    """What a fleet replica does in the management cluster (ccm/fleet): discovery lists and watches
    CloudSigmaClusters and their kubeconfig Secrets (all namespaces, or ``tenant_namespace``) and, with a namespace
    selector, Namespaces; member and tenant Leases live in ``namespace``."""
    out = [
        Permission("list", "cloudsigmaclusters", group=CLUSTERAPI_GROUP, namespace=tenant_namespace),
        Permission("watch", "cloudsigmaclusters", group=CLUSTERAPI_GROUP, namespace=tenant_namespace),
        # RBAC cannot narrow Secrets by name pattern: this reads every Secret of those namespaces (the label
        # selector only limits what is sent). See deploy/README.md.
        Permission("list", "secrets", namespace=tenant_namespace),
        Permission("watch", "secrets", namespace=tenant_namespace),
    ]
    if namespace_selector:
        out += [Permission("list", "namespaces"), Permission("watch", "namespaces")]
    out += [
        Permission(verb, "leases", group=LEASES_GROUP, namespace=namespace) for verb in (
            "list", "watch",  # informers: member and tenant Leases
            "get", "create", "update",  # tenant Leases (ccm/leader.py); create: own member Lease too
            "patch",  # own member Lease: renew (ccm/fleet/announce.py)
            "delete",  # own member Lease on exit, silent members', removed tenants'
        )
    ]
    return tuple(out)


def token_broker(targets: Iterable[tuple[str, str]], *, create_namespace: bool = False) -> tuple[Permission, ...]:
    """What the token broker (ccm/tokenbroker) does in the tenant cluster for its ``(namespace, secret)`` targets:
    read and update that Secret, create it (RBAC cannot restrict ``create`` by name: the object does not exist yet
    when the request is authorized, so this allows creating any Secret of the namespace), and record Events about
    it there; with ``create_namespace``, create a missing namespace (cluster-wide, not by name either)."""
    out: list[Permission] = []
    for namespace, name in targets:
        out += [
            Permission("get", "secrets", namespace=namespace, name=name),
            Permission("update", "secrets", namespace=namespace, name=name),
            Permission("create", "secrets", namespace=namespace),
            Permission("create", "events", namespace=namespace),
            Permission("patch", "events", namespace=namespace),
        ]
    if create_namespace:
        out.append(Permission("create", "namespaces"))
    return tuple(dict.fromkeys(out))


def needed(permissions: Iterable[Permission], *, deletion_enabled: bool,
           csr_approval: bool = False, load_balancer: str = "off") -> tuple[Permission, ...]:
    """The permissions a CCM with these settings uses."""
    enabled = {"always": True, "deletion": deletion_enabled, "csr-approval": csr_approval,
               "load-balancer": load_balancer != "off", "metallb": load_balancer == "metallb"}
    return tuple(p for p in permissions if enabled[p.when])


def rbac_rules(permissions: Iterable[Permission]) -> list[dict[str, Any]]:
    """RBAC ``rules`` granting exactly ``permissions`` (namespaces are the Role's business, not the rule's):
    one rule per (group, resource, names), verbs in the order declared."""
    rules: dict[tuple[str, str, str | None], list[str]] = {}
    for p in permissions:
        verbs = rules.setdefault((p.group, p.full_resource, p.name), [])
        if p.verb not in verbs:
            verbs.append(p.verb)
    out: list[dict[str, Any]] = []
    for (group, resource, name), verbs in rules.items():
        rule: dict[str, Any] = {"apiGroups": [group], "resources": [resource]}
        if name is not None:
            rule["resourceNames"] = [name]
        rule["verbs"] = verbs
        out.append(rule)
    return out


# ------------------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Request:
    """What the API server's authorizer sees of one request (the RBAC attributes of its URL and method)."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str | None
    name: str | None


class UndeclaredRequest(Exception):
    """A request that no declared :class:`Permission` covers: a programming error, never sent."""

    def __init__(self, method: str, path: str, request: Request | None) -> None:
        what = (f"{request.verb} {request.group + '/' if request.group else ''}{request.resource}"
                f"{'/' + request.subresource if request.subresource else ''}"
                + (f" in {request.namespace}" if request.namespace else "")) if request else "a non-resource URL"
        super().__init__(f"{method} {path} needs {what}, which ccm/kube/permissions.py does not declare: "
                         "declare it there (deploy/ and doctor follow that list)")
        self.method = method
        self.path = path
        self.request = request


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_of(method: str, path: str, query: Mapping[str, Any] | None = None) -> Request | None:
    """The RBAC attributes of a resource request (``None`` for non-resource URLs such as /version)."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else None
    subresource = rest[2] if len(rest) >= 3 else ""
    if method == "GET":
        watching = str((query or {}).get("watch", "")).lower() in ("1", "true")
        verb = "watch" if watching else ("get" if name is not None else "list")
        if name is None:
            # As the API server authorizes it: a list or watch narrowed to one object by a metadata.name field
            # selector is a request for that name (RBAC resourceNames apply).
            selector = str((query or {}).get("fieldSelector") or "")
            if selector.startswith("metadata.name=") and "," not in selector:
                name = selector.partition("=")[2] or None
    else:
        verb = _VERBS.get(method, method.lower())
    return Request(verb, group, resource, subresource, namespace, name)


def covers(permission: Permission, request: Request) -> bool:
    return (permission.verb == request.verb and permission.group == request.group
            and permission.resource == request.resource and permission.subresource == request.subresource
            and (permission.namespace is None or permission.namespace == request.namespace)
            and (permission.name is None or permission.name == request.name))


def check(permissions: Iterable[Permission], method: str, path: str, query: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`UndeclaredRequest` unless a declared permission covers the request."""
    request = request_of(method, path, query)
    if request is None or not any(covers(p, request) for p in permissions):
        raise UndeclaredRequest(method, path, request)
