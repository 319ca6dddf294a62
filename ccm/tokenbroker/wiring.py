"""The token broker of one tenant, from the settings: what the tenant runtime calls (one build, one run)."""

from __future__ import annotations

from collections.abc import Callable

from ccm.config import Settings
from ccm.kube.events import EventRecorder
from ccm.kube.permissions import Permission, token_broker
from ccm.kube.transport import KubeTransport
from ccm.metrics import Metrics
from ccm.tokenbroker.controller import TokenBroker
from ccm.tokenbroker.decide import Facts
from ccm.tokenbroker.secret import Target, parse_target
from credentials.base import Credential
from credentials.chain import CredentialChain

__all__ = ["build_token_broker", "token_broker_permissions", "token_broker_targets"]


def token_broker_targets(settings: Settings) -> list[Target]:
    return [parse_target(t) for t in settings.token_broker]


def token_broker_permissions(settings: Settings) -> tuple[Permission, ...]:
    """What the broker does in the tenant cluster with these settings (none when it is off)."""
    targets = token_broker_targets(settings)
    if not targets:
        return ()
    return token_broker([(t.namespace, t.name) for t in targets],
                        create_namespace=settings.token_broker_create_namespace)


def build_token_broker(settings: Settings, *, kube: KubeTransport, chain: CredentialChain,
                       teach: Callable[[Credential], None], owner: str, region: str, cluster_name: str,
                       metrics: Metrics, events: EventRecorder) -> TokenBroker | None:
    """The broker for one tenant cluster acting as ``owner`` in ``region``, or None when ``--token-broker`` is off.
    Its tokens come from the shared chain (a fleet's tenants of one owner share the cached token); ``teach`` shows
    each token it hands on to the log redactor (the tenant runtime passes its ``RedactingSource.teach``). Its
    Events go through the tenant's ``events`` recorder (to each Secret's namespace), flushed at shutdown."""
    targets = token_broker_targets(settings)
    if not targets or not owner:
        return None
    return TokenBroker(kube=kube, chain=chain, provider=settings.impersonation_strategy,
                       facts=Facts(owner=owner.strip().lower(), region=region, cluster_name=cluster_name),
                       targets=targets, metrics=metrics, events=events,
                       create_namespace=settings.token_broker_create_namespace, teach=teach)
