"""Where a tenant's inputs live in the management cluster: the CloudSigmaCluster CRD and Cluster API conventions.

Read from the public ``kube-dc/cluster-api-provider-cloudsigma`` repository (``api/v1beta1/
cloudsigmacluster_types.go``, ``groupversion_info.go``, ``controllers/cloudsigmacluster_controller.go``) and
Cluster API's contract; nothing is copied, only the field names we read.

``CloudSigmaCluster`` — group ``infrastructure.cluster.x-k8s.io``, version ``v1beta1``, plural
``cloudsigmaclusters``, namespaced, with a status subresource:

=====================================  ===============================================================
field                                  what we do with it
=====================================  ===============================================================
``metadata.namespace``/``name``        the tenant key ``namespace/name``
``metadata.uid``                       tells a re-created object of the same name from the old one
``metadata.labels[cluster.x-k8s.io/    the Cluster API ``Cluster``'s name (set by Cluster API on the
cluster-name]``                        infrastructure object); else the ``ownerReferences`` entry of kind
                                       ``Cluster`` (group ``cluster.x-k8s.io``). Names the kubeconfig Secret.
``spec.userEmail``                     the owner's CloudSigma email: the user to impersonate (seed 000,
                                       ``CLOUDSIGMA_USER_EMAIL``). Optional in the CRD, required by us.
``spec.userRef``                       a Secret with a ``userEmail`` key, documented as an alternative; the
                                       provider's own controller never reads it, so neither do we (an
                                       object with only ``userRef`` is reported with the fix "set
                                       spec.userEmail").
``spec.region``                        the CloudSigma location, e.g. ``zrh`` (``CLOUDSIGMA_REGION``); required
                                       by the CRD.
``spec.controlPlaneEndpoint``          not read: the kubeconfig Secret names the API server.
``spec.credentialsRef``                not read: legacy per-cluster username/password, deprecated by the
                                       provider in favour of impersonation.
``status.ready``, ``conditions``,      not read: infrastructure readiness says nothing about whether the
``failureReason``/``failureMessage``   tenant's API server answers; we serve whatever the kubeconfig reaches.
``metadata.deletionTimestamp``,        not read: a cluster being deleted (or paused by Cluster API) still
annotation ``cluster.x-k8s.io/paused`` has nodes that need the CCM; it is served until its object is gone.
=====================================  ===============================================================

Cluster API kubeconfig Secret — ``<cluster>-kubeconfig`` in the Cluster's namespace (the CloudSigmaCluster's:
Cluster API keeps a Cluster and its infrastructure object in one namespace), the kubeconfig in data key
``value`` (Cluster controller docs, "Kubeconfig Secrets"). The control-plane provider writes it, type
``cluster.x-k8s.io/secret``, and the ControlPlane contract requires the label
``cluster.x-k8s.io/cluster-name=<cluster>`` on it ("Kubeconfig management"), which is what lets one watch
select these Secrets. It is rotated in place (same name, new content) when client certificates are renewed.
A hand-made ("bring your own") kubeconfig Secret may lack the label: label it, or widen
:attr:`ccm.fleet.discovery.DiscoveryOptions.secret_selector`.
"""

from __future__ import annotations

GROUP = "infrastructure.cluster.x-k8s.io"
VERSION = "v1beta1"
KIND = "CloudSigmaCluster"
PLURAL = "cloudsigmaclusters"

CLUSTER_API_GROUP = "cluster.x-k8s.io"
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
"""Label Cluster API puts on every object of a cluster, the kubeconfig Secret included."""

KUBECONFIG_SECRET_SUFFIX = "-kubeconfig"
KUBECONFIG_SECRET_KEY = "value"
KUBECONFIG_SECRET_TYPE = "cluster.x-k8s.io/secret"


def clusters_path(namespace: str | None = None) -> str:
    """API path of CloudSigmaClusters: all namespaces, or one."""
    if namespace:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"/apis/{GROUP}/{VERSION}/{PLURAL}"


def secrets_path(namespace: str | None = None) -> str:
    """API path of Secrets: all namespaces, or one."""
    return f"/api/v1/namespaces/{namespace}/secrets" if namespace else "/api/v1/secrets"


def kubeconfig_secret_name(cluster_name: str) -> str:
    """Name of the Secret holding the kubeconfig of Cluster API cluster ``cluster_name``."""
    return cluster_name + KUBECONFIG_SECRET_SUFFIX
