"""When a CloudSigma answer proves that something does not exist (the one rule, in one place)."""

from __future__ import annotations

from typing import Any

import pytest

from cloudsigma.errors import is_notexist_proof, parse_error_body

NOTEXIST = {"error_type": "notexist", "error_message": "Server 63dd227a does not exist.", "error_point": None}


@pytest.mark.parametrize(
    ("status", "body", "request_id", "proof"),
    [
        (404, [NOTEXIST], "c78c2720-fdc6-4b5c-8871-5f4109df24e7", True),  # the documented list shape
        (404, NOTEXIST, "c78c2720-fdc6-4b5c-8871-5f4109df24e7", True),  # the incident report's single object
        (404, [NOTEXIST], None, False),  # no X-REQUEST-ID: not provably CloudSigma's answer
        (404, [NOTEXIST], "", False),
        (404, None, "c78c2720", False),  # an HTML page of a proxy (no JSON body)
        (404, [{"error_type": "validation", "error_message": "x"}], "c78c2720", False),
        (404, {"detail": "Not Found"}, "c78c2720", False),  # some other API's 404
        (400, [NOTEXIST], "c78c2720", False),  # notexist, but not a 404
        (403, [{"error_type": "permission"}], "c78c2720", False),
    ],
)
def test_notexist_proof(status: int, body: Any, request_id: str | None, proof: bool) -> None:
    assert is_notexist_proof(status, parse_error_body(body), request_id) is proof
