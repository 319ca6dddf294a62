"""Pytest fixtures for a real kube-apiserver (see tests/realenv/kubeapiserver.py).

- ``kube_apiserver`` (session): one running :class:`KubeAPIServer`, stopped at the end of the session.
- ``kube_apiserver_factory`` (session): ``factory(name, audit=False)`` starts (once per name) an extra,
  independent API server, e.g. a "management" and a "tenant" cluster; all are stopped at the end of the session.
- ``kube_api`` (function): a ``kubernetes_asyncio`` ``ApiClient`` for the admin of ``kube_apiserver``,
  built without touching the library's global default configuration; closed after the test.
- ``clean_nodes`` (function): deletes every Node of ``kube_apiserver`` before the test.
- ``audited_apiserver`` (session): an API server with an audit log of every write (who, what, when).

The API servers start lazily: only tests that use these fixtures pay for them (and for the build of
the binary on a cold cache; see scripts/build-kube-apiserver.sh).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.config import new_client_from_config

from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import delete_all_nodes

__all__ = ["api_client_for", "audited_apiserver", "clean_nodes", "expiring_apiserver", "kube_api",
           "kube_apiserver", "kube_apiserver_factory"]


async def api_client_for(kubeconfig: Path) -> ApiClient:
    """A fresh ``ApiClient`` for ``kubeconfig``; no global state. The caller must ``await client.close()``."""
    return await new_client_from_config(config_file=str(kubeconfig), persist_config=False)


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeAPIServer]:
    server = KubeAPIServer("main")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube_apiserver_factory() -> Iterator[Callable[..., KubeAPIServer]]:
    servers: dict[str, KubeAPIServer] = {}

    def factory(name: str, *, audit: bool = False) -> KubeAPIServer:
        server = servers.get(name)
        if server is None:
            server = KubeAPIServer(name, audit=audit)
            server.start()
            servers[name] = server
        elif server.audit != audit:
            raise AssertionError(f"API server {name!r} was started with audit={server.audit}: ask for it the same "
                                 "way everywhere")
        return server

    try:
        yield factory
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def expiring_apiserver() -> Iterator[KubeAPIServer]:
    """An API server that compacts etcd every second and serves watches from etcd, so old resourceVersions
    expire: a watch resumed from one gets a real 410 Gone. (With the watch cache on, it never does.)"""
    server = KubeAPIServer("expiring", extra_args=["--etcd-compaction-interval=1s", "--watch-cache=false"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def audited_apiserver() -> Iterator[KubeAPIServer]:
    """An API server that writes an audit log of every mutating request (who wrote what, when, to the
    microsecond): tests that must prove *which process* wrote *when* read :meth:`KubeAPIServer.audit_events`."""
    server = KubeAPIServer("audited", audit=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def kube_api(kube_apiserver: KubeAPIServer) -> AsyncIterator[ApiClient]:
    client = await api_client_for(kube_apiserver.admin_kubeconfig)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def clean_nodes(kube_api: ApiClient) -> None:
    await delete_all_nodes(kube_api)
