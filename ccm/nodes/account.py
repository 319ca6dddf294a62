"""Is a server listing the cluster's account? One cluster-level answer instead of one wrong answer per node.

The PRD's fallback credential (the global ``cloudsigma-credentials`` Secret) is usually *another account*
than the impersonated owner; a mistyped ``CLOUDSIGMA_USER_EMAIL`` or an API URL of another location gives a
complete, healthy listing of the wrong account too. Such a listing holds none of the servers that the Ready
Nodes name in ``spec.providerID`` — a kubelet runs on each of those, so its server exists in the right account
(see :func:`account_verdict` for the exact rule).
Then nothing is decided from the listing: no node is initialized or changed, no per-node GET or Event, nothing
deleted; one warning (log line + one Event) says so, and when a listing holds them again (the preferred
provider is back) an info line says that and waiting nodes are re-queued.

NotReady nodes do not count: their servers may really be gone, which must not make the account look wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from enum import Enum

import structlog

from ccm.kube.events import EventRecorder, ObjectEvent
from ccm.metrics import Metrics
from ccm.nodes.view import NodeView
from ccm.providerid import ForeignProviderID, parse_provider_id
from ccm.servercache import ServerSnapshot

log = structlog.get_logger(__name__)

WRONG_ACCOUNT = "WrongCloudSigmaAccount"
#: Events about the cluster as a whole are recorded against the ``default`` Namespace object.
CLUSTER_REF = {"kind": "Namespace", "name": "default", "apiVersion": "v1"}


class Verdict(Enum):
    CONFIRMED = "confirmed"  # the listing holds the server of at least one Ready node with a providerID
    WRONG = "wrong"  # Ready nodes name servers by providerID; the listing holds none of them
    UNKNOWN = "unknown"  # no Ready node with a CloudSigma providerID: nothing to compare with


def expected_servers(nodes: Iterable[NodeView]) -> dict[str, str]:
    """Server uuid → node name for the providerIDs of Ready nodes."""
    expected: dict[str, str] = {}
    for node in nodes:
        if not node.provider_id or node.ready != "True":
            continue
        try:
            expected[parse_provider_id(node.provider_id)] = node.name
        except ForeignProviderID:
            continue
    return expected


def account_verdict(listed: Collection[str], names: Collection[str], expected: Mapping[str, str]) -> Verdict:
    """Pure. ``listed``/``names``: the uuids (lower case) and names of a listing; ``expected``: uuid → node name
    of :func:`expected_servers`.

    WRONG needs two or more such nodes, none of whose servers — by uuid or by the node's name — is listed: one
    node alone could as well have a stale providerID (seed 001), which its own reconcile diagnoses (one GET, one
    Event); a listing holding a server with a node's name is the cluster's account with stale providerIDs.
    """
    if not expected:
        return Verdict.UNKNOWN
    if any(uuid in listed for uuid in expected):
        return Verdict.CONFIRMED
    if len(expected) < 2 or any(name in names for name in expected.values()):
        return Verdict.UNKNOWN
    return Verdict.WRONG


class AccountMonitor:
    """Judges each snapshot once; warns once per wrong-account episode; reports the return to normal."""

    def __init__(self, *, nodes: Callable[[], Iterable[NodeView]], events: EventRecorder, metrics: Metrics,
                 user_email: str, region: str, request_refresh: Callable[[Callable[[ServerSnapshot], bool]], None]
                 | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._nodes = nodes
        self._events = events
        self._metrics = metrics
        self._user = user_email
        self._region = region
        self._request_refresh = request_refresh
        self._clock = clock
        self._judged: ServerSnapshot | None = None
        self._verdict = Verdict.UNKNOWN
        self._wrong_since: float | None = None
        self._listeners: list[Callable[[], None]] = []

    @property
    def wrong(self) -> bool:
        return self._wrong_since is not None

    def add_recovery_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called when a listing of the right account follows a wrong one."""
        self._listeners.append(listener)

    def verdict(self, snapshot: ServerSnapshot) -> Verdict:
        """The verdict on ``snapshot`` (computed once per snapshot)."""
        if snapshot is self._judged:
            return self._verdict
        expected = expected_servers(self._nodes())
        verdict = account_verdict(snapshot.by_uuid, snapshot.by_name, expected)
        self._judged, self._verdict = snapshot, verdict
        if verdict is Verdict.WRONG and self._wrong_since is None:
            self._start_episode(snapshot, len(expected))
        elif verdict is Verdict.CONFIRMED and self._wrong_since is not None:
            self._end_episode(snapshot)
        return verdict

    def _start_episode(self, snapshot: ServerSnapshot, expected: int) -> None:
        self._wrong_since = self._clock()
        self._metrics.wrong_account.set(1)
        message = (f"the CloudSigma listing of {self._user or 'the configured user'} in {self._region} (credential "
                   f"{snapshot.provider or 'unknown'}) holds none of the servers that the cluster's Ready Nodes name "
                   "in spec.providerID: it is another account (a credential fallback to a different user, a wrong "
                   "CLOUDSIGMA_USER_EMAIL, or the API URL of another location). No node is changed or deleted "
                   "until a listing holds them again")
        log.warning("cloudsigma_wrong_account", diagnosis=message, credential_provider=snapshot.provider,
                    token_sub=snapshot.token_subject, servers_listed=len(snapshot.servers),
                    ready_nodes_with_provider_id=expected, request_ids=list(snapshot.request_ids)[:3])
        self._events.record_for(CLUSTER_REF, ObjectEvent.warning(WRONG_ACCOUNT, message))
        if self._request_refresh is not None:
            # Look again every max-age until the right account is back, so nodes need not wait out a backoff.
            self._request_refresh(lambda snap: self.verdict(snap) is not Verdict.WRONG)

    def _end_episode(self, snapshot: ServerSnapshot) -> None:
        since, self._wrong_since = self._wrong_since, None
        self._metrics.wrong_account.set(0)
        log.info("cloudsigma_account_confirmed", credential_provider=snapshot.provider,
                 wrong_for_seconds=round(self._clock() - (since or 0.0), 1))
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("recovery_listener_failed")
