"""The one place that reads and writes the token broker's Secrets.

An update is a PUT of the Secret as read, with its ``resourceVersion``: if anyone changed (or deleted and
re-created) it meanwhile the API server answers 409 and the caller reads and decides again. A create that meets an
existing Secret is a 409 too (AlreadyExists). A create in a missing namespace creates the namespace first, only
when allowed (``--token-broker-create-namespace``); otherwise :class:`NamespaceMissing`.
"""

from __future__ import annotations

import contextlib

from ccm.kube.errors import Conflict, KubeError, KubeNotFound
from ccm.kube.transport import JSON, KubeTransport
from ccm.tokenbroker.decide import Action, Plan
from ccm.tokenbroker.secret import SecretView, Target, secret_view

__all__ = ["NamespaceMissing", "read", "write"]


class NamespaceMissing(KubeError):
    """The target's namespace does not exist and the broker may not create it."""


async def read(kube: KubeTransport, target: Target) -> SecretView | None:
    """The target Secret, or None when it does not exist."""
    try:
        return secret_view(await kube.request("GET", target.path))
    except KubeNotFound:
        return None


async def write(kube: KubeTransport, target: Target, plan: Plan, *, create_namespace: bool) -> JSON | None:
    """Write ``plan`` (CREATE or UPDATE); the API's answer, or None when there was nothing to write. Raises
    :class:`~ccm.kube.errors.Conflict` (read and decide again), :class:`NamespaceMissing` or another KubeError."""
    if plan.body is None or plan.action not in (Action.CREATE, Action.UPDATE):
        return None
    if plan.action is Action.UPDATE:
        return await kube.request("PUT", target.path, body=plan.body)
    try:
        return await kube.request("POST", target.collection, body=plan.body)
    except KubeNotFound as exc:  # the namespace is missing
        if not create_namespace:
            raise NamespaceMissing(f"namespace {target.namespace} does not exist: create it (or allow "
                                   "CLOUDSIGMA_TOKEN_BROKER_CREATE_NAMESPACE)", status=exc.status,
                                   reason=exc.reason, method="POST", path=target.collection) from None
    with contextlib.suppress(Conflict):  # created meanwhile by someone else
        await kube.request("POST", "/api/v1/namespaces", body={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": target.namespace}})
    return await kube.request("POST", target.collection, body=plan.body)
