"""Logs never carry a secret: known values, bearer/basic headers, JWTs, key=value pairs, URL passwords."""

from __future__ import annotations

import base64
import io
import json
import tracemalloc

import structlog
from pydantic import SecretStr

from ccm.logging import REDACTED, Redactor, configure_logging
from ccm.tenant.services import RedactingSource
from credentials.base import Credential, Identity

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def test_patterns() -> None:
    r = Redactor(["my-client-secret"])
    text = (f"Authorization: Bearer {JWT} basic Zm9vOmJhcg== client_secret=abc123xyz "
            "password: hunter22 url https://user:pa55word@host/x my-client-secret")
    out = r.redact_text(text)
    for secret in (JWT, "Zm9vOmJhcg==", "abc123xyz", "hunter22", "pa55word", "my-client-secret"):
        assert secret not in out
    assert REDACTED in out


def test_redaction_in_exceptions_and_nested_values() -> None:
    stream = io.StringIO()
    redactor = configure_logging(level="debug", fmt="json", stream=stream)
    redactor.add("opaque-token-value-123")
    log = structlog.get_logger("t")
    try:
        raise RuntimeError("failed with token opaque-token-value-123")
    except RuntimeError:
        log.exception("boom", nested={"list": ["opaque-token-value-123", JWT]})
    out = stream.getvalue()
    assert "opaque-token-value-123" not in out and JWT not in out
    assert json.loads(out.splitlines()[-1])["event"] == "boom"


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _RotatingChain:
    """Stands in for the credential chain: a fresh 15-minute token once the last one is due for refresh."""

    def __init__(self, clock: _Clock) -> None:
        self._clock = clock
        self._current: Credential | None = None
        self.issued = 0

    async def get(self, user_email: str, region: str) -> Credential:
        if self._current is None or self._clock.now >= (self._current.expires_at or 0) - 120:
            self.issued += 1
            body = base64.urlsafe_b64encode(f'{{"sub":"alice","n":{self.issued:08d}}}'.encode()).decode()
            token = f"eyJhbGciOiJSUzI1NiJ9.{body}.{'s' * 700}{self.issued:08d}"  # ~800 bytes like a real JWT
            self._current = Credential("bearer", SecretStr(token), "https://api/", Identity("static-token"),
                                       expires_at=self._clock.now + 900)
        return self._current

    def invalidate(self, credential: Credential) -> None:
        self._current = None


async def test_ten_thousand_rotations_leave_memory_and_per_line_cost_flat() -> None:
    """90 days of 15-minute tokens, each handed out several times (one add per CloudSigma request), every tenth
    one invalidated by a 401: the redactor keeps the configured secret and the live tokens only."""
    clock = _Clock(1_800_000_000.0)
    redactor = Redactor(["configured-client-secret"], clock=clock)
    chain = _RotatingChain(clock)
    source = RedactingSource(chain, redactor)  # type: ignore[arg-type]  # the daemon's path to the redactor
    line = "node_reconciled node=worker-1 server_uuid=63dd227a-9502-4311-919e-cd49f3416753 duration_ms=12"

    async def rotate(times: int) -> None:
        for _ in range(times):
            clock.now += 900
            for request in range(3):
                credential = await source.get("alice@example.com", "zrh")
                if request == 2 and chain.issued % 10 == 0:
                    source.invalidate(credential)

    await rotate(10)
    held_after_10 = len(redactor)
    tracemalloc.start()
    try:
        await rotate(1_000)
        after_1000 = tracemalloc.get_traced_memory()[0]
        await rotate(9_000)
        after_10000 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert chain.issued >= 10_000
    # Every log string is checked against each held secret: the count is the per-line cost.
    assert len(redactor) == held_after_10 <= 3, f"{len(redactor)} secrets held after {chain.issued} tokens"
    assert after_10000 - after_1000 < 64 * 1024, f"grew by {after_10000 - after_1000} bytes over 9,000 rotations"
    latest = (await source.get("alice@example.com", "zrh")).secret.get_secret_value()
    assert redactor.redact_text(f"{line} token={latest} retry") == f"{line} token={REDACTED} retry"
    assert redactor.redact_text("configured-client-secret") == REDACTED


def test_repeated_add_keeps_one_entry_and_a_retired_token_goes_after_the_grace() -> None:
    clock = _Clock(1000.0)
    redactor = Redactor(clock=clock, grace=60)
    redactor.add("token-one-value", until=2000.0)
    before = redactor._longest_first
    for _ in range(1000):
        redactor.add("token-one-value", until=2000.0)
    assert redactor._longest_first is before  # no rebuild on a repeated add
    redactor.retire("token-one-value")
    clock.now = 1061.0
    redactor.add("token-two-value", until=3000.0)  # a new token prunes what can no longer appear
    assert redactor.redact_text("token-one-value") == "token-one-value"
    assert redactor.redact_text("token-two-value") == REDACTED


def test_tokens_are_bounded_even_without_expiry() -> None:
    redactor = Redactor(["configured-secret"], max_tokens=8)
    for i in range(100):
        redactor.add(f"static-token-{i:04d}", until=float("inf"))
    assert len(redactor) == 9
    assert redactor.redact_text("static-token-0099 configured-secret") == f"{REDACTED} {REDACTED}"
