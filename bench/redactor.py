"""``python -m bench.redactor``: the log redactor after many token rotations — memory and per-line cost.

A simulated clock runs 10,000 rotations of 15-minute tokens (~104 days) through the daemon's credential path
(:class:`ccm.tenant.services.RedactingSource`), three requests per token. Measured after 10 and after 10,000 rotations:
the redactor's memory (tracemalloc, bytes allocated since it was created) and the time to redact one ordinary
log line. The reference is a redactor that keeps every token (what it did before issue 14), measured in the same
run, so the figures are ratios on this noisy shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from ccm.logging import Redactor
from ccm.tenant.services import RedactingSource
from credentials.base import Credential, Identity

#: An ordinary line (no word that makes the pattern pass run): the cost is the scan for known secrets.
LINE = ("node_reconciled node=worker-17 server_uuid=63dd227a-9502-4311-919e-cd49f3416753 matched_by=name "
        "action=none reason=InSync duration_ms=12 cs_user=alice@example.com")


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class _Chain:
    """A new ~800-byte token whenever the clock passed the refresh point of the last one."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.current: Credential | None = None
        self.issued = 0

    async def get(self, user_email: str, region: str) -> Credential:
        if self.current is None or self.clock.now >= (self.current.expires_at or 0) - 120:
            self.issued += 1
            body = base64.urlsafe_b64encode(f'{{"sub":"alice","n":{self.issued}}}'.encode()).decode()
            token = f"eyJhbGciOiJSUzI1NiJ9.{body}.{'s' * 700}{self.issued:08d}"
            self.current = Credential("bearer", SecretStr(token), "https://api/", Identity("bench"),
                                      expires_at=self.clock.now + 900)
        return self.current

    def invalidate(self, credential: Credential) -> None:
        self.current = None


class _KeepAll(Redactor):
    """The reference: what the redactor did before issue 14 — every token kept for good, and the whole list
    re-sorted on every add (one add per CloudSigma request)."""

    def add(self, secret: str | None, *, until: float | None = None) -> None:
        if secret and len(secret) >= 6:
            self._configured.add(secret)
            self._rebuild()


def _line_cost(redactor: Redactor, repeat: int) -> float:
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            redactor.redact_text(LINE)
        best = min(best, (time.perf_counter() - started) / repeat)
    return best


async def _rotate(source: RedactingSource, clock: _Clock, times: int) -> None:
    for _ in range(times):
        clock.now += 900
        for _ in range(3):
            await source.get("alice@example.com", "zrh")


async def _measure(kind: type[Redactor], rotations: int, repeat: int) -> dict[str, Any]:
    """Two passes over the same rotations: one traced (memory), one untraced (times: tracemalloc slows both)."""
    out: dict[str, Any] = {}
    for traced in (True, False):
        clock = _Clock()
        if traced:
            tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0] if traced else 0
        redactor = kind(["configured-client-secret"], clock=clock)
        source = RedactingSource(_Chain(clock), redactor)  # type: ignore[arg-type]
        done = 0
        for checkpoint in (10, rotations):
            await _rotate(source, clock, checkpoint - done)
            done = checkpoint
            row = out.setdefault(str(checkpoint), {"secrets_held": len(redactor)})
            if traced:
                row["memory_bytes"] = tracemalloc.get_traced_memory()[0] - base
                continue
            started = time.perf_counter()
            for _ in range(100):  # requests served with the current token: one add each
                await source.get("alice@example.com", "zrh")
            row["per_request_add_us"] = (time.perf_counter() - started) / 100 * 1e6
            row["per_line_us"] = _line_cost(redactor, repeat) * 1e6
        if traced:
            tracemalloc.stop()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redactor", description=__doc__)
    parser.add_argument("--rotations", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2_000, help="redactions per timing sample")
    args = parser.parse_args(argv)
    ours = asyncio.run(_measure(Redactor, args.rotations, args.repeat))
    reference = asyncio.run(_measure(_KeepAll, args.rotations, max(1, args.repeat // 20)))
    first, last = ours["10"], ours[str(args.rotations)]
    result = {
        "rotations": args.rotations,
        "live_only": ours,
        "keep_all_reference": reference,
        "per_line_ratio_live_only": last["per_line_us"] / first["per_line_us"],
        "per_line_ratio_keep_all": reference[str(args.rotations)]["per_line_us"] / first["per_line_us"],
        "per_request_add_ratio_live_only": last["per_request_add_us"] / first["per_request_add_us"],
        "per_request_add_ratio_keep_all": (reference[str(args.rotations)]["per_request_add_us"]
                                           / first["per_request_add_us"]),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
