"""A tenant cluster as the management cluster describes it, parsed from a CloudSigmaCluster and its kubeconfig Secret
(pure): the fleet serves each as a :class:`TenantSpec`, ``--cluster-ref`` follows :func:`parse_owner`.

:func:`parse_cluster` reads the CloudSigmaCluster (see :mod:`ccm.clusters.clusterapi` for the field mapping),
:func:`parse_kubeconfig_secret` the Cluster API kubeconfig Secret, and :func:`tenant_spec` joins both into a
:class:`TenantSpec` (:func:`parse_tenant` does all three). Every refusal is a :class:`TenantError` subclass
whose message is one line naming the object, the field and what to fix; none ever contains the kubeconfig or
any part of it.

A kubeconfig must be self-contained: credentials and CA inline (``*-data``, ``token``), no file paths and no
``exec``/``auth-provider`` plugins. The Secret comes from the management cluster, but a path or a command in it
would run or read inside the fleet's pod (for instance send the pod's own service-account token to a tenant's
API server), so it is refused rather than trusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

import yaml

from ccm.clusters.clusterapi import (
    CLUSTER_API_GROUP,
    CLUSTER_NAME_LABEL,
    KIND,
    KUBECONFIG_SECRET_KEY,
    kubeconfig_secret_name,
)

_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_CLUSTER_NAME = 253 - len("-kubeconfig")

# Kubeconfig fields that make a client read a local file or run a command.
_FILE_FIELDS = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile", "token-file"),
}
_PLUGIN_FIELDS = ("exec", "auth-provider")


class TenantError(Exception):
    """A CloudSigmaCluster or its kubeconfig Secret cannot (yet) make a tenant.

    ``key`` is the tenant key (``namespace/name`` of the CloudSigmaCluster), ``obj`` the object at fault
    (``"Secret ns/c1-kubeconfig"``), ``field`` the part of it, ``fix`` what the operator should do.
    """

    def __init__(self, key: str, obj: str, field: str, problem: str, fix: str) -> None:
        self.key = key
        self.obj = obj
        self.field = field
        self.problem = problem
        self.fix = fix
        subject = f"{field} {problem}" if field else problem
        super().__init__(f"{obj}: {subject}: {fix}")


class InvalidCluster(TenantError):
    """A field of the CloudSigmaCluster is missing or malformed."""


class ClusterNotAdopted(TenantError):
    """No Cluster API Cluster owns the CloudSigmaCluster yet, so the kubeconfig Secret's name is unknown."""


class KubeconfigMissing(TenantError):
    """The kubeconfig Secret, or its ``value`` key, does not exist (yet)."""


class InvalidKubeconfig(TenantError):
    """The kubeconfig Secret holds something the fleet cannot or will not use."""


@dataclass(frozen=True)
class ClusterRef:
    """What a CloudSigmaCluster says about its tenant."""

    namespace: str
    name: str
    uid: str
    cluster_name: str
    user_email: str
    region: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def kubeconfig_secret(self) -> str:
        return kubeconfig_secret_name(self.cluster_name)


@dataclass(frozen=True)
class Kubeconfig:
    """A validated kubeconfig: the raw bytes (never logged), their SHA-256 and the API server it points at."""

    data: bytes = field(repr=False)
    sha256: str
    server: str


@dataclass(frozen=True)
class TenantSpec:
    """Everything the fleet needs to serve one tenant cluster. Two specs are equal iff nothing we use changed."""

    namespace: str
    name: str
    uid: str
    cluster_name: str
    user_email: str
    region: str
    kubeconfig: bytes = field(repr=False)
    kubeconfig_sha256: str
    api_server: str

    @property
    def key(self) -> str:
        """``namespace/name`` of the CloudSigmaCluster: the tenant's identity in the fleet."""
        return f"{self.namespace}/{self.name}"

    @property
    def credentials_key(self) -> tuple[str, str]:
        """(lower-cased email, region): two tenants with the same key can share a token."""
        return (self.user_email.lower(), self.region)


COMPARED_FIELDS = tuple(f.name for f in fields(TenantSpec) if f.compare)


def changed_fields(old: TenantSpec, new: TenantSpec) -> frozenset[str]:
    """Names of the fields that differ (``kubeconfig`` also stands for its hash and server)."""
    return frozenset(name for name in COMPARED_FIELDS if getattr(old, name) != getattr(new, name))


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def parse_cluster(obj: dict[str, Any]) -> ClusterRef:
    """The tenant a CloudSigmaCluster describes; :class:`TenantError` when it cannot (yet) be served."""
    meta = obj.get("metadata") or {}
    namespace, name = _str(meta.get("namespace")), _str(meta.get("name"))
    key = f"{namespace}/{name}"
    what = f"{KIND} {key}"
    email, region = parse_owner(obj)
    cluster_name = _cluster_name(meta, key, what)
    return ClusterRef(namespace=namespace, name=name, uid=_str(meta.get("uid")), cluster_name=cluster_name,
                      user_email=email, region=region)


def parse_owner(obj: dict[str, Any]) -> tuple[str, str]:
    """(owner email, region) of a CloudSigmaCluster — all ``--cluster-ref`` needs; :class:`InvalidCluster`."""
    meta = obj.get("metadata") or {}
    key = f"{_str(meta.get('namespace'))}/{_str(meta.get('name'))}"
    what = f"{KIND} {key}"
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = {}

    region = _str(spec.get("region"))
    if not region:
        raise InvalidCluster(key, what, "spec.region", "is empty",
                             "set it to the CloudSigma location of the cluster (e.g. zrh)")
    if not _REGION.fullmatch(region):
        raise InvalidCluster(key, what, "spec.region", f"{region[:64]!r} is not a location id",
                             "use lower-case letters, digits and '-' (e.g. zrh)")

    email = _str(spec.get("userEmail"))
    if not email:
        fix = "set it to the cluster owner's CloudSigma email"
        if spec.get("userRef"):
            fix += " (spec.userRef is not read: the provider itself uses only spec.userEmail)"
        raise InvalidCluster(key, what, "spec.userEmail", "is empty", fix)
    if "@" not in email or any(c.isspace() for c in email) or len(email) > 254:
        raise InvalidCluster(key, what, "spec.userEmail", f"{email[:254]!r} is not an email address",
                             "set it to the cluster owner's CloudSigma email")
    return email, region


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def slim_cluster(obj: dict[str, Any]) -> dict[str, Any] | None:
    """Only what :func:`parse_cluster` reads (and the resourceVersion to tell versions apart)."""
    meta = obj.get("metadata") or {}
    labels = _dict(meta.get("labels"))
    spec = _dict(obj.get("spec"))
    kept_meta: dict[str, Any] = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta}
    if CLUSTER_NAME_LABEL in labels:
        kept_meta["labels"] = {CLUSTER_NAME_LABEL: labels[CLUSTER_NAME_LABEL]}
    owners = [r for r in meta.get("ownerReferences") or [] if isinstance(r, dict) and r.get("kind") == "Cluster"]
    if owners:
        kept_meta["ownerReferences"] = [{k: ref.get(k) for k in ("apiVersion", "kind", "name")} for ref in owners]
    return {"metadata": kept_meta, "spec": {k: spec[k] for k in ("region", "userEmail", "userRef") if k in spec}}


def _cluster_name(meta: dict[str, Any], key: str, what: str) -> str:
    labels = meta.get("labels") or {}
    label = _str(labels.get(CLUSTER_NAME_LABEL)) if isinstance(labels, dict) else ""
    owners = [
        _str(ref.get("name")) for ref in meta.get("ownerReferences") or []
        if isinstance(ref, dict) and ref.get("kind") == "Cluster"
        and _str(ref.get("apiVersion")).startswith(CLUSTER_API_GROUP + "/")
    ]
    owner = owners[0] if owners else ""
    if label and owner and label != owner:
        raise InvalidCluster(key, what, f"label {CLUSTER_NAME_LABEL}",
                             f"{label!r} differs from its owner Cluster {owner!r}",
                             "fix the label (Cluster API sets it to the owner Cluster's name)")
    name = label or owner
    if not name:
        raise ClusterNotAdopted(key, what, f"label {CLUSTER_NAME_LABEL}",
                                "is missing and no Cluster owns it",
                                "wait for Cluster API to adopt it, or set the label to the Cluster's name")
    if len(name) > _MAX_CLUSTER_NAME or not _DNS_SUBDOMAIN.fullmatch(name):
        raise InvalidCluster(key, what, f"label {CLUSTER_NAME_LABEL}", f"{name[:64]!r} is not a Cluster name",
                             "set it to the Cluster API Cluster's name")
    return name


def parse_kubeconfig_secret(secret: dict[str, Any] | None, cluster: ClusterRef) -> Kubeconfig:
    """The kubeconfig in ``cluster``'s Secret (``None``: it does not exist); :class:`TenantError` when unusable."""
    what = f"Secret {cluster.namespace}/{cluster.kubeconfig_secret}"
    if secret is None:
        raise KubeconfigMissing(cluster.key, what, "", "does not exist",
                                "wait for the control plane provider to write it, or create it "
                                f"(label {CLUSTER_NAME_LABEL}={cluster.cluster_name}, key {KUBECONFIG_SECRET_KEY})")
    data = secret.get("data") or {}
    encoded = data.get(KUBECONFIG_SECRET_KEY) if isinstance(data, dict) else None
    if not isinstance(encoded, str) or not encoded:
        raise KubeconfigMissing(cluster.key, what, f"data.{KUBECONFIG_SECRET_KEY}", "is missing or empty",
                                "put the tenant cluster's kubeconfig under that key")
    field_name = f"data.{KUBECONFIG_SECRET_KEY}"
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKubeconfig(cluster.key, what, field_name, "is not base64",
                                "store the kubeconfig through the API (data is base64-encoded)") from None
    return parse_kubeconfig(raw, key=cluster.key, what=what, field_name=field_name)


def parse_kubeconfig(raw: bytes, *, key: str, what: str, field_name: str) -> Kubeconfig:
    """Validate a kubeconfig document (see the module docstring for what is refused)."""

    def bad(problem: str, fix: str) -> InvalidKubeconfig:
        return InvalidKubeconfig(key, what, field_name, problem, fix)

    try:
        doc = yaml.safe_load(raw)
    except yaml.MarkedYAMLError as exc:
        # The exception's text quotes the document: report only the position.
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise bad(f"is not YAML{where}", "store a valid kubeconfig") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise bad("is not YAML", "store a valid kubeconfig") from None
    if not isinstance(doc, dict):
        raise bad("is not a kubeconfig (not a mapping)", "store a valid kubeconfig")

    context_name = doc.get("current-context")
    if not isinstance(context_name, str) or not context_name:
        raise bad("has no current-context", "set current-context to the context of the tenant's admin")
    context = _named(doc, "contexts", "context", context_name)
    if context is None:
        raise bad(f"has no context named {context_name[:64]!r}", "add it, or fix current-context")
    cluster_name, user_name = context.get("cluster"), context.get("user")
    cluster = _named(doc, "clusters", "cluster", cluster_name) if isinstance(cluster_name, str) else None
    if cluster is None:
        raise bad(f"context {context_name[:64]!r} names no existing cluster", "add the cluster entry")
    user = _named(doc, "users", "user", user_name) if isinstance(user_name, str) else None
    if user is None:
        raise bad(f"context {context_name[:64]!r} names no existing user", "add the user entry")

    server = cluster.get("server")
    server = server if isinstance(server, str) else ""
    problem = _server_problem(server)
    if problem:
        raise bad(problem, "set clusters[].cluster.server to the tenant API server's URL")
    for section, entry in (("cluster", cluster), ("user", user)):
        for name in _FILE_FIELDS[section]:
            if entry.get(name):
                raise bad(f"refers to a file ({section} field {name!r})",
                          f"inline it ({name}-data or token) so the fleet never reads its own files")
    for name in _PLUGIN_FIELDS:
        if user.get(name):
            raise bad(f"uses a credential plugin (user field {name!r}), which the fleet does not run",
                      "use a client certificate or a token")

    return Kubeconfig(data=raw, sha256=hashlib.sha256(raw).hexdigest(), server=server)


def _server_problem(server: str) -> str | None:
    """What is wrong with a kubeconfig's server URL, or None."""
    try:
        parts = urlsplit(server)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return "has a malformed server URL in its current cluster"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "has no server URL (https://host:port) in its current cluster"
    if parts.username or parts.password:
        return "has credentials in its server URL"
    return None


def _named(doc: dict[str, Any], section: str, inner: str, name: Any) -> dict[str, Any] | None:
    """The ``inner`` mapping of the entry called ``name`` in list ``section`` of a kubeconfig."""
    entries = doc.get(section)
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(inner)
            # A user entry may legitimately be empty (anonymous); a context or cluster may not.
            if isinstance(value, dict):
                return value
            if value is None and inner == "user":
                return {}
    return None


def tenant_spec(cluster: ClusterRef, kubeconfig: Kubeconfig) -> TenantSpec:
    """Join a parsed CloudSigmaCluster and its kubeconfig into a :class:`TenantSpec`."""
    return TenantSpec(namespace=cluster.namespace, name=cluster.name, uid=cluster.uid,
                      cluster_name=cluster.cluster_name, user_email=cluster.user_email, region=cluster.region,
                      kubeconfig=kubeconfig.data, kubeconfig_sha256=kubeconfig.sha256, api_server=kubeconfig.server)


def parse_tenant(cluster_obj: dict[str, Any], secret: dict[str, Any] | None) -> TenantSpec:
    """:func:`parse_cluster` + :func:`parse_kubeconfig_secret` + :func:`tenant_spec` in one call."""
    cluster = parse_cluster(cluster_obj)
    return tenant_spec(cluster, parse_kubeconfig_secret(secret, cluster))


def kubeconfig_dict(spec: TenantSpec) -> dict[str, Any]:
    """A fresh parsed copy of the tenant's kubeconfig, for ``kubernetes_asyncio.config.new_client_from_config_dict``
    (which may modify what it is given). Validated when the spec was made, so it parses."""
    doc = yaml.safe_load(spec.kubeconfig)
    return doc if isinstance(doc, dict) else {}
