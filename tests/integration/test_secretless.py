"""Secretless client authentication against the real parts (issue 16, item 2), and rotation of the client secret
file while the daemon runs (issue 14, item 6).

A dedicated kube-apiserver is the ServiceAccount token issuer (its discovery and JWKS on loopback over TLS); a
dedicated Keycloak 26.7.3 trusts its serving CA and has a "Kubernetes" identity provider for it (federated client
authentication, features ``client-auth-federated`` and ``kubernetes-service-accounts``, on by default in 26.7).
The client ``ccm-secretless`` authenticates with *Signed JWT - Federated*: the projected token of
``system:serviceaccount:tenant-a:cloudsigma-ccm``. The CCM exchanges it for a token impersonating the user, which
the CloudSigma emulator accepts (it trusts that Keycloak's keys), and initializes nodes of the tenant cluster (the
session's kube-apiserver).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey
from kubernetes_asyncio.client import ApiClient

from ccm.config import load_settings
from credentials.base import Credential, CredentialRejected, NoCredential
from credentials.cache import CacheKey
from credentials.factory import build_chain
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import addresses, initialized
from tests.integration.test_e2e import ccm_binary, free_port, http_get, metric
from tests.realenv.keycloak import Keycloak
from tests.realenv.keycloak_fixtures import ALICE
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for
from tests.realenv.processes import stop_process
from tests.realenv.sa_issuer import ServiceAccountIssuer, write_projected_token

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]

SECRETLESS_CLIENT = "ccm-secretless"
KEYPAIR_CLIENT = "ccm-keypair"
ROTATING_CLIENT = "ccm-rotating"
SERVICE_ACCOUNT = "cloudsigma-ccm"
#: Realm token lifespan in this Keycloak: the CCM exchanges again every 15 s (refresh 25 % before expiry).
TOKEN_LIFESPAN = 20


@dataclass
class Secretless:
    keycloak: Keycloak
    issuer: ServiceAccountIssuer
    private_key: RSAKey


@pytest.fixture(scope="module")
async def secretless(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secretless]:
    server = KubeAPIServer("sa-issuer", service_account_issuer="{url}")
    await server.astart()
    issuer = ServiceAccountIssuer(server)
    keycloak = Keycloak(tmp_path_factory.mktemp("keycloak-secretless"))
    try:
        await issuer.start(service_accounts=(SERVICE_ACCOUNT, "someone-else"))
        keycloak.truststore_paths = [issuer.ca_path]
        await keycloak.start()
        await keycloak.add_user(ALICE, "alice-password-1")
        await keycloak.set_access_token_lifespan(TOKEN_LIFESPAN)
        await keycloak.add_kubernetes_identity_provider("kubernetes", issuer.issuer, max_expiration=600)
        await keycloak.add_impersonating_client(SECRETLESS_CLIENT, authenticator="federated-jwt", attributes={
            "jwt.credential.issuer": "kubernetes", "jwt.credential.sub": issuer.subject(SERVICE_ACCOUNT)})
        key = RSAKey.generate_key(2048, auto_kid=True)
        public = {**key.as_dict(private=False), "use": "sig", "alg": "RS256"}  # Keycloak skips keys without "use"
        await keycloak.add_impersonating_client(KEYPAIR_CLIENT, authenticator="client-jwt", attributes={
            "use.jwks.string": "true", "jwks.string": json.dumps({"keys": [public]})})
        yield Secretless(keycloak, issuer, key)
    finally:
        await keycloak.stop()
        await issuer.close()
        await server.astop()


def settings(world: Secretless, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "region": "zrh", "impersonation_enabled": True, "oauth_url": world.keycloak.issuer,
        "client_id": SECRETLESS_CLIENT, "user_email": ALICE,
        "impersonation_api_url": "https://direct.{region}.cloudsigma.invalid/api/2.0/",
    }
    values.update(extra)
    return values


async def get(values: dict[str, Any]) -> Credential:
    chain = build_chain(load_settings(values))
    try:
        return await chain.get(ALICE, "zrh")
    finally:
        await chain.aclose()


async def test_the_projected_token_authenticates_the_client_and_the_exchange_impersonates_the_user(
        secretless: Secretless, tmp_path: Path) -> None:
    token = await secretless.issuer.mint(SERVICE_ACCOUNT, secretless.keycloak.issuer)
    path = write_projected_token(tmp_path / "keycloak-token", token)
    credential = await get(settings(secretless, client_assertion_file=path))
    assert credential.identity.claims["azp"] == SECRETLESS_CLIENT
    assert credential.identity.claims["preferred_username"] == ALICE
    assert credential.identity.claims["sub"] == secretless.keycloak.users[ALICE]
    assert credential.identity.verification is not None
    assert credential.identity.verification.status == "verified"


async def test_the_rotated_projected_token_is_read_by_the_next_exchange(
        secretless: Secretless, tmp_path: Path) -> None:
    """The kubelet swaps the projected volume's ..data symlink: the next exchange sends the new token. Rotating to
    another ServiceAccount's token (which Keycloak maps to no client) proves the file was re-read."""
    audience = secretless.keycloak.issuer
    volume = tmp_path / "keycloak-token"
    path = write_projected_token(volume, await secretless.issuer.mint(SERVICE_ACCOUNT, audience))
    chain = build_chain(load_settings(settings(secretless, client_assertion_file=path)))
    try:
        first = await chain.get(ALICE, "zrh")
        write_projected_token(volume, await secretless.issuer.mint("someone-else", audience))
        await asyncio.sleep(1.1)  # WatchedFile checks the file at most once a second
        chain.invalidate(first)
        with pytest.raises(NoCredential) as refused:
            await chain.get(ALICE, "zrh")
        failure = refused.value.failures[0]
        assert failure.reason == "invalid_client"
        assert "Signed JWT - Federated" in failure.message
        write_projected_token(volume, await secretless.issuer.mint(SERVICE_ACCOUNT, audience))
        await asyncio.sleep(1.1)
        key = CacheKey.of(ALICE, "zrh", "keycloak-token-exchange")
        await asyncio.sleep(chain.cache.backoff_remaining(key) or 0)  # the refusal put the key in backoff
        second = await chain.get(ALICE, "zrh")
    finally:
        await chain.aclose()
    assert second is not first and second.identity.claims["azp"] == SECRETLESS_CLIENT


async def test_a_token_for_another_audience_is_refused_before_it_is_sent(
        secretless: Secretless, tmp_path: Path) -> None:
    token = await secretless.issuer.mint(SERVICE_ACCOUNT, "https://kubernetes.default.svc")
    path = write_projected_token(tmp_path / "keycloak-token", token)
    with pytest.raises(NoCredential) as refused:
        await get(settings(secretless, client_assertion_file=path))
    failure = refused.value.failures[0]
    assert isinstance(failure, CredentialRejected) and failure.reason == "client_assertion_audience"
    assert secretless.keycloak.issuer in failure.message and "serviceAccountToken.audience" in failure.message


async def test_private_key_jwt_authenticates_the_client(secretless: Secretless, tmp_path: Path) -> None:
    key_file = tmp_path / "client.key"
    key_file.write_bytes(secretless.private_key.as_pem(private=True))
    credential = await get(settings(secretless, client_id=KEYPAIR_CLIENT, client_private_key_file=key_file))
    assert credential.identity.claims["azp"] == KEYPAIR_CLIENT
    assert credential.identity.verification is not None and credential.identity.verification.status == "verified"


# ------------------------------------------------------------------------------------------------ the daemon


def daemon_env(world: Secretless, kubeconfig: Path, emulator: EmulatorServer, port: int,
               **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSIGMA_") and k != "KUBECONFIG"}
    env.update({
        "CLOUDSIGMA_IMPERSONATION_ENABLED": "true",
        "CLOUDSIGMA_OAUTH_URL": world.keycloak.issuer,
        "CLOUDSIGMA_USER_EMAIL": ALICE,
        "CLOUDSIGMA_REGION": "zrh",
        "CLOUDSIGMA_IMPERSONATION_API_URL": emulator.api_url,
        "CLOUDSIGMA_API_URL": emulator.api_url,
        "KUBECONFIG": str(kubeconfig),
        "CLOUDSIGMA_LEADER_ELECT": "false",
        "CLOUDSIGMA_METRICS_BIND_ADDRESS": f"127.0.0.1:{port}",
        "CLOUDSIGMA_LOG_FORMAT": "json",
        "CLOUDSIGMA_NODE_MONITOR_PERIOD": "2s",
        "CLOUDSIGMA_SERVER_CACHE_MAX_AGE": "1s",
    })
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def daemon(env: dict[str, str], log_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(ccm_binary(), env=env, stdout=log_file, stderr=log_file)
        try:
            yield proc
        finally:
            await stop_process(proc)


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


@pytest.fixture
def world_emulator(emulator_state: EmulatorState, secretless: Secretless) -> EmulatorState:
    emulator_state.add_user(ALICE, password="not-used-by-the-ccm")
    emulator_state.jwks_url = secretless.keycloak.jwks_url
    return emulator_state


async def test_daemon_initializes_nodes_with_the_projected_token_and_no_secret(
        secretless: Secretless, world_emulator: EmulatorState, emulator: EmulatorServer,
        kube_apiserver: KubeAPIServer, kube_api: ApiClient, tmp_path: Path) -> None:
    server = world_emulator.add_server(ALICE, "secretless-worker", nics=[public_dhcp_nic("94.26.101.210")])
    token = await secretless.issuer.mint(SERVICE_ACCOUNT, secretless.keycloak.issuer)
    path = write_projected_token(tmp_path / "keycloak-token", token)
    port = free_port()
    env = daemon_env(secretless, kube_apiserver.admin_kubeconfig, emulator, port,
                     CLOUDSIGMA_CLIENT_ID=SECRETLESS_CLIENT, CLOUDSIGMA_CLIENT_ASSERTION_FILE=str(path))
    assert not [k for k in env if "SECRET" in k or "PASSWORD" in k]
    log_path = tmp_path / "ccm.log"
    await register_node(kube_api, "secretless-worker")
    async with daemon(env, log_path):
        node = await wait_for(lambda: initialized(kube_api, "secretless-worker"), 90)
        _, debug = await wait_for(lambda: http_get(f"http://127.0.0.1:{port}/debug/credentials"), 10)
    assert node["spec"]["providerID"] == f"cloudsigma://{server['uuid']}"
    assert ("ExternalIP", "94.26.101.210") in addresses(node)
    (provider,) = json.loads(debug)["providers"]
    assert provider["client_auth"] == "client_assertion"
    assert provider["client_auth_source"] == f"file {path}"
    assert provider["current"]["verification"]["status"] == "verified"
    assert provider["current"]["claims"]["azp"] == SECRETLESS_CLIENT
    assert token not in debug and "eyJ" not in debug
    bearer = [r for r in world_emulator.requests if r.auth_kind == "bearer" and r.path.startswith("/api/2.0/")]
    assert bearer and all(r.user == ALICE and r.token_azp == SECRETLESS_CLIENT for r in bearer)
    logs = log_path.read_text()
    assert token not in logs and "eyJ" not in logs


async def test_client_secret_rotated_in_keycloak_and_in_the_mounted_file_while_the_daemon_runs(
        secretless: Secretless, world_emulator: EmulatorState, emulator: EmulatorServer,
        kube_apiserver: KubeAPIServer, kube_api: ApiClient, tmp_path: Path,
        record_property: Any) -> None:
    """Issue 14 item 6: Keycloak's client secret is regenerated, then the Secret volume is updated (the kubelet's
    sync delay); the next exchange uses the new secret, no reconcile fails, and nodes keep being initialized."""
    keycloak = secretless.keycloak
    if ROTATING_CLIENT not in keycloak.users:
        keycloak.users[ROTATING_CLIENT] = await keycloak.add_impersonating_client(ROTATING_CLIENT,
                                                                                   secret="first-secret-value-1")
    client_uuid = keycloak.users[ROTATING_CLIENT]
    await keycloak.admin_request("PUT", f"/{keycloak.realm}/clients/{client_uuid}",
                                 {"clientId": ROTATING_CLIENT, "secret": "first-secret-value-1"})
    world_emulator.add_server(ALICE, "rotation-a", nics=[public_dhcp_nic("94.26.101.211")])
    world_emulator.add_server(ALICE, "rotation-b", nics=[public_dhcp_nic("94.26.101.212")])
    volume = tmp_path / "cloudsigma-impersonation"
    secret_file = write_projected_token(volume, "first-secret-value-1", key="client-secret")
    port = free_port()
    env = daemon_env(secretless, kube_apiserver.admin_kubeconfig, emulator, port,
                     CLOUDSIGMA_CLIENT_ID=ROTATING_CLIENT, CLOUDSIGMA_CLIENT_SECRET_FILE=str(secret_file))
    log_path = tmp_path / "ccm.log"
    await register_node(kube_api, "rotation-a")
    async with daemon(env, log_path) as proc:
        await wait_for(lambda: initialized(kube_api, "rotation-a"), 90)
        # Rotate: Keycloak first (the old secret stops working at once), the mounted file 2 s later.
        _, answer, _ = await keycloak.admin_request(
            "POST", f"/{keycloak.realm}/clients/{client_uuid}/client-secret")
        new_secret = answer["value"]
        rotated_at = time.time()
        await asyncio.sleep(2.0)
        write_projected_token(volume, new_secret, key="client-secret")
        file_at = time.time()
        # The CCM exchanges on demand: once the token acquired before the rotation has expired, the next
        # reconcile needs a new one — which only the new secret can get.
        before = [e for e in log_lines(log_path) if e.get("event") == "credential_acquired"]
        await asyncio.sleep(max(0.0, _ts(before[-1]) + TOKEN_LIFESPAN + 1 - time.time()))
        await register_node(kube_api, "rotation-b")
        started = time.monotonic()
        await wait_for(lambda: initialized(kube_api, "rotation-b"), 60)
        second_node_seconds = time.monotonic() - started
        acquired = next(e for e in log_lines(log_path) if e.get("event") == "credential_acquired"
                        and _ts(e) > file_at)
        _, metrics = await http_get(f"http://127.0.0.1:{port}/metrics")
        assert proc.returncode is None
    logs = log_lines(log_path)
    reloaded = [e for e in logs if e.get("event") == "watched_file_reloaded"]
    assert reloaded and reloaded[0]["what"] == "client secret" and reloaded[0]["path"] == str(secret_file)
    text = log_path.read_text()
    assert "first-secret-value-1" not in text and new_secret not in text
    failed = [e for e in logs if e.get("event") == "node_reconciled" and e.get("action") in ("error", "blocked")]
    assert not failed, failed
    assert metric(metrics, "cloudsigma_ccm_reconciles_total", controller="node", result="error") == 0
    assert metric(metrics, "cloudsigma_ccm_reconciles_total", controller="node", result="synced") >= 2
    unauthorized = [r for r in world_emulator.requests if r.status == 401]
    assert not unauthorized
    timings = {
        "secret_file_swap_after_keycloak_rotation_s": round(file_at - rotated_at, 2),
        "first_exchange_with_new_secret_after_file_swap_s": round(_ts(acquired) - file_at, 2),
        "reload_logged_after_file_swap_s": round(_ts(reloaded[0]) - file_at, 2),
        "node_initialized_after_rotation_s": round(second_node_seconds, 2),
    }
    record_property("rotation_timings", timings)
    print("rotation timings:", timings)


def _ts(entry: dict[str, Any]) -> float:
    stamp = entry.get("timestamp")
    if isinstance(stamp, int | float):
        return float(stamp)
    if isinstance(stamp, str):
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return 0.0
