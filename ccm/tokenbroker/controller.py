"""The token broker's timing: one pass over the targets whenever the owner's token changes, and at least every
:data:`CHECK_PERIOD`.

A pass asks the shared credential chain for the impersonation provider's token (:meth:`CredentialChain.get_from`:
the cache answers a fresh one without a request; in its refresh window the cache's own refresh is awaited), then
reads, decides and writes each target. The next pass is when the cache starts replacing that token — the chain's
refresh margin, never a clock of our own — or sooner: the check period (so a deleted Secret is back within one
refresh period), a retry with backoff while impersonation or the tenant API fails, and the expiry of a token a
Secret still holds while impersonation fails (so it is emptied then, not later).

Events go to the Secret's namespace (through the tenant's recorder, flushed with the others at shutdown), once per
change of what a target holds (not every pass); metrics count writes and failures per target;
:meth:`TokenBroker.status` feeds ``/debug/credentials``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from ccm.kube.errors import Conflict, Forbidden, KubeError
from ccm.kube.events import EventRecorder, ObjectEvent
from ccm.kube.transport import JSON, KubeTransport
from ccm.metrics import Metrics
from ccm.tokenbroker.apply import NamespaceMissing, read, write
from ccm.tokenbroker.decide import EXPIRY_LEAD, Action, Facts, Failure, Plan, Token, decide, usable_token
from ccm.tokenbroker.secret import Target, format_time
from credentials.base import Credential, CredentialError
from credentials.chain import CredentialChain

__all__ = ["CHECK_PERIOD", "TokenBroker"]

log = structlog.get_logger(__name__)

#: Longest time between two reads of a target (a deleted Secret is re-created by then at the latest).
CHECK_PERIOD = 60.0
RETRY_INITIAL, RETRY_MAX = 2.0, 30.0
RBAC_HINT = "grant the CCM's tenant identity the Role of deploy/tenant/token-broker in the target's namespace"


@dataclass
class _Status:
    target: Target
    state: str = "pending"
    last_write: float | None = None
    token_expires_at: float | None = None
    last_error: tuple[float, str, str] | None = None
    #: The (state, Event reason) last told to the operator: one Event per change, not one per pass.
    noted: tuple[str, str] | None = None
    failing: str | None = None


class TokenBroker:
    """Keeps the owner's token in each target Secret of one tenant cluster."""

    def __init__(self, *, kube: KubeTransport, chain: CredentialChain, provider: str, facts: Facts,
                 targets: Sequence[Target], metrics: Metrics, events: EventRecorder,
                 create_namespace: bool = False, teach: Callable[[Credential], None] | None = None,
                 clock: Callable[[], float] = time.time, check_period: float = CHECK_PERIOD) -> None:
        self._kube = kube
        self._chain = chain
        self._provider = provider
        self.facts = facts
        self._targets = list(targets)
        self._metrics = metrics
        self._events = events
        self._create_namespace = create_namespace
        self._teach = teach
        self._clock = clock
        self._check_period = check_period
        self._retry = RETRY_INITIAL
        self._status = {t: _Status(t) for t in self._targets}

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Keep the targets until cancelled."""
        log.info("token_broker_starting", targets=[t.key for t in self._targets], cs_user=self.facts.owner,
                 region=self.facts.region, credential_provider=self._provider)
        while True:
            wake = await self.sync()
            await asyncio.sleep(max(0.5, wake - self._clock()))

    async def sync(self) -> float:
        """One pass over every target; returns when (clock seconds) the next one is due."""
        token = await self._token()
        healthy = True
        for target in self._targets:
            healthy = await self._sync_target(target, token) and healthy
        now = self._clock()
        wake = now + self._check_period
        trouble = not healthy
        if isinstance(token, Token):
            due = self._chain.refresh_at(self._provider, self.facts.owner, self.facts.region)
            wake = min(wake, token.expires_at - EXPIRY_LEAD)
            if due is not None and due > now:
                wake = min(wake, due)
            else:
                trouble = True  # the cache has not replaced it yet (a refresh in flight elsewhere, or backing off)
        else:
            trouble = True
            for status in self._status.values():
                if status.state == "kept" and status.token_expires_at is not None:
                    wake = min(wake, status.token_expires_at - EXPIRY_LEAD)  # empty it before it expires
        if trouble:
            wake = min(wake, now + self._retry)
            self._retry = min(self._retry * 2, RETRY_MAX)
        else:
            self._retry = RETRY_INITIAL
        return wake

    async def _token(self) -> Token | Failure:
        owner, region = self.facts.owner, self.facts.region
        try:
            credential = await self._chain.get_from(self._provider, owner, region, settle=True)
        except CredentialError as exc:
            return Failure(exc.reason, exc.message)  # ProviderNotInChain: not_configured
        now = self._clock()
        token = usable_token(credential, owner=owner, provider=self._provider, region=region, now=now)
        error = self._chain.refresh_error(self._provider, owner, region)
        if not isinstance(token, Token):
            if token.reason == "token_expired" and error is not None:
                return Failure(error.reason, error.message)  # expiring because it could not be replaced: say why
            return token
        if self._teach is not None:
            self._teach(credential)
        due = self._chain.refresh_at(self._provider, owner, region)
        if due is not None and due <= now and error is not None:
            # The cache still serves this token, but could not replace it: say so, and drop it before it expires.
            return Failure(error.reason, error.message, last_valid=token)
        return token

    # ------------------------------------------------------------------ one target

    async def _sync_target(self, target: Target, token: Token | Failure) -> bool:
        for _ in range(3):
            try:
                current = await read(self._kube, target)
                plan = decide(target, current, token, self.facts, self._clock())
                answer = await write(self._kube, target, plan, create_namespace=self._create_namespace)
            except Conflict:
                continue  # changed (or created) meanwhile: read and decide again
            except NamespaceMissing as exc:
                self._failed(target, "namespace_missing", exc.message)
                return False
            except Forbidden as exc:
                self._failed(target, "forbidden", f"{exc.message}; {RBAC_HINT}")
                return False
            except KubeError as exc:
                self._failed(target, "kubernetes", str(exc))
                return False
            self._done(target, plan, token, answer, current.uid if current is not None else "")
            return True
        self._failed(target, "conflict", "the Secret kept changing while it was written; trying again")
        return False

    def _done(self, target: Target, plan: Plan, token: Token | Failure, answer: JSON | None, uid: str) -> None:
        status = self._status[target]
        now = self._clock()
        status.state, status.token_expires_at = plan.state, plan.token_expires_at
        fields: dict[str, Any] = {"target": target.key, "state": plan.state, "cs_user": self.facts.owner,
                                  "region": self.facts.region}
        if plan.token_expires_at is not None:
            fields["token_expires_at"] = format_time(plan.token_expires_at)
        if answer is not None:
            status.last_write = now
            uid = str((answer.get("metadata") or {}).get("uid") or uid)
            self._metrics.token_broker_writes.labels(target.key, plan.state).inc()
            log.info("token_secret_written", action=plan.action.value, **fields)
        self._metrics.token_broker_expiry.labels(target.key).set(plan.token_expires_at or 0)
        if plan.action is Action.LEAVE:
            self._note_failure(target, "not_managed", "the Secret is not managed by the CCM (no managed-by label)")
        elif isinstance(token, Failure):
            self._note_failure(target, token.reason, token.message)
        elif status.failing is not None:
            log.info("token_broker_recovered", target=target.key, previous_reason=status.failing,
                     cs_user=self.facts.owner)
            status.failing = None
        if plan.event is not None and uid:
            if status.noted != (plan.state, plan.event.reason):
                status.noted = (plan.state, plan.event.reason)
                self._record(target, uid, plan.event)
        elif plan.event is None:
            status.noted = None

    def _note_failure(self, target: Target, reason: str, message: str) -> None:
        status = self._status[target]
        status.last_error = (self._clock(), reason, message)
        self._metrics.token_broker_failures.labels(target.key, reason).inc()
        if status.failing != reason:
            status.failing = reason
            log.warning("token_broker_failing", target=target.key, reason=reason, message=message,
                        state=status.state, cs_user=self.facts.owner, region=self.facts.region)

    def _failed(self, target: Target, reason: str, message: str) -> None:
        self._note_failure(target, reason, message)
        self._status[target].state = "error"

    def _record(self, target: Target, uid: str, event: ObjectEvent) -> None:
        ref = {"kind": "Secret", "namespace": target.namespace, "name": target.name, "uid": uid, "apiVersion": "v1"}
        self._events.record_for(ref, event)  # the recorder sends it to the Secret's namespace

    # ------------------------------------------------------------------ status

    def status(self) -> list[dict[str, Any]]:
        """Per target: what it holds, the last write, the token's expiry, the last error. Never the token."""
        out: list[dict[str, Any]] = []
        for status in self._status.values():
            error = status.last_error
            out.append({
                "target": status.target.key, "owner": self.facts.owner, "region": self.facts.region,
                "state": status.state,
                "last_write": None if status.last_write is None else round(status.last_write, 3),
                "token_expires_at": status.token_expires_at,
                "last_error": None if error is None else {"at": round(error[0], 3), "reason": error[1],
                                                          "message": error[2]},
            })
        return out
