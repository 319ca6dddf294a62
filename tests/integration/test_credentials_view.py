"""Where the credentials stand, at a glance (issue 16, item 3): ``/debug/credentials`` on the health port and
``doctor``: per provider configured or not, how the client authenticates, last success and failure with time and
reason, the verified identity of the current token and its expiry — never a token or a secret."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ccm.config import load_settings
from ccm.doctor import collect
from ccm.health import HealthState, create_app
from ccm.logging import Redactor
from ccm.metrics import Metrics
from ccm.tenant.services import RedactingSource
from cloudsigma.client import CloudSigmaClient
from credentials.factory import build_chain
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, ALICE_PW, BOB, CLIENT_ID, CLIENT_SECRET, two_users
from tests.realenv.kubeapiserver import KubeAPIServer

pytestmark = pytest.mark.integration


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    two_users(emulator_state)
    emulator_state.add_client(CLIENT_ID, CLIENT_SECRET)
    emulator_state.add_server(ALICE, "alice-1", nics=[public_dhcp_nic("auto")])
    return emulator_state


def values(emulator: EmulatorServer, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "region": "zrh", "impersonation_enabled": True, "oauth_url": emulator.realm_url(), "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "user_email": ALICE, "impersonation_api_url": emulator.api_url,
        "username": ALICE, "password": ALICE_PW, "api_url": emulator.api_url, "leader_elect": False,
    }
    out.update(extra)
    return out


async def debug_credentials(state: HealthState) -> tuple[int, str]:
    async with TestClient(TestServer(create_app(state, Metrics()))) as http:
        resp = await http.get("/debug/credentials")
        return resp.status, await resp.text()


async def test_debug_credentials_shows_failures_identities_and_client_auth_without_secrets(
        world: EmulatorState, emulator: EmulatorServer) -> None:
    redactor = Redactor()
    chain = build_chain(load_settings(values(emulator)), on_secret=redactor.add)
    client = CloudSigmaClient(RedactingSource(chain, redactor), user_email=ALICE, region="zrh")
    state = HealthState(credentials=chain.status, redact=redactor.redact_text)
    try:
        world.impersonation_substitutes[ALICE] = BOB  # the identity provider answers for the wrong user
        before = time.time()
        await client.list_servers()  # served by the password fallback
        status, text = await debug_credentials(state)
        assert status == 200
        view = {p["provider"]: p for p in json.loads(text)["providers"]}
        assert list(view) == ["keycloak-token-exchange", "password"]
        kc, pw = view["keycloak-token-exchange"], view["password"]
        assert kc["configured"] is True and kc["client_auth"] == "client_secret"
        assert kc["client_auth_source"] == "env CLOUDSIGMA_CLIENT_SECRET"
        assert kc["issuer"] == emulator.realm_url()
        assert kc["last_failure"]["reason"] == "impersonation_subject_mismatch"
        assert kc["last_failure"]["at"] >= before and kc["last_success"] is None and kc["current"] is None
        assert BOB in kc["last_failure"]["message"]
        assert pw["configured"] is True and pw["last_success"]["at"] >= before
        assert pw["current"]["user"] == ALICE and pw["current"]["expires_in"] is None
        assert pw["password_source"] == "env CLOUDSIGMA_PASSWORD"

        world.impersonation_substitutes.clear()
        await chain.cache.drain()
        chain.cache.clear()  # the failure's backoff: a fresh acquisition now
        credential = await chain.get(ALICE, "zrh")
        _, text = await debug_credentials(state)
        kc = {p["provider"]: p for p in json.loads(text)["providers"]}["keycloak-token-exchange"]
        current = kc["current"]
        assert current["verification"]["status"] == "verified"
        assert current["verification"]["matched_claim"] == "preferred_username"
        assert current["verification"]["issuer"] == emulator.realm_url()
        assert current["claims"]["preferred_username"] == ALICE and current["claims"]["azp"] == CLIENT_ID
        assert current["requested_subject"] == ALICE and current["impersonated"] is True
        assert 0 < current["expires_in"] <= world.token_lifetime
        assert kc["last_success"]["at"] > kc["last_failure"]["at"]
        for secret in (CLIENT_SECRET, ALICE_PW, credential.secret.get_secret_value()):
            assert secret not in text
        assert "eyJ" not in text
    finally:
        await client.close()
        await chain.aclose()


async def test_doctor_shows_the_verified_identity_and_refuses_a_token_for_another_user(
        world: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer) -> None:
    settings = load_settings(values(emulator, kubeconfig=kube_apiserver.admin_kubeconfig))
    checks = {(c.area, c.name): c for c in await collect(settings, Redactor())}
    kc = checks[("credentials", "keycloak-token-exchange")]
    assert kc.status == "ok"
    assert f"token verified (preferred_username = '{ALICE}', issuer {emulator.realm_url()}" in kc.detail
    assert "expires in" in kc.detail
    assert "client authenticates with client_secret (env CLOUDSIGMA_CLIENT_SECRET)" in kc.detail
    assert kc.data["current"]["verification"]["status"] == "verified"
    assert CLIENT_SECRET not in json.dumps(kc.data, default=str)

    world.impersonation_substitutes[ALICE] = BOB
    checks = {(c.area, c.name): c for c in await collect(settings, Redactor())}
    kc = checks[("credentials", "keycloak-token-exchange")]
    assert kc.status == "fail"
    assert kc.detail.startswith("impersonation_subject_mismatch: ") and BOB in kc.detail
    assert checks[("credentials", "chain")].status == "warn"  # the CCM would run on the password fallback
