"""Run the CCM's controllers in-process against the real kube-apiserver and the emulator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient

from ccm.config import load_settings
from ccm.kube.fetching import get_node
from ccm.kube.transport import KubeTransport
from ccm.logging import Redactor
from ccm.single.process import build
from ccm.tenant.controllers import Components, run_controllers
from tests.emulator import EmulatorServer, EmulatorState
from tests.realenv.nodes import UNINITIALIZED_TAINT_KEY as UNINIT

ALICE, BOB = "alice@example.com", "bob@example.com"
ALICE_PW, BOB_PW = "alice-password-1", "bob-password-1"


def two_users(state: EmulatorState) -> None:
    state.add_user(ALICE, password=ALICE_PW)
    state.add_user(BOB, password=BOB_PW)


def ccm_settings(kubeconfig: Path, emulator: EmulatorServer, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "region": "zrh",
        "username": ALICE,
        "password": ALICE_PW,
        "api_url": emulator.api_url,
        "impersonation_api_url": emulator.api_url,
        "kubeconfig": kubeconfig,
        "leader_elect": False,
        "metrics_bind_address": "",
        "server_cache_max_age": "2s",
        "node_monitor_period": "1s",
        "http_timeout": "3s",
        "cluster_name": "test",
    }
    values.update(overrides)
    return values


@dataclass
class RunningCCM:
    parts: Components
    task: asyncio.Task[None]

    async def stop(self) -> None:
        await self.parts.controller.shutdown(5)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        await self.parts.close()


@contextlib.asynccontextmanager
async def running_ccm(kubeconfig: Path, emulator: EmulatorServer, **overrides: Any) -> AsyncIterator[RunningCCM]:
    settings = load_settings(ccm_settings(kubeconfig, emulator, **overrides))
    parts = await build(settings, Redactor())
    ccm = RunningCCM(parts, asyncio.create_task(run_controllers(parts)))
    try:
        yield ccm
    finally:
        await ccm.stop()


async def node_json(api: ApiClient, name: str) -> dict[str, Any]:
    return await get_node(KubeTransport(api), name)


async def events_for(api: ApiClient, name: str, uid: str | None = None) -> list[dict[str, Any]]:
    """Events about the *current* Node ``name`` (by uid: earlier tests may have used the same name)."""
    kube = KubeTransport(api)
    if uid is None:
        try:
            uid = (await get_node(kube, name))["metadata"]["uid"]
        except Exception:
            return []
    items = await kube.request("GET", "/api/v1/namespaces/default/events",
                               query={"fieldSelector": f"involvedObject.name={name},involvedObject.uid={uid}"})
    return [e for e in items.get("items", []) if isinstance(e, dict)]


def taint_keys(node: dict[str, Any]) -> set[str]:
    return {t.get("key") for t in (node.get("spec") or {}).get("taints") or []}


async def initialized(api: ApiClient, name: str) -> dict[str, Any] | None:
    """The Node once the CCM has removed its uninitialized taint, else None (for ``wait_for``)."""
    node = await node_json(api, name)
    return node if UNINIT not in taint_keys(node) else None


def addresses(node: dict[str, Any]) -> set[tuple[str, str]]:
    return {(a["type"], a["address"]) for a in (node.get("status") or {}).get("addresses") or []}


CLIENT_ID, CLIENT_SECRET = "cloudsigma-ccm", "ccm-client-secret-value"


def impersonation_overrides(emulator: EmulatorServer, *, with_password: bool = True,
                            client_secret: str = CLIENT_SECRET) -> dict[str, Any]:
    """Settings for impersonation through the emulator's Keycloak-style token exchange."""
    values: dict[str, Any] = {
        "impersonation_enabled": True,
        "oauth_url": emulator.realm_url(),
        "client_id": CLIENT_ID,
        "client_secret": client_secret,
        "user_email": ALICE,
        "impersonation_api_url": emulator.api_url,
    }
    if not with_password:
        values.update(username=None, password=None)
    return values
