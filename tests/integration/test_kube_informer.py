"""The generic informer against a real kube-apiserver: selectors, transform, resume, 410 Gone → relist, and
recovery from API errors with backoff."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from kubernetes_asyncio.client import ApiClient

from ccm.kube.informer import Informer, ListWatch
from ccm.kube.transport import JSON, KubeTransport
from tests.realenv.fleet import ensure_namespace, unique
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import wait_for

pytestmark = pytest.mark.integration


def configmaps(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps"


async def put_configmap(kube: KubeTransport, namespace: str, name: str, *, labels: dict[str, str] | None = None,
                        data: dict[str, str] | None = None) -> JSON:
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}}, "data": data or {}}
    try:
        return await kube.request("POST", configmaps(namespace), body=body)
    except Exception:
        return await kube.request("PUT", f"{configmaps(namespace)}/{name}", body=body)


class Recorder:
    """Handler recording (key, kind of change) in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, key: str, old: JSON | None, new: JSON | None) -> None:
        self.events.append((key, "added" if old is None else "deleted" if new is None else "changed"))


@contextlib.asynccontextmanager
async def running(informer: ListWatch[Any]) -> AsyncIterator[ListWatch[Any]]:
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 20)
        yield informer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def skip_marked(obj: JSON) -> JSON | None:
    return None if (obj.get("data") or {}).get("skip") == "yes" else obj


async def test_informer_follows_adds_changes_deletes_label_selector_and_transform(kube_api: ApiClient) -> None:
    kube = KubeTransport(kube_api)
    ns = unique("informer")
    await ensure_namespace(kube, ns)
    await put_configmap(kube, ns, "a", labels={"app": "x"}, data={"v": "1"})
    await put_configmap(kube, ns, "other", labels={"app": "y"})
    recorder = Recorder()
    informer = Informer(kube, configmaps(ns), label_selector="app=x", transform=skip_marked, watch_timeout=2)
    informer.add_handler(recorder)
    async with running(informer):
        assert set(informer.store) == {f"{ns}/a"}, "the label selector is applied to the list"
        await put_configmap(kube, ns, "b", labels={"app": "x"})
        await put_configmap(kube, ns, "a", labels={"app": "x"}, data={"v": "2"})
        await wait_for(lambda: informer.store.get(f"{ns}/a", {}).get("data") == {"v": "2"}, 10)
        await put_configmap(kube, ns, "a", labels={"app": "x"}, data={"skip": "yes"})  # transform drops it
        await put_configmap(kube, ns, "b", labels={"app": "y"})  # leaves the selection
        await put_configmap(kube, ns, "c", labels={"app": "x"})
        await kube.request("DELETE", f"{configmaps(ns)}/c")
        await wait_for(lambda: (f"{ns}/c", "deleted") in recorder.events, 10)
        await asyncio.sleep(5)  # watches of 2 s end and are resumed from their last version: no relist, no replay
    assert recorder.events == [
        (f"{ns}/a", "added"), (f"{ns}/b", "added"), (f"{ns}/a", "changed"), (f"{ns}/a", "deleted"),
        (f"{ns}/b", "deleted"), (f"{ns}/c", "added"), (f"{ns}/c", "deleted"),
    ]
    assert informer.store == {}
    assert informer.relists == 1


class CountingLists(KubeTransport):
    """The real transport, noting how many objects were digested when each list page was asked for."""

    def __init__(self, api: ApiClient, digested: list[str]) -> None:
        super().__init__(api)
        self.digested = digested
        self.digested_at_page: list[int] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        if method == "GET" and "limit" in (kwargs.get("query") or {}):
            self.digested_at_page.append(len(self.digested))
        return await super().request(method, path, **kwargs)


async def test_a_list_is_digested_page_by_page_and_an_unreadable_object_is_left_out(kube_api: ApiClient) -> None:
    """The store of a big collection never holds its whole JSON: each page is transformed before the next is
    asked for. An object the transform cannot read is logged and left out; the watch goes on."""
    digested: list[str] = []
    kube = CountingLists(kube_api, digested)
    ns = unique("informer-pages")
    await ensure_namespace(kube, ns)
    await put_configmap(kube, ns, "bad", data={"bad": "yes"})
    for i in range(5):
        await put_configmap(kube, ns, f"cm-{i}")

    def digest(obj: JSON) -> dict[str, str]:
        if (obj.get("data") or {}).get("bad"):
            raise ValueError("unreadable")
        digested.append(obj["metadata"]["name"])
        return {"name": obj["metadata"]["name"], "rv": obj["metadata"]["resourceVersion"]}

    informer: ListWatch[dict[str, str]] = ListWatch(kube, configmaps(ns), transform=digest,
                                                    version=lambda d: d["rv"], page_size=2, watch_timeout=5)
    with structlog.testing.capture_logs() as logs:
        async with running(informer):
            assert kube.digested_at_page == [0, 1, 3], "pages of 2 (bad, cm-0 | cm-1, cm-2 | cm-3, cm-4)"
            assert set(informer.store) == {f"{ns}/cm-{i}" for i in range(5)}
            await put_configmap(kube, ns, "bad", data={"fixed": "yes"})
            await wait_for(lambda: f"{ns}/bad" in informer.store, 10, message="the watch goes on")
    failed = [e for e in logs if e["event"] == "informer_transform_failed"]
    assert [e["key"] for e in failed] == [f"{ns}/bad"]


async def test_a_watch_expired_by_compaction_relists_and_replays_only_differences(
        expiring_apiserver: KubeAPIServer) -> None:
    api = await api_client_for(expiring_apiserver.admin_kubeconfig)
    try:
        kube = KubeTransport(api)
        ns = unique("informer-410")
        await ensure_namespace(kube, ns)
        await put_configmap(kube, ns, "kept")
        recorder = Recorder()
        informer = Informer(kube, configmaps(ns), watch_timeout=1)
        informer.add_handler(recorder)
        async with running(informer):
            # Each 1 s watch resumes from a version that compaction (every 1 s) removed: 410 Gone, relist.
            await wait_for(lambda: informer.relists >= 3, 30, message="relists after 410 Gone")
            await put_configmap(kube, ns, "new")
            await kube.request("DELETE", f"{configmaps(ns)}/kept")
            await wait_for(lambda: set(informer.store) == {f"{ns}/new"}, 30)
            relists = informer.relists
            await wait_for(lambda: informer.relists >= relists + 2, 30, message="more relists")
    finally:
        await api.close()
    assert recorder.events == [(f"{ns}/kept", "added"), (f"{ns}/new", "added"), (f"{ns}/kept", "deleted")]


async def test_api_errors_are_retried_with_backoff_until_the_list_succeeds(kube_apiserver: KubeAPIServer,
                                                                           kube_api: ApiClient) -> None:
    admin = KubeTransport(kube_api)
    ns = unique("informer-rbac")
    await ensure_namespace(admin, ns)
    await put_configmap(admin, ns, "a")
    user = unique("informer-user")
    api = await api_client_for(kube_apiserver.kubeconfig(user))
    try:
        informer = Informer(KubeTransport(api), configmaps(ns), watch_timeout=5, max_backoff=1.0)
        task = asyncio.create_task(informer.run())
        try:
            await wait_for(lambda: informer.restarts >= 3, 20, message="retries of the forbidden list")
            assert not informer.synced.is_set()
            await grant_configmap_reader(admin, ns, user)
            await asyncio.wait_for(informer.synced.wait(), 20)
            assert set(informer.store) == {f"{ns}/a"}
            assert not task.done(), "an API error must never end the informer"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await api.close()


async def grant_configmap_reader(kube: KubeTransport, namespace: str, user: str) -> None:
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    role: dict[str, Any] = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                            "metadata": {"name": "cm-reader"},
                            "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                                       "verbs": ["get", "list", "watch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "cm-reader"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
               "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]}
    await kube.request("POST", f"{rbac}/roles", body=role)
    await kube.request("POST", f"{rbac}/rolebindings", body=binding)
