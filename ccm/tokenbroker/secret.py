"""What a token broker Secret holds, and reading one back (pure).

Keys (``data``): kube-dc's four — ``access_token``, ``region``, ``user_email``, ``cluster_name`` — so a kube-dc CSI
driver keeps working after a migration, plus ``expires_at`` (RFC 3339, UTC; empty with no token) and ``api_url``
(the endpoint the token is for: impersonated tokens go to the ``direct.`` host). Annotations say whom and when for
an operator — owner, region, issued-at, expires-at, and the last error while impersonation fails — never the
token. The label ``app.kubernetes.io/managed-by=cloudsigma-ccm`` marks a Secret as ours: one without it is never
written.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ANNOTATIONS",
    "ANNOTATION_PREFIX",
    "KEYS",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "SecretView",
    "Target",
    "format_time",
    "parse_target",
    "parse_time",
    "secret_view",
]

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "cloudsigma-ccm"
ANNOTATION_PREFIX = "token-broker.cloudsigma.com/"
OWNER, REGION, ISSUED_AT, EXPIRES_AT, LAST_ERROR = (ANNOTATION_PREFIX + a for a in (
    "owner", "region", "issued-at", "expires-at", "last-error"))
ANNOTATIONS = (OWNER, REGION, ISSUED_AT, EXPIRES_AT, LAST_ERROR)
ACCESS_TOKEN = "access_token"
#: The data keys the broker writes (other keys of the Secret are left as they are).
KEYS = (ACCESS_TOKEN, "region", "user_email", "cluster_name", "expires_at", "api_url")


@dataclass(frozen=True)
class Target:
    """A Secret the broker keeps: ``namespace/name`` in the tenant cluster."""

    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{self.name}"

    @property
    def collection(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets"


def parse_target(text: str) -> Target:
    """``namespace/name`` (validated by the settings) → :class:`Target`."""
    namespace, _, name = text.partition("/")
    return Target(namespace, name)


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class SecretView:
    """A target Secret as read: who manages it, and what of ours it holds (decoded; the token stays out of repr)."""

    uid: str
    resource_version: str
    managed: bool
    data: Mapping[str, str] = field(repr=False)
    annotations: Mapping[str, str]
    #: The whole object as read: the base of an update (its other keys, labels and annotations are kept).
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def has_token(self) -> bool:
        return bool(self.data.get(ACCESS_TOKEN))

    @property
    def token_expires_at(self) -> float | None:
        """When the token it holds expires (its ``expires_at`` key); ``None`` without a (readable) expiry."""
        return parse_time(self.data.get("expires_at")) if self.has_token else None


def _decode(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def secret_view(obj: Mapping[str, Any]) -> SecretView:
    """Read a Secret's JSON (as the API returns it: ``data`` base64-encoded)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    raw_data = obj.get("data") or {}
    data = {k: v for k in KEYS if (v := _decode(raw_data.get(k))) is not None}
    annotations = {k: str(v) for k, v in (meta.get("annotations") or {}).items() if k in ANNOTATIONS}
    return SecretView(uid=str(meta.get("uid") or ""), resource_version=str(meta.get("resourceVersion") or ""),
                      managed=labels.get(MANAGED_BY_LABEL) == MANAGED_BY, data=data, annotations=annotations,
                      raw=obj)


def encode(data: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode("ascii") for k, v in data.items()}
