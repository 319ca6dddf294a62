"""``python -m tests.robustness.mutants MUTANT [cloudsigma-ccm arguments]``: the real daemon with a bug fixed in an
earlier round put back, to show the robustness run catches it (``python -m tests.robustness --mutant MUTANT``).

- ``any-404-is-proof``: a 404 from anything (a proxy's HTML page, no X-REQUEST-ID) counts as CloudSigma's own
  "this server does not exist" (``cloudsigma.errors.is_notexist_proof`` before it checked body and request id).
- ``blind-status-write``: the address write to ``nodes/status`` without the uid and resourceVersion it was decided
  from (``ccm.kube.patching.replace_addresses`` before it carried preconditions).
- ``no-account-check``: deletion on a genuine 404 from a wrong location/account — no cluster-level verdict on the
  listing (``ccm.nodes.account.account_verdict``) and no fresh listing holding another Node's server
  (``LifecycleController._account_confirmed``), as before the account check.
- ``untaint-without-ip``: a node initialized (providerID, labels, the uninitialized taint removed) although its
  server gives it no IP address (``ccm.nodes.decide.plan_initialization`` before the NoNodeAddress rule).
- ``no-fence``: a deposed leader's writes go out — the transport no longer asks the lease's fence
  (``ccm.fencing.Fence.writing``), as before fencing.
"""

from __future__ import annotations

import sys
from typing import Any

from ccm import cli

MUTANTS = ("any-404-is-proof", "blind-status-write", "no-account-check", "no-fence", "untaint-without-ip")


def _any_404_is_proof() -> None:
    import cloudsigma.client
    import cloudsigma.errors

    def is_notexist_proof(status: int, body: Any, request_id: str | None) -> bool:
        return status == 404

    cloudsigma.errors.is_notexist_proof = is_notexist_proof
    cloudsigma.client.is_notexist_proof = is_notexist_proof  # type: ignore[attr-defined]


def _blind_status_write() -> None:
    from ccm.kube import patching
    from ccm.kube.fetching import NODES

    async def replace_addresses(kube: Any, name: str, addresses: list[dict[str, str]], *, uid: str | None,
                                resource_version: str | None) -> Any:
        body = {"status": {"addresses": addresses}}
        return await kube.request("PATCH", f"{NODES}/{name}/status", body=body,
                                  content_type=patching.MERGE_PATCH)

    patching.replace_addresses = replace_addresses


def _no_account_check() -> None:
    from ccm.nodes import account, lifecycle

    def account_verdict(listed: Any, names: Any, expected: Any) -> account.Verdict:
        return account.Verdict.CONFIRMED if any(u in listed for u in expected) else account.Verdict.UNKNOWN

    account.account_verdict = account_verdict
    lifecycle.LifecycleController._account_confirmed = (  # type: ignore[method-assign]
        lambda self, view, snapshot: "(not checked)")


def _untaint_without_ip() -> None:
    from ccm.nodes import decide, reconcile
    from ccm.nodes.labels import desired_labels, labels_to_add
    from ccm.nodes.view import UNINITIALIZED_TAINT
    from ccm.providerid import format_provider_id

    original = decide.plan_initialization

    def plan_initialization(node: Any, server: Any, *, region: str, zone: str, **kwargs: Any) -> decide.NodePlan:
        plan = original(node, server, region=region, zone=zone, **kwargs)
        if plan.blocked_reason != decide.NO_NODE_ADDRESS:
            return plan
        labels: dict[str, str | None] = dict(labels_to_add(node.labels, desired_labels(server, region=region,
                                                                                       zone=zone)))
        return decide.NodePlan(provider_id=None if node.provider_id else format_provider_id(server.uuid),
                               labels=labels, taints=decide._without(node.taints, UNINITIALIZED_TAINT))

    reconcile.plan_initialization = plan_initialization  # type: ignore[attr-defined]


def _no_fence() -> None:
    import contextlib

    from ccm import fencing

    fencing.Fence.writing = lambda self, method, path: contextlib.nullcontext()  # type: ignore[method-assign,assignment,return-value]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MUTANTS:
        print(f"usage: python -m tests.robustness.mutants {{{','.join(MUTANTS)}}} [args]", file=sys.stderr)
        return 2
    {"any-404-is-proof": _any_404_is_proof, "blind-status-write": _blind_status_write,
     "no-account-check": _no_account_check, "no-fence": _no_fence,
     "untaint-without-ip": _untaint_without_ip}[argv[0]]()
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
