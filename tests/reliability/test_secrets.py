"""Secrets: nothing the CCM was given or issued appears in its logs, its Events or on /metrics.

Every in-process CCM of the suite logs through the daemon's pipeline (redaction, JSON) into memory and hands its
log and /metrics page to the registry; the subprocess cases hand over their output; the emulator's tap and the
credential chain hand over every credential presented or issued. This module adds two error paths that handle
credentials (an IdP refusing the client secret, an API refusing a static token) and then checks everything —
so it runs last (file order) and checks what the whole suite produced.
"""

from __future__ import annotations

import re

import pytest
from kubernetes_asyncio.client import ApiClient

from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE
from tests.realenv.keycloak import Keycloak
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for
from tests.reliability import registry
from tests.reliability.support import all_events, events_text, initialized, missing, running

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
WRONG_SECRET = "wrong-client-secret-0123456789"


async def test_refused_client_secret_is_never_printed(world: EmulatorState, emulator: EmulatorServer,
                                                      keycloak: Keycloak, kube_apiserver: KubeAPIServer,
                                                      kube_api: ApiClient) -> None:
    world.jwks_url = keycloak.jwks_url
    world.add_server(ALICE, "secret-1", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "secret-1")
    registry.add_secret(WRONG_SECRET, "client secret refused by Keycloak")
    registry.add_secret(keycloak.client_secret, "Keycloak client secret")
    registry.record("secrets", "client secret refused by the identity provider",
                    injected="impersonation through the real Keycloak with a wrong client secret (401 "
                             "`invalid_client`), password fallback",
                    verified="node initialized through the fallback; the refused secret, the real one and the "
                             "password appear in no log line, Event or /metrics (checked with the whole suite)",
                    faults=1, nodes_checked=1)
    settings = {"impersonation_enabled": True, "oauth_url": keycloak.issuer, "client_id": "cloudsigma-ccm",
                "client_secret": WRONG_SECRET, "token_audience": "cloudsigma-api", "user_email": ALICE,
                "impersonation_api_url": emulator.api_url}
    async with running(kube_apiserver.admin_kubeconfig, emulator, **settings) as ccm:
        await wait_for(lambda: initialized(kube_api, "secret-1"), 20)
        assert ccm.alive
        failed = ccm.logs.named("credential_fallback", credential_provider="keycloak-token-exchange")
        text = ccm.logs.text
    assert failed and failed[0]["reason"]
    assert WRONG_SECRET not in text and "invalid_client" in text  # the IdP's answer is logged, the secret not
    lost = await missing(kube_api, ["secret-1"])
    registry.lost(len(lost))
    assert not lost


async def test_refused_static_token_is_never_printed(world: EmulatorState, emulator: EmulatorServer,
                                                     kube_apiserver: KubeAPIServer, kube_api: ApiClient) -> None:
    alice = world.get_user(ALICE)
    assert alice is not None
    token = world.signing_key.sign({"sub": alice.uuid, "email": ALICE, "azp": "static", "iat": int(world.now()),
                                    "exp": int(world.now()) + 3600})
    registry.add_secret(token, "static bearer token")
    world.add_server(ALICE, "secret-2", nics=[public_dhcp_nic("auto")])
    await register_node(kube_api, "secret-2")
    registry.record("secrets", "static token refused by the API",
                    injected="a static bearer token (a JWT) as the only credential; then the API's signing key "
                             "rotates so every call answers 401",
                    verified="node initialized while the token was good; afterwards 401s are logged "
                             "(`credential_invalidated`, `cloudsigma_call_failed`) without the token or any JWT",
                    faults=1, nodes_checked=1)
    async with running(kube_apiserver.admin_kubeconfig, emulator, static_token=token, username=None, password=None,
                       node_status_update_frequency="0.3s", server_cache_max_age="0.2s") as ccm:
        await wait_for(lambda: initialized(kube_api, "secret-2"), 20)
        world.rotate_signing_key()
        await wait_for(lambda: ccm.logs.named("credential_invalidated"), 15, message="a 401 on the static token")
        await wait_for(lambda: ccm.logs.named("cloudsigma_call_failed", status=401), 15)
        assert ccm.alive
        text = ccm.logs.text
    assert token not in text and not JWT.search(text)
    lost = await missing(kube_api, ["secret-2"])
    registry.lost(len(lost))
    assert not lost


async def test_no_secret_in_logs_events_or_metrics(kube_api: ApiClient) -> None:
    """Runs last: everything the suite's CCMs printed, served on /metrics or wrote as Events."""
    events = await all_events(kube_api)
    registry.add_text("Events in the tenant cluster", events_text(events))
    texts, _, secrets = registry.corpus_size()
    kinds = sorted(registry.secret_kinds())
    registry.record("secrets", "no secret in any output of the suite",
                    injected="every configured secret, password and client secret, every credential presented to "
                             "the emulator and every token the chain issued (Keycloak and emulator tokens, basic "
                             "auth values)",
                    verified="none appears in any CCM log (in-process through the daemon's redacting JSON "
                             "pipeline, and subprocess output), any Event message or any /metrics page; no JWT-shaped "
                             "string anywhere")
    assert secrets >= 3, f"only {secrets} secrets known: {kinds}"
    assert texts >= 3
    leaked = registry.leaks()
    assert not leaked, f"secrets found in: {leaked}"
    jwt_like = sorted({where for where, text in registry.STORE.texts if JWT.search(text)})
    assert not jwt_like, f"JWT-shaped strings in: {jwt_like}"
