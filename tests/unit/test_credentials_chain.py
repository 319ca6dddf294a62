"""CredentialChain: fallback with one warning per episode, recovery, 403 policy, invalidation, registry."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from pydantic import SecretStr
from structlog.testing import capture_logs

from ccm.metrics import Metrics
from credentials import build_chain, default_chain
from credentials.base import (
    Credential,
    CredentialError,
    CredentialNotConfigured,
    CredentialProvider,
    CredentialRejected,
    CredentialUnavailable,
    Identity,
    NoCredential,
    ProviderNotInChain,
)
from credentials.cache import CacheKey, TokenCache
from credentials.chain import CredentialChain
from credentials.providers.keycloak import KeycloakTokenExchangeProvider
from credentials.providers.password import PasswordProvider
from credentials.providers.service_provider import ServiceProviderProvider
from credentials.providers.static import StaticTokenProvider
from credentials.registry import (
    ENTRY_POINT_GROUP,
    UnknownCredentialProvider,
    create_provider,
    known_providers,
    load_factory,
    register,
    unregister,
)


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class FakeProvider:
    """Fails with ``error`` while it is set; counts acquisitions."""

    def __init__(self, name: str, clock: Clock, *, impersonated: bool = True, lifetime: float | None = 300.0,
                 claims: dict[str, Any] | None = None) -> None:
        self.name = name
        self.clock = clock
        self.impersonated = impersonated
        self.lifetime = lifetime
        self.claims = claims
        self.calls = 0
        self.error: BaseException | None = None
        self.closed = False
        self.issued: list[str] = []

    async def acquire(self, user_email: str, region: str) -> Credential:
        self.calls += 1
        if self.error is not None:
            raise self.error
        claims = self.claims if self.claims is not None else {
            "sub": "4705fb9a-0591-4ead-9d42-b2e86493f9b4", "azp": "kube-dc-partner", "aud": "cloudsigma-api",
            "preferred_username": user_email, "exp": int(self.clock() + 300)}
        token = jwt({**claims, "n": self.calls, "p": self.name})
        self.issued.append(token)
        return Credential(
            scheme="bearer", secret=SecretStr(token),
            api_url_template="https://direct.{region}.cloudsigma.com/api/2.0/" if self.impersonated
            else "https://{region}.cloudsigma.com/api/2.0/",
            identity=Identity(provider=self.name, user=user_email, claims=claims,
                              requested_subject=user_email if self.impersonated else None),
            expires_at=None if self.lifetime is None else self.clock() + self.lifetime,
            impersonated=self.impersonated,
        )

    async def aclose(self) -> None:
        self.closed = True


USER = "tsap@shalb.com"


def make_chain(*providers: FakeProvider, clock: Clock, allow: bool = False) -> CredentialChain:
    cache = TokenCache(clock=clock, rng=lambda: 0.0)
    return CredentialChain(list(providers), cache, logger=structlog.get_logger("credentials.chain"),
                           allow_fallback_on_forbidden=allow, clock=clock)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def test_fake_provider_is_a_credential_provider() -> None:
    assert isinstance(FakeProvider("x", Clock()), CredentialProvider)


async def test_fallback_logs_one_warning_per_episode_and_recovers() -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock)
    pw = FakeProvider("password", clock, impersonated=False, lifetime=None)
    kc.error = CredentialUnavailable("Keycloak token exchange timed out after 15s", provider=kc.name,
                                     reason="timeout")
    with capture_logs() as logs:
        chain = make_chain(kc, pw, clock=clock)
        for _ in range(20):
            cred = await chain.get(USER, "next")
            assert cred.identity.provider == "password"
            assert not cred.impersonated
            clock.advance(61)  # past any backoff: each call really retries keycloak
        assert kc.calls == 20  # the preferred provider was retried on every new acquisition
        assert chain.active_provider == "password"
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1
        (warning,) = warnings
        assert warning["event"] == "credential_fallback"
        assert warning["credential_provider"] == "keycloak-token-exchange"
        assert warning["reason"] == "timeout"
        assert warning["message"] == "Keycloak token exchange timed out after 15s"
        assert warning["next_provider"] == "password"
        assert len(events(logs, "credential_provider_still_failing")) == 19

        # Keycloak comes back: the next acquisition returns to impersonation by itself.
        kc.error = None
        cred = await chain.get(USER, "next")
        assert cred.identity.provider == "keycloak-token-exchange"
        assert cred.impersonated
        assert chain.active_provider == "keycloak-token-exchange"
        assert chain.last_used(USER.upper(), "next") == "keycloak-token-exchange"
        (recovered,) = events(logs, "credential_provider_recovered")
        assert recovered["credential_provider"] == "keycloak-token-exchange"
        assert recovered["failures"] == 20

        # A new outage is a new episode: one more warning.
        clock.advance(400)
        kc.error = CredentialRejected("Keycloak denied exchanging", provider=kc.name, reason="access_denied")
        for _ in range(3):
            assert (await chain.get(USER, "next")).identity.provider == "password"
            clock.advance(61)
        assert len(events(logs, "credential_fallback")) == 2
        assert events(logs, "credential_fallback")[1]["reason"] == "access_denied"


async def test_backoff_keeps_the_idp_quiet_during_an_outage() -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock)
    pw = FakeProvider("password", clock, impersonated=False, lifetime=None)
    kc.error = CredentialUnavailable("down", provider=kc.name)
    chain = make_chain(kc, pw, clock=clock)
    for _ in range(100):
        assert (await chain.get(USER, "next")).identity.provider == "password"
    assert kc.calls == 1
    assert pw.calls == 1


async def test_episodes_are_per_user_and_region() -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock)
    pw = FakeProvider("password", clock, impersonated=False, lifetime=None)
    kc.error = CredentialRejected("denied", provider=kc.name)
    with capture_logs() as logs:
        chain = make_chain(kc, pw, clock=clock)
        await chain.get("a@example.com", "zrh")
        await chain.get("b@example.com", "zrh")
        await chain.get("a@example.com", "fra")
        await chain.get("A@Example.com", "zrh")  # same user as the first
    assert len(events(logs, "credential_fallback")) == 3


async def test_all_fail_raises_no_credential_with_every_failure() -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock)
    pw = FakeProvider("password", clock, impersonated=False)
    kc.error = CredentialRejected("Keycloak refused client 'ccm': check CLOUDSIGMA_CLIENT_SECRET",
                                  provider=kc.name, reason="invalid_client")
    pw.error = CredentialNotConfigured("not configured: set CLOUDSIGMA_USERNAME", provider="password")
    with capture_logs() as logs:
        chain = make_chain(kc, pw, clock=clock)
        with pytest.raises(NoCredential) as caught:
            await chain.get(USER, "next")
        for _ in range(5):
            clock.advance(120)
            with pytest.raises(NoCredential):
                await chain.get(USER, "next")
    err = caught.value
    assert [f.reason for f in err.failures] == ["invalid_client", "not_configured"]
    assert "CLOUDSIGMA_CLIENT_SECRET" in str(err)
    assert "CLOUDSIGMA_USERNAME" in str(err)
    assert len(events(logs, "credential_chain_exhausted")) == 1
    assert len(events(logs, "credential_fallback")) == 1
    assert len(events(logs, "credential_provider_failed")) == 1


async def test_forbidden_is_not_retried_with_other_credentials_by_default() -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock)
    pw = FakeProvider("password", clock, impersonated=False, lifetime=None)
    chain = make_chain(kc, pw, clock=clock)
    cred = await chain.get(USER, "next")
    assert cred.impersonated
    assert await chain.fallback_after_forbidden(USER, "next", cred) is None
    assert pw.calls == 0


async def test_forbidden_fallback_with_opt_in() -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock)
    pw = FakeProvider("password", clock, impersonated=False, lifetime=None)
    with capture_logs() as logs:
        chain = make_chain(kc, pw, clock=clock, allow=True)
        cred = await chain.get(USER, "next")
        other = await chain.fallback_after_forbidden(USER, "next", cred)
    assert other is not None
    assert other.identity.provider == "password"
    (warning,) = events(logs, "credential_forbidden_fallback")
    assert warning["credential_provider"] == "keycloak-token-exchange"
    assert warning["fallback_provider"] == "password"
    # Nothing lower than the last provider.
    assert await chain.fallback_after_forbidden(USER, "next", other) is None


async def test_invalidate_forces_a_new_acquisition() -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock)
    chain = make_chain(kc, clock=clock)
    first = await chain.get(USER, "next")
    assert await chain.get(USER, "next") is first
    chain.invalidate(first)
    second = await chain.get(USER, "next")
    assert second is not first
    assert kc.calls == 2


async def test_acquisition_logs_claims_but_never_the_token() -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock)
    with capture_logs() as logs:
        chain = make_chain(kc, clock=clock)
        cred = await chain.get(USER, "next")
    (acquired,) = events(logs, "credential_acquired")
    assert acquired["log_level"] == "info"
    assert acquired["token_sub"] == "4705fb9a-0591-4ead-9d42-b2e86493f9b4"
    assert acquired["token_azp"] == "kube-dc-partner"
    assert acquired["token_aud"] == "cloudsigma-api"
    assert acquired["requested_subject"] == USER
    assert acquired["api_host"] == "direct.next.cloudsigma.com"
    assert acquired["expires_in"] == 300
    assert "token_exp" in acquired
    token = cred.secret.get_secret_value()
    assert token not in repr(logs)
    assert token not in repr(cred)
    assert token not in str(cred)


async def test_a_token_for_another_subject_is_never_used_and_the_chain_falls_back() -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock,
                      claims={"sub": "service-account-uuid", "preferred_username": "service-account-ccm",
                              "azp": "kube-dc-partner"})
    pw = FakeProvider("password", clock, impersonated=False, lifetime=None)
    seen: list[tuple[str, str]] = []
    with capture_logs() as logs:
        chain = make_chain(kc, pw, clock=clock)
        chain.on_event = lambda event, provider: seen.append((event, provider))
        cred = await chain.get(USER, "next")
    # The refused token is neither returned nor cached: the next provider serves, as for any failure.
    assert cred.identity.provider == "password"
    assert chain.cache.peek(CacheKey.of(USER, "next", "keycloak-token-exchange")) is None
    (mismatch,) = events(logs, "impersonation_subject_mismatch")
    assert mismatch["log_level"] == "error"
    assert mismatch["requested_user"] == USER
    assert mismatch["token_preferred_username"] == "service-account-ccm"
    assert mismatch["token_sub"] == "service-account-uuid" and mismatch["token_azp"] == "kube-dc-partner"
    assert mismatch["reason"] == "impersonation_subject_mismatch"
    (fallback,) = events(logs, "credential_fallback")
    assert fallback["reason"] == "impersonation_subject_mismatch"
    assert ("verify:subject_mismatch", "keycloak-token-exchange") in seen
    assert not [e for e in logs if e["event"] == "credential_acquired" and e["credential_provider"] == kc.name]
    status = {s["provider"]: s for s in chain.status()}
    assert status["keycloak-token-exchange"]["last_failure"]["reason"] == "impersonation_subject_mismatch"
    assert status["password"]["last_success"] is not None


@pytest.mark.parametrize("claim", ["preferred_username", "email"])
async def test_a_token_naming_the_user_in_an_accepted_claim_is_used(claim: str) -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock,
                      claims={"sub": "u-1", claim: USER.upper(), "exp": int(clock() + 300)})
    with capture_logs() as logs:
        cred = await make_chain(kc, clock=clock).get(USER, "next")
    assert cred.identity.verification is not None
    assert cred.identity.verification.status == "unverifiable"  # no issuer configured in this chain
    assert cred.identity.verification.matched_claim == claim
    (warning,) = events(logs, "token_unverifiable")
    assert warning["credential_provider"] == "keycloak-token-exchange"


async def test_unexpected_exception_becomes_unavailable_without_its_text() -> None:
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock)
    pw = FakeProvider("password", clock, impersonated=False, lifetime=None)
    kc.error = KeyError("client_secret=hunter2-very-secret")
    with capture_logs() as logs:
        chain = make_chain(kc, pw, clock=clock)
        assert (await chain.get(USER, "next")).identity.provider == "password"
    (warning,) = events(logs, "credential_fallback")
    assert warning["reason"] == "internal_error"
    assert "KeyError" in warning["message"]
    assert "hunter2" not in repr(logs)


async def test_get_from_a_provider_not_in_the_chain_is_a_typed_not_configured_error() -> None:
    clock = Clock()
    chain = make_chain(FakeProvider("password", clock, impersonated=False, lifetime=None), clock=clock)
    with pytest.raises(ProviderNotInChain) as raised:
        await chain.get_from("keycloak-token-exchange", USER, "next")
    assert raised.value.reason == "not_configured" and raised.value.provider == "keycloak-token-exchange"


async def test_uncacheable_provider_is_called_each_time_but_logged_once() -> None:
    clock = Clock()
    static = StaticTokenProvider(token=SecretStr(jwt({"sub": "x"})), clock=clock)
    with capture_logs() as logs:
        chain = make_chain(static, clock=clock)  # type: ignore[arg-type]
        for _ in range(5):
            await chain.get(USER, "zrh")
    assert len(events(logs, "credential_acquired")) == 1


async def test_chain_validates_and_closes_providers() -> None:
    clock = Clock()
    with pytest.raises(ValueError, match="at least one"):
        make_chain(clock=clock)
    with pytest.raises(ValueError, match="twice"):
        make_chain(FakeProvider("a", clock), FakeProvider("a", clock), clock=clock)
    a = FakeProvider("a", clock)
    chain = make_chain(a, clock=clock)
    await chain.get(USER, "zrh")
    diag = chain.diagnostics()
    assert diag["providers"] == ["a"]
    assert diag["active_provider"] == "a"
    assert a.issued[0] not in repr(diag)
    await chain.aclose()
    assert a.closed


# -- registry and build_chain ------------------------------------------------------------------------------


def settings(**overrides: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        "impersonation_enabled": True, "impersonation_strategy": "keycloak-token-exchange",
        "oauth_url": "https://oauth.example.com", "oauth_realm": "cloudsigma", "client_id": "ccm",
        "client_secret": SecretStr("client-secret-value"), "token_audience": None,
        "uma_audience": "service_provider_api", "user_email": USER, "region": "next",
        "username": "ops@example.com", "password": SecretStr("password-value"),
        "api_url": "https://{region}.cloudsigma.com/api/2.0/",
        "impersonation_api_url": "https://direct.{region}.cloudsigma.com/api/2.0/",
        "service_provider_url": "https://direct.{region}.cloudsigma.com/service_provider/api/v1/",
        "static_token": None, "static_token_file": None, "static_token_impersonated": False,
        "http_timeout": 5.0, "token_refresh_margin": 90.0, "token_cache_size": 32,
        "credential_chain": [], "allow_fallback_on_forbidden": False,
    }
    base.update(overrides)
    return SimpleNamespace(**base)


def test_entry_points_expose_the_builtin_providers() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert {"keycloak-token-exchange", "cloudsigma-service-provider", "password", "static-token"} <= names
    assert set(known_providers()) >= names
    from credentials.providers import keycloak

    assert load_factory("keycloak-token-exchange") is keycloak.from_settings


def test_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(UnknownCredentialProvider) as caught:
        create_provider("kerberos", settings())
    message = str(caught.value)
    assert "'kerberos'" in message
    for name in ("keycloak-token-exchange", "cloudsigma-service-provider", "password", "static-token"):
        assert name in message
    with pytest.raises(UnknownCredentialProvider):
        build_chain(settings(credential_chain=["password", "kerberos"]))


def test_register_a_third_party_provider() -> None:
    made: list[Any] = []

    def factory(s: Any) -> FakeProvider:
        provider = FakeProvider("vault", Clock())
        made.append(provider)
        return provider

    register("vault", factory)
    try:
        assert "vault" in known_providers()
        chain = build_chain(settings(credential_chain=["vault", "password"]))
        assert chain.providers == ["vault", "password"]
        assert made
    finally:
        unregister("vault")
    assert "vault" not in known_providers()


def test_build_chain_in_configured_order_with_settings() -> None:
    events_seen: list[tuple[str, str]] = []
    chain = build_chain(
        settings(credential_chain=["cloudsigma-service-provider", "keycloak-token-exchange", "password"],
                 allow_fallback_on_forbidden=True, token_audience="cloudsigma-api"),
        on_event=lambda e, p: events_seen.append((e, p)))
    assert chain.providers == ["cloudsigma-service-provider", "keycloak-token-exchange", "password"]
    assert chain.allow_fallback_on_forbidden is True
    assert chain.cache.maxsize == 32
    assert chain.cache.refresh_margin == 90.0
    sp, kc, pw = chain._providers
    assert isinstance(sp, ServiceProviderProvider)
    assert sp._cache is chain.cache  # the intermediate tokens share the chain's cache
    assert isinstance(kc, KeycloakTokenExchangeProvider)
    assert kc.issuer == "https://oauth.example.com/realms/cloudsigma"
    assert kc.audience == "cloudsigma-api"
    assert isinstance(pw, PasswordProvider)


def test_default_chain() -> None:
    assert default_chain(settings()) == ["keycloak-token-exchange", "password"]
    assert default_chain(settings(impersonation_strategy="cloudsigma-service-provider", username=None)) == [
        "cloudsigma-service-provider"]
    assert default_chain(settings(impersonation_enabled=False, static_token=SecretStr("t"))) == [
        "static-token", "password"]
    with pytest.raises(ValueError, match="no credential providers"):
        build_chain(settings(impersonation_enabled=False, username=None, password=None))


def test_provider_reprs_hold_no_secrets() -> None:
    s = settings(static_token=SecretStr("static-token-value"))
    texts = [repr(create_provider(n, s)) for n in known_providers()]
    joined = " ".join(texts)
    for secret in ("client-secret-value", "password-value", "static-token-value"):
        assert secret not in joined


@pytest.mark.parametrize("make", [
    lambda: CredentialUnavailable("down", provider="p", user="u@example.com", request_id="r-1"),
    lambda: NoCredential("none", failures=[]),
])
def test_error_log_fields(make: Callable[[], CredentialError]) -> None:
    fields = make().log_fields()
    assert "reason" in fields
    assert "credential_provider" in fields


def test_cache_key_of_chain_is_lowercased() -> None:
    assert CacheKey.of(USER.upper(), "next", "x").email == USER


async def test_a_refused_static_token_is_checked_and_logged_once_until_it_changes() -> None:
    clock = Clock()
    static = StaticTokenProvider(token=SecretStr(jwt({"sub": "x", "preferred_username": "someone@else.example"})),
                                 impersonated=True, clock=clock)
    with capture_logs() as logs:
        chain = make_chain(static, clock=clock)  # type: ignore[arg-type]
        for _ in range(5):
            with pytest.raises(NoCredential) as caught:
                await chain.get(USER, "next")
            assert caught.value.failures[0].reason == "impersonation_subject_mismatch"
    assert len(events(logs, "impersonation_subject_mismatch")) == 1


async def test_an_opaque_impersonated_token_is_logged_once_as_unverifiable_and_used() -> None:
    clock = Clock()

    class Opaque(FakeProvider):
        async def acquire(self, user_email: str, region: str) -> Credential:
            credential = await super().acquire(user_email, region)
            return Credential(scheme="bearer", secret=SecretStr(f"opaque-token-{self.calls}"),
                              api_url_template=credential.api_url_template, identity=credential.identity,
                              expires_at=credential.expires_at, impersonated=True)

    kc = Opaque("keycloak-token-exchange", clock)
    with capture_logs() as logs:
        chain = make_chain(kc, clock=clock)
        first = await chain.get(USER, "next")
        chain.invalidate(first)
        second = await chain.get(USER, "next")
    assert first.secret.get_secret_value() == "opaque-token-1" and second.secret.get_secret_value() == "opaque-token-2"
    assert second.identity.verification is not None and second.identity.verification.status == "opaque"
    (warning,) = events(logs, "token_unverifiable")
    assert warning["token_verified"] == "opaque" and warning["note"] == "used as is"


def test_verification_results_are_metrics() -> None:
    metrics = Metrics()
    for event in ("verify:verified", "verify:subject_mismatch", "verify:subject_mismatch", "verify:token_unknown_key"):
        metrics.credential_event(event, "keycloak-token-exchange")
    text = metrics.render().decode()
    assert 'cloudsigma_ccm_impersonation_subject_mismatches_total{provider="keycloak-token-exchange"} 2.0' in text
    assert ('cloudsigma_ccm_token_verifications_total{provider="keycloak-token-exchange",result="token_unknown_key"} '
            '1.0') in text
    assert 'cloudsigma_ccm_token_verifications_total{provider="keycloak-token-exchange",result="verified"} 1.0' in text


async def test_the_active_provider_gauge_shows_the_fallback_in_use_and_the_recovery() -> None:
    """cloudsigma_ccm_credential_provider_active: what the fallback alert (deploy/monitoring) watches."""
    clock = Clock()
    kc = FakeProvider("keycloak-token-exchange", clock)
    pw = FakeProvider("password", clock, impersonated=False, lifetime=None)
    metrics = Metrics()
    chain = make_chain(kc, pw, clock=clock)
    chain.on_event = metrics.credential_event

    def active() -> dict[str, float | None]:
        return {p: metrics.registry.get_sample_value("cloudsigma_ccm_credential_provider_active", {"provider": p})
                for p in (kc.name, pw.name)}

    await chain.get(USER, "next")
    assert active() == {kc.name: 1.0, pw.name: None}
    kc.error = CredentialUnavailable("Keycloak down", provider=kc.name, reason="timeout")
    clock.advance(400)
    assert (await chain.get(USER, "next")).identity.provider == "password"
    assert active() == {kc.name: 0.0, pw.name: 1.0}
    kc.error = None
    clock.advance(400)
    assert (await chain.get(USER, "next")).identity.provider == kc.name
    assert active() == {kc.name: 1.0, pw.name: 0.0}
