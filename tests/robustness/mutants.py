"""``python -m tests.robustness.mutants MUTANT [cloudsigma-ccm arguments]``: the real daemon with a bug fixed in an
earlier round put back, to show the robustness run catches it (``python -m tests.robustness --mutant MUTANT``).

- ``any-404-is-proof``: a 404 from anything (a proxy's HTML page, no X-REQUEST-ID) counts as CloudSigma's own
  "this server does not exist" (``cloudsigma.errors.is_notexist_proof`` before it checked body and request id).
- ``blind-status-write``: the address write to ``nodes/status`` without the uid and resourceVersion it was decided
  from (``ccm.kube.patching.replace_addresses`` before it carried preconditions).
"""

from __future__ import annotations

import sys
from typing import Any

from ccm import cli

MUTANTS = ("any-404-is-proof", "blind-status-write")


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


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MUTANTS:
        print(f"usage: python -m tests.robustness.mutants {{{','.join(MUTANTS)}}} [args]", file=sys.stderr)
        return 2
    {"any-404-is-proof": _any_404_is_proof, "blind-status-write": _blind_status_write}[argv[0]]()
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
