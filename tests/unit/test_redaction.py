"""Logs never carry a secret: known values, bearer/basic headers, JWTs, key=value pairs, URL passwords."""

from __future__ import annotations

import io
import json

import structlog

from ccm.logging import REDACTED, Redactor, configure_logging

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
