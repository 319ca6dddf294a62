"""What one process shares between the tenant clusters it serves (:class:`Services`), and the credential source
that teaches the log redactor every secret it hands out (:class:`RedactingSource`).

Built once per process by :func:`build_services` (the single-tenant process has one tenant on them, a fleet replica
many); every tenant's controllers (:mod:`ccm.tenant.controllers`) are built on them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from ccm.config import Settings, secrets_of
from ccm.logging import Redactor
from ccm.metrics import Metrics
from credentials.base import Credential
from credentials.chain import CredentialChain
from credentials.factory import build_chain

__all__ = ["RedactingSource", "Services", "build_services"]


class RedactingSource:
    """Hands credentials to the client and teaches the log redactor every secret it hands out — for as long as
    it can appear: until the credential expires, or shortly after it is invalidated."""

    def __init__(self, chain: CredentialChain, redactor: Redactor) -> None:
        self.chain = chain
        self._redactor = redactor

    def teach(self, credential: Credential) -> None:
        """Teach the redactor ``credential``'s secret until it expires (also for credentials fetched elsewhere,
        e.g. the token broker's)."""
        until = credential.expires_at if credential.expires_at is not None else math.inf
        self._redactor.add(credential.secret.get_secret_value(), until=until)

    async def get(self, user_email: str, region: str) -> Credential:
        credential = await self.chain.get(user_email, region)
        self.teach(credential)
        return credential

    def invalidate(self, credential: Credential) -> None:
        self.chain.invalidate(credential)
        self._redactor.retire(credential.secret.get_secret_value())

    async def fallback_after_forbidden(self, user_email: str, region: str, failed: Credential) -> Credential | None:
        credential = await self.chain.fallback_after_forbidden(user_email, region, failed)
        if credential is not None:
            self.teach(credential)
        return credential


@dataclass
class Services:
    """What one process shares between the tenant clusters it serves: the metrics registry, the credential chain
    (one identity-provider client, one token cache keyed by user and region) and, in fleet mode, one CloudSigma
    HTTP session (one connection pool per endpoint) and one request budget per region. Built by
    :func:`build_services`; the single-tenant mode has one tenant on them."""

    settings: Settings
    metrics: Metrics
    chain: CredentialChain
    source: RedactingSource
    redactor: Redactor
    #: Shared by every tenant's CloudSigma client (None: each client opens its own, as in single-tenant mode).
    session: aiohttp.ClientSession | None = None
    #: ``throttle(region, cluster)`` → the client's per-request hook (the fleet's request budget), or None.
    throttle: Callable[[str, str], Callable[[str], Awaitable[None]]] | None = None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.chain.aclose()
        if self.session is not None:
            await self.session.close()


def build_services(settings: Settings, redactor: Redactor, *, metrics: Metrics | None = None,
                   session: aiohttp.ClientSession | None = None,
                   throttle: Callable[[str, str], Callable[[str], Awaitable[None]]] | None = None) -> Services:
    """The shared services: metrics (``cluster`` = ``--cluster-name`` unless given), the credential chain."""
    metrics = metrics if metrics is not None else Metrics(settings.cluster_name)
    for secret in secrets_of(settings):
        redactor.add(secret)
    chain = build_chain(settings, on_event=metrics.credential_event, on_secret=redactor.add)
    return Services(settings, metrics, chain, RedactingSource(chain, redactor), redactor, session=session,
                    throttle=throttle)
