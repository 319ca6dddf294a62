"""Helpers of the reliability suite: the CCM in-process with its real log pipeline, node checks, subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from ccm.config import load_settings, secrets_of
from ccm.kube.errors import KubeError, KubeNotFound
from ccm.kube.transport import KubeTransport
from ccm.logging import Redactor
from ccm.nodes.labels import INSTANCE_TYPE, REGION, ZONE
from ccm.single.process import build
from ccm.tenant.controllers import Components, run_controllers
from credentials.base import Credential
from tests.emulator import EmulatorServer
from tests.integration.harness import RunningCCM, ccm_settings, node_json, taint_keys
from tests.realenv.nodes import wait_for
from tests.reliability import registry

UNINIT = "node.cloudprovider.kubernetes.io/uninitialized"
CCM_LABELS = (INSTANCE_TYPE, REGION, ZONE)


# ------------------------------------------------------------------------------------------- logs


class LogSink:
    """structlog configured as the daemon configures it (``ccm.logging.configure_logging``: redaction, JSON)
    but into memory, with every event also kept as a dict for assertions. Restores the old config on exit."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.stream = io.StringIO()
        self.events: list[dict[str, Any]] = []
        self._saved: dict[str, Any] | None = None

    def _collect(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        self.events.append(dict(event_dict))
        return event_dict

    def __enter__(self) -> LogSink:
        self._saved = structlog.get_config()
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.StackInfoRenderer(),
                structlog.processors.format_exc_info,
                self._collect,
                self.redactor,
                structlog.processors.JSONRenderer(),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            logger_factory=structlog.PrintLoggerFactory(file=self.stream),
            cache_logger_on_first_use=False,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            structlog.configure(**self._saved)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def named(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event
                and all(e.get(k) == v for k, v in match.items())]


@dataclass
class CCMRun:
    """One in-process CCM (as ``tests.integration.harness.running_ccm``) plus its logs and issued tokens."""

    parts: Components
    task: asyncio.Task[None]
    logs: LogSink
    tokens: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return not self.task.done()

    def metric(self, counter: Any, *labels: str) -> float:
        value: float = counter.labels(*labels)._value.get() if labels else counter._value.get()
        return value


@contextlib.asynccontextmanager
async def running(kubeconfig: Path, emulator: EmulatorServer, **overrides: Any) -> AsyncIterator[CCMRun]:
    """The CCM's controllers in this event loop, logging through the production pipeline into memory.

    At the end its log text and /metrics page are handed to the secrets check."""
    settings = load_settings(ccm_settings(kubeconfig, emulator, **overrides))
    for secret in secrets_of(settings):
        registry.add_secret(secret, "configured secret")
    redactor = Redactor()
    sink = LogSink(redactor)
    nodeid = registry.current_nodeid()
    with sink:
        parts = await build(settings, redactor)
        run = CCMRun(parts, asyncio.create_task(run_controllers(parts)), sink)
        original_get = parts.chain.get

        async def recording_get(user_email: str, region: str) -> Credential:
            credential = await original_get(user_email, region)
            secret = credential.secret.get_secret_value()
            if secret not in run.tokens:
                run.tokens.append(secret)
                registry.add_secret(secret, f"{credential.scheme} credential from {credential.identity.provider}")
            return credential

        parts.chain.get = recording_get  # type: ignore[method-assign]
        try:
            yield run
        finally:
            await RunningCCM(parts, run.task).stop()
            registry.add_text(f"CCM log of {nodeid}", sink.text)
            registry.add_text(f"/metrics of {nodeid}", parts.metrics.render().decode())


# ------------------------------------------------------------------------------------------- nodes


async def maybe_node(api: ApiClient, name: str) -> dict[str, Any] | None:
    try:
        return await node_json(api, name)
    except KubeNotFound:
        return None


def is_initialized(node: dict[str, Any], *, instance_type: bool = True) -> bool:
    """Fully initialized: providerID, addresses, the CCM's labels, and no uninitialized taint."""
    spec = node.get("spec") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    wanted = CCM_LABELS if instance_type else (REGION, ZONE)
    return (str(spec.get("providerID") or "").startswith("cloudsigma://")
            and bool((node.get("status") or {}).get("addresses"))
            and all(labels.get(k) for k in wanted)
            and UNINIT not in taint_keys(node))


def is_untouched(node: dict[str, Any]) -> bool:
    """As the kubelet registered it (no addresses of its own): tainted, no providerID/addresses/CCM labels."""
    spec = node.get("spec") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    return (not spec.get("providerID")
            and not (node.get("status") or {}).get("addresses")
            and not any(k in labels for k in CCM_LABELS)
            and UNINIT in taint_keys(node))


async def initialized(api: ApiClient, name: str, *, instance_type: bool = True) -> dict[str, Any] | None:
    node = await maybe_node(api, name)
    return node if node is not None and is_initialized(node, instance_type=instance_type) else None


async def wait_initialized(api: ApiClient, name: str, timeout: float = 20.0, *,
                           instance_type: bool = True) -> dict[str, Any]:
    node: dict[str, Any] | None = await wait_for(partial(initialized, api, name, instance_type=instance_type),
                                                 timeout, message=f"{name} initialized")
    assert node is not None
    return node


async def all_initialized(api: ApiClient, names: Iterable[str]) -> bool:
    nodes = await asyncio.gather(*(maybe_node(api, n) for n in names))
    return all(n is not None and is_initialized(n) for n in nodes)


async def missing(api: ApiClient, names: Iterable[str]) -> list[str]:
    """The nodes of ``names`` that no longer exist (lost)."""
    names = list(names)
    nodes = await asyncio.gather(*(maybe_node(api, n) for n in names))
    return [name for name, node in zip(names, nodes, strict=True) if node is None]


async def all_events(api: ApiClient) -> list[dict[str, Any]]:
    body = await KubeTransport(api).request("GET", "/api/v1/namespaces/default/events")
    return [e for e in body.get("items", []) if isinstance(e, dict)]


async def warnings_for(api: ApiClient, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in await all_events(api)
            if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == reason
            and e.get("type") == "Warning"]


def events_text(events: Iterable[dict[str, Any]]) -> str:
    return "\n".join(f"{e.get('reason')}: {e.get('message')}" for e in events)


async def retry_kube(call: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Call the (test's own) Kubernetes client until the API server answers (e.g. after a restart).

    A 409 answers ``None``: the object was created by an earlier attempt whose answer was lost."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except ApiException as exc:
            if exc.status == 409:
                return None
            last: BaseException = exc
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API server did not answer within {timeout}s: {last!r}") from last
        await asyncio.sleep(0.3)


# ------------------------------------------------------------------------------------------- processes


def ccm_binary() -> str:
    found = shutil.which("cloudsigma-ccm", path=str(Path(sys.executable).parent))
    assert found, "the console script cloudsigma-ccm is not installed in this environment"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any CLOUDSIGMA_*/KUBECONFIG, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSIGMA_") and k != "KUBECONFIG"}
    env.update(values)
    return env


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
        return resp.status, await resp.text()


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
