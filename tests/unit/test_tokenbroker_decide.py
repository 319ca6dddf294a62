"""The token broker's decision (pure): what a target Secret becomes from the Secret as read, the token and the time."""

from __future__ import annotations

import base64
from typing import Any, cast

import pytest
from pydantic import SecretStr

from ccm.metrics import Metrics
from ccm.tokenbroker import secret as s
from ccm.tokenbroker.controller import TokenBroker
from ccm.tokenbroker.decide import Action, Facts, Failure, Token, decide, usable_token
from ccm.tokenbroker.secret import Target, secret_view
from credentials.base import Credential, Identity, Verification

NOW = 1_800_000_000.0
TARGET = Target("cloudsigma-csi", "cloudsigma-token")
FACTS = Facts(owner="alice@example.com", region="zrh", cluster_name="c1")
TOKEN = Token("tok-1", NOW + 300, NOW - 10, "https://direct.zrh.cloudsigma.com/api/2.0/")
FAILING = Failure("access_denied", "Keycloak denied exchanging a token")
PROVIDER = "keycloak-token-exchange"


def credential(*, provider: str = PROVIDER, impersonated: bool = True, scheme: str = "bearer",
               status: str | None = "verified", subject: str = "alice@example.com",
               expires_at: float | None = NOW + 300) -> Credential:
    verification = Verification(status) if status else None  # type: ignore[arg-type]
    return Credential(scheme=scheme, secret=SecretStr("tok-1"), api_url_template="https://direct.{region}.x/api/2.0/",  # type: ignore[arg-type]
                      identity=Identity(provider=provider, user=subject, requested_subject=subject,
                                        verification=verification),
                      expires_at=expires_at, impersonated=impersonated)


def stored(plan_body: dict[str, Any], rv: str = "7") -> dict[str, Any]:
    """What the API returns after a write of ``plan_body``."""
    obj = {**plan_body, "metadata": {**plan_body["metadata"], "uid": "u1", "resourceVersion": rv}}
    return obj


def data_of(body: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in body["data"].items()}


def test_only_an_impersonated_verified_token_of_the_impersonation_provider_for_the_owner_is_usable() -> None:
    ok = usable_token(credential(), owner="Alice@Example.com", provider=PROVIDER, region="zrh", now=NOW)
    assert isinstance(ok, Token) and ok.value == "tok-1" and ok.api_url == "https://direct.zrh.x/api/2.0/"
    refused = {
        "password": credential(provider="password", impersonated=False, scheme="basic", status=None),
        "static": credential(provider="static-token", impersonated=True),
        "unverifiable": credential(status="unverifiable"),
        "opaque": credential(status="opaque"),
        "other user": credential(subject="bob@example.com"),
        "expired": credential(expires_at=NOW - 1),
    }
    for what, cred in refused.items():
        result = usable_token(cred, owner="alice@example.com", provider=PROVIDER, region="zrh", now=NOW)
        assert isinstance(result, Failure), what
        assert "tok-1" not in result.message


def test_missing_secret_is_created_with_the_token_the_facts_and_annotations_never_the_token() -> None:
    plan = decide(TARGET, None, TOKEN, FACTS, NOW)
    assert plan.action is Action.CREATE and plan.state == "written" and plan.body is not None
    assert data_of(plan.body) == {"access_token": "tok-1", "region": "zrh", "user_email": "alice@example.com",
                                  "cluster_name": "c1", "expires_at": s.format_time(NOW + 300),
                                  "api_url": TOKEN.api_url}
    meta = plan.body["metadata"]
    assert meta["labels"] == {s.MANAGED_BY_LABEL: s.MANAGED_BY}
    assert meta["annotations"] == {s.OWNER: "alice@example.com", s.REGION: "zrh",
                                   s.ISSUED_AT: s.format_time(NOW - 10), s.EXPIRES_AT: s.format_time(NOW + 300)}
    assert "tok-1" not in str(meta)


def test_a_current_secret_is_not_written_again_and_a_new_token_is_an_update_with_the_read_version() -> None:
    written = stored(decide(TARGET, None, TOKEN, FACTS, NOW).body or {})
    assert decide(TARGET, secret_view(written), TOKEN, FACTS, NOW + 5).action is Action.NONE
    newer = Token("tok-2", NOW + 600, NOW + 280, TOKEN.api_url)
    plan = decide(TARGET, secret_view(written), newer, FACTS, NOW + 280)
    assert plan.action is Action.UPDATE and plan.body is not None
    assert plan.body["metadata"]["resourceVersion"] == "7"
    assert data_of(plan.body)["access_token"] == "tok-2"


def test_a_secret_without_our_label_is_left_alone_with_an_event() -> None:
    foreign = {"metadata": {"name": TARGET.name, "namespace": TARGET.namespace, "uid": "u9", "resourceVersion": "3"},
               "data": {"access_token": base64.b64encode(b"theirs").decode()}}
    for token in (TOKEN, FAILING):
        plan = decide(TARGET, secret_view(foreign), token, FACTS, NOW)
        assert plan.action is Action.LEAVE and plan.body is None
        assert plan.event is not None and plan.event.reason == "TokenSecretNotManaged"


def test_failing_impersonation_keeps_the_last_valid_token_until_it_expires_then_empties_it() -> None:
    written = secret_view(stored(decide(TARGET, None, TOKEN, FACTS, NOW).body or {}))
    kept = decide(TARGET, written, FAILING, FACTS, NOW + 100)
    assert kept.action is Action.UPDATE and kept.state == "kept" and kept.body is not None
    assert data_of(kept.body)["access_token"] == "tok-1"
    assert kept.body["metadata"]["annotations"][s.LAST_ERROR].startswith("access_denied")
    assert kept.event is not None and kept.event.type == "Warning"
    annotated = secret_view(stored(kept.body, "8"))
    assert decide(TARGET, annotated, FAILING, FACTS, NOW + 120).action is Action.NONE
    emptied = decide(TARGET, annotated, FAILING, FACTS, NOW + 300)
    assert emptied.action is Action.UPDATE and emptied.state == "empty" and emptied.body is not None
    assert data_of(emptied.body)["access_token"] == "" and data_of(emptied.body)["expires_at"] == ""
    assert s.EXPIRES_AT not in emptied.body["metadata"]["annotations"]
    assert emptied.event is not None and emptied.event.reason == "TokenEmptied"


def test_a_token_held_for_another_owner_is_not_kept_while_impersonation_fails() -> None:
    written = secret_view(stored(decide(TARGET, None, TOKEN, FACTS, NOW).body or {}))
    plan = decide(TARGET, written, FAILING, Facts("carol@example.com", "zrh", "c1"), NOW + 10)
    assert plan.state == "empty" and plan.body is not None and data_of(plan.body)["access_token"] == ""


def test_no_token_and_no_secret_creates_one_without_a_token_saying_why() -> None:
    plan = decide(TARGET, None, FAILING, FACTS, NOW)
    assert plan.action is Action.CREATE and plan.body is not None and data_of(plan.body)["access_token"] == ""
    assert "access_denied" in plan.body["metadata"]["annotations"][s.LAST_ERROR]


def test_a_failed_refresh_keeps_the_chains_last_valid_token_even_in_a_recreated_secret() -> None:
    failing = Failure("invalid_client", "Keycloak refused the client", last_valid=TOKEN)
    plan = decide(TARGET, None, failing, FACTS, NOW + 100)
    assert plan.action is Action.CREATE and plan.state == "kept" and plan.body is not None
    assert data_of(plan.body)["access_token"] == "tok-1"
    assert plan.body["metadata"]["annotations"][s.LAST_ERROR].startswith("invalid_client")
    # Within EXPIRY_LEAD of its expiry it is no longer handed out: emptied before it expires.
    late = decide(TARGET, secret_view(stored(plan.body)), failing, FACTS, NOW + 299)
    assert late.state == "empty" and late.body is not None and data_of(late.body)["access_token"] == ""


class _StrayKeyErrorChain:
    """A chain whose acquisition fails with a KeyError of its own (a bug), not an unknown provider."""

    async def get_from(self, name: str, user_email: str, region: str, *, settle: bool = False) -> Credential:
        raise KeyError("expires_at")


async def test_a_stray_key_error_while_acquiring_is_not_reported_as_a_provider_not_configured() -> None:
    broker = TokenBroker(kube=cast(Any, None), chain=cast(Any, _StrayKeyErrorChain()), provider=PROVIDER,
                         facts=FACTS, targets=[], metrics=Metrics(), events=cast(Any, None))
    with pytest.raises(KeyError, match="expires_at"):
        await broker.sync()
