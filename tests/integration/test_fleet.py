"""Fleet foundations against real kube-apiservers: a management cluster with the CloudSigmaCluster CRD, tenant
discovery following clusters and their kubeconfig Secrets, member Leases, and sharding of the live membership.

The tenant kubeconfigs are real: issued by the suite's (tenant) kube-apiserver, and checked to reach it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog
from kubernetes_asyncio.config import new_client_from_config_dict

from ccm.clusters.tenants import (
    ClusterNotAdopted,
    InvalidCluster,
    InvalidKubeconfig,
    KubeconfigMissing,
    kubeconfig_dict,
)
from ccm.fleet.announce import FLEET_LABEL, Announcer, leases_path
from ccm.fleet.discovery import DiscoveryOptions, TenantDiscovery, TenantEvent
from ccm.fleet.membership import Membership, MembershipOptions
from ccm.fleet.sharding import assign
from ccm.kube.errors import KubeNotFound
from ccm.kube.transport import KubeTransport
from tests.realenv.fleet import (
    create_cluster,
    delete_cluster,
    delete_namespace_objects,
    delete_secret,
    ensure_namespace,
    install_crd,
    label_namespace,
    patch_cluster,
    put_kubeconfig_secret,
    unique,
)
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def management_server(kube_apiserver_factory: Callable[..., KubeAPIServer]) -> KubeAPIServer:
    # Audited: the fleet's reliability tests (tests/reliability/test_fleet.py) share it and read its Lease writes.
    return kube_apiserver_factory("fleet-management", audit=True)


@pytest.fixture
async def management(management_server: KubeAPIServer) -> AsyncIterator[KubeTransport]:
    api = await api_client_for(management_server.admin_kubeconfig)
    try:
        kube = KubeTransport(api)
        await install_crd(kube)
        yield kube
    finally:
        await api.close()


@pytest.fixture
def tenant_kubeconfigs(kube_apiserver: KubeAPIServer) -> Callable[[str], bytes]:
    """Kubeconfigs of the (real) tenant API server, one client certificate per name: rotation = a new name."""
    return lambda user: kube_apiserver.kubeconfig(user, groups=["system:masters"]).read_bytes()


@contextlib.asynccontextmanager
async def running(runner: Any, *, synced: asyncio.Event) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(synced.wait(), 30)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def reaches_tenant(kubeconfig: dict[str, Any]) -> bool:
    """The kubeconfig of a TenantSpec builds a client that the tenant API server answers."""
    api = await new_client_from_config_dict(kubeconfig)
    try:
        await KubeTransport(api).request("GET", "/api/v1/nodes", query={"limit": 1})
        return True
    finally:
        await api.close()


class Events:
    """Handler collecting the tenant events of some namespaces."""

    def __init__(self, *namespaces: str) -> None:
        self.prefixes = tuple(ns + "/" for ns in namespaces)
        self.seen: list[TenantEvent] = []

    def __call__(self, event: TenantEvent) -> None:
        if event.key.startswith(self.prefixes):
            self.seen.append(event)

    def summary(self) -> list[tuple[str, str, tuple[str, ...]]]:
        return [(e.type.value, e.key.split("/", 1)[1], tuple(sorted(e.fields))) for e in self.seen]

    async def wait(self, count: int, timeout: float = 10) -> None:
        await wait_for(lambda: len(self.seen) >= count, timeout,
                       message=f"{count} tenant events (have {self.summary()})")


async def test_discovery_follows_clusters_owner_region_changes_rotated_secrets_and_removal(
        management: KubeTransport, tenant_kubeconfigs: Callable[[str], bytes]) -> None:
    ns = unique("tenants")
    await ensure_namespace(management, ns)
    await create_cluster(management, ns, "c1", region="zrh", user_email="alice@example.com")
    await put_kubeconfig_secret(management, ns, "c1", tenant_kubeconfigs("fleet-c1-v1"))
    events = Events(ns)
    discovery = TenantDiscovery(management, DiscoveryOptions(watch_timeout=30))
    discovery.add_handler(events)
    try:
        async with running(discovery, synced=discovery.synced) as task:
            await events.wait(1)
            first = discovery.tenants[f"{ns}/c1"]
            assert (first.cluster_name, first.user_email, first.region) == ("c1", "alice@example.com", "zrh")
            assert await reaches_tenant(kubeconfig_dict(first))

            # A new cluster is served within seconds of its kubeconfig Secret appearing.
            await create_cluster(management, ns, "c2", region="fra", user_email="bob@example.com",
                                 cluster_name="prod-2")
            await put_kubeconfig_secret(management, ns, "prod-2", tenant_kubeconfigs("fleet-c2"))
            started = time.monotonic()
            await events.wait(2, timeout=5)
            added_after = time.monotonic() - started

            await patch_cluster(management, ns, "c1", {"spec": {"userEmail": "carol@example.com"}})
            await events.wait(3)
            await patch_cluster(management, ns, "c1", {"spec": {"region": "next"}})
            await events.wait(4)
            await put_kubeconfig_secret(management, ns, "c1", tenant_kubeconfigs("fleet-c1-v2"))  # rotated
            await events.wait(5)
            rotated = discovery.tenants[f"{ns}/c1"]
            assert rotated.kubeconfig_sha256 != first.kubeconfig_sha256
            assert await reaches_tenant(kubeconfig_dict(rotated))
            await patch_cluster(management, ns, "c1", {"metadata": {"annotations": {"unrelated": "edit"}}})

            await delete_cluster(management, ns, "c2")
            await events.wait(6)
            assert not task.done()
    finally:
        await delete_namespace_objects(management, ns)
    assert events.summary() == [
        ("added", "c1", ()),
        ("added", "c2", ()),
        ("changed", "c1", ("user_email",)),
        ("changed", "c1", ("region",)),
        ("changed", "c1", ("kubeconfig", "kubeconfig_sha256")),
        ("removed", "c2", ()),
    ]
    assert set(discovery.tenants) >= {f"{ns}/c1"} and f"{ns}/c2" not in discovery.tenants
    assert added_after < 5


async def test_one_bad_object_never_stops_discovery_and_a_served_tenant_keeps_its_last_good_spec(
        management: KubeTransport, tenant_kubeconfigs: Callable[[str], bytes]) -> None:
    ns = unique("bad-tenants")
    await ensure_namespace(management, ns)
    good_kubeconfig = tenant_kubeconfigs("fleet-good")
    await create_cluster(management, ns, "no-email", user_email=None)
    await put_kubeconfig_secret(management, ns, "no-email", good_kubeconfig)
    await create_cluster(management, ns, "plugin")
    await put_kubeconfig_secret(management, ns, "plugin", b"""
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {exec: {command: /bin/sh, args: ["-c", "cat /etc/shadow"]}}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    await create_cluster(management, ns, "orphan", cluster_name="")
    await create_cluster(management, ns, "good")
    await put_kubeconfig_secret(management, ns, "good", good_kubeconfig)
    events = Events(ns)
    discovery = TenantDiscovery(management, DiscoveryOptions(namespace=ns, watch_timeout=30))
    discovery.add_handler(events)
    try:
        with structlog.testing.capture_logs() as logs:
            async with running(discovery, synced=discovery.synced) as task:
                await events.wait(1)
                assert set(discovery.tenants) == {f"{ns}/good"}
                problems = {k.split("/", 1)[1]: type(v) for k, v in discovery.problems.items()}
                assert problems == {"no-email": InvalidCluster, "plugin": InvalidKubeconfig,
                                    "orphan": ClusterNotAdopted}
                assert "spec.userEmail is empty" in str(discovery.problems[f"{ns}/no-email"])

                # Fixed: served.
                await patch_cluster(management, ns, "no-email", {"spec": {"userEmail": "dave@example.com"}})
                await events.wait(2)
                # A served tenant broken by an edit keeps its last good spec (and says why) ...
                await patch_cluster(management, ns, "good", {"spec": {"userEmail": "not an email"}})
                await wait_for(lambda: f"{ns}/good" in discovery.problems, 10)
                await delete_secret(management, ns, "no-email-kubeconfig")
                await wait_for(lambda: isinstance(discovery.problems.get(f"{ns}/no-email"), KubeconfigMissing), 10)
                assert set(discovery.tenants) == {f"{ns}/good", f"{ns}/no-email"}
                # ... and the repair is no change at all.
                await patch_cluster(management, ns, "good", {"spec": {"userEmail": "owner@example.com"}})
                await put_kubeconfig_secret(management, ns, "no-email", good_kubeconfig)
                await wait_for(lambda: not ({f"{ns}/good", f"{ns}/no-email"} & set(discovery.problems)), 10)
                assert not task.done()
    finally:
        await delete_namespace_objects(management, ns)
    assert events.summary() == [("added", "good", ()), ("added", "no-email", ())]
    invalid = [e for e in logs if e["event"] == "tenant_invalid"]
    assert {e["tenant"] for e in invalid} >= {f"{ns}/no-email", f"{ns}/plugin", f"{ns}/good"}
    assert all(e["keeps_last_good"] for e in invalid if e["tenant"] == f"{ns}/good")
    assert [e["tenant"] for e in logs if e["event"] == "tenant_pending"] == [f"{ns}/orphan"]
    assert all("cat /etc/shadow" not in str(e) and "BEGIN" not in str(e) for e in logs), "never log a kubeconfig"


async def test_namespace_and_cluster_label_selectors_limit_the_tenants(
        management: KubeTransport, tenant_kubeconfigs: Callable[[str], bytes]) -> None:
    blue, green, fleet = unique("blue"), unique("green"), unique("fleet")
    kubeconfig = tenant_kubeconfigs("fleet-selectors")
    await ensure_namespace(management, blue, {"fleet": fleet})
    await ensure_namespace(management, green)
    for ns, name, labels in ((blue, "served", {}), (blue, "excluded", {"tier": "excluded"}), (green, "later", {})):
        await create_cluster(management, ns, name, labels=labels)
        await put_kubeconfig_secret(management, ns, name, kubeconfig)
    events = Events(blue, green)
    discovery = TenantDiscovery(management, DiscoveryOptions(namespace_selector=f"fleet={fleet}",
                                                             cluster_selector="tier!=excluded", watch_timeout=30))
    discovery.add_handler(events)
    try:
        async with running(discovery, synced=discovery.synced):
            await events.wait(1)
            assert {k for k in discovery.tenants if k.startswith((blue, green))} == {f"{blue}/served"}
            await label_namespace(management, green, {"fleet": fleet})
            await events.wait(2)
            await patch_cluster(management, blue, "excluded", {"metadata": {"labels": {"tier": "included"}}})
            await events.wait(3)
            await label_namespace(management, blue, {"fleet": None})
            await events.wait(5)
    finally:
        await delete_namespace_objects(management, blue)
        await delete_namespace_objects(management, green)
    assert sorted(events.summary()[3:]) == [("removed", "excluded", ()), ("removed", "served", ())]
    assert events.summary()[:3] == [("added", "served", ()), ("added", "later", ()), ("added", "excluded", ())]


async def test_discovery_judges_nothing_until_every_list_is_in(management: KubeTransport,
                                                                 management_server: KubeAPIServer,
                                                                 tenant_kubeconfigs: Callable[[str], bytes]) -> None:
    # Secrets cannot be listed yet (RBAC not applied): a cluster must not be reported "kubeconfig missing",
    # nor served half-known; once Secrets are readable it is served.
    ns, user = unique("rbac-tenants"), unique("fleet-reader")
    await ensure_namespace(management, ns)
    await create_cluster(management, ns, "c1")
    await put_kubeconfig_secret(management, ns, "c1", tenant_kubeconfigs("fleet-rbac"))
    await grant(management, ns, user, "cluster-reader", "infrastructure.cluster.x-k8s.io", "cloudsigmaclusters")
    api = await api_client_for(management_server.kubeconfig(user))
    discovery = TenantDiscovery(KubeTransport(api), DiscoveryOptions(namespace=ns, max_backoff=1.0))
    events = Events(ns)
    discovery.add_handler(events)
    task = asyncio.create_task(discovery.run())
    try:
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(discovery.clusters.synced.wait(), 20)
            await wait_for(lambda: discovery.secrets.restarts >= 2, 20, message="forbidden Secret lists")
            assert (discovery.problems, events.seen, discovery.synced.is_set()) == ({}, [], False)
            await grant(management, ns, user, "secret-reader", "", "secrets")
            await asyncio.wait_for(discovery.synced.wait(), 20)
            await events.wait(1)
        assert events.summary() == [("added", "c1", ())]
        assert not [e for e in logs if e["event"] in ("tenant_pending", "tenant_invalid")]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()
        await delete_namespace_objects(management, ns)


async def grant(kube: KubeTransport, ns: str, user: str, name: str, group: str, resource: str) -> None:
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    await kube.request("POST", f"{rbac}/roles", body={
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
        "rules": [{"apiGroups": [group], "resources": [resource], "verbs": ["get", "list", "watch"]}]})
    await kube.request("POST", f"{rbac}/rolebindings", body={
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]})


# -- membership and sharding -------------------------------------------------------------------------------

def member_options(ns: str, fleet: str, identity: str, **overrides: Any) -> MembershipOptions:
    values: dict[str, Any] = {"namespace": ns, "identity": identity, "fleet": fleet, "lease_duration": 4.0,
                              "renew_interval": 0.5, "watch_timeout": 30}
    values.update(overrides)
    return MembershipOptions(**values)


async def test_membership_sees_members_join_expire_leave_and_forgets_dead_leases(
        management: KubeTransport) -> None:
    ns, fleet = unique("fleet-system"), unique("f")
    await ensure_namespace(management, ns)
    a = Membership(management, member_options(ns, fleet, "replica-a", forget_after=6.0))
    b = Membership(management, member_options(ns, fleet, "Replica_B.x"))
    changes: list[tuple[float, frozenset[str]]] = []
    a.add_handler(lambda live: changes.append((time.monotonic(), live)))
    ghost = Announcer(management, namespace=ns, fleet=fleet, identity="ghost", lease_duration=4.0,
                      renew_interval=0.5)
    assert a.announcer is not None
    async with running(a, synced=a.synced):
        await wait_for(lambda: a.live == {"replica-a"}, 10)
        async with running(b, synced=b.synced) as b_task:
            await wait_for(lambda: a.live == {"replica-a", "Replica_B.x"} == b.live, 10)
            # A member that renews a few times, then dies without a word: gone after its lease duration.
            for i in range(3):
                if i:
                    await asyncio.sleep(0.5)
                assert await ghost.renew()
            last_renewal = time.monotonic()
            await wait_for(lambda: "ghost" in a.live, 10)
            await wait_for(lambda: "ghost" not in a.live, 15)
            ghost_gone_after = time.monotonic() - last_renewal
            # A clean leave deletes the member Lease: the others see it at once.
            b_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await b_task
            left_at = time.monotonic()
            await wait_for(lambda: a.live == {"replica-a"}, 10)
            clean_leave_after = time.monotonic() - left_at
        # The dead member's Lease is deleted once silent for forget_after; a live one's never.
        await wait_for(lambda: lease_missing(management, ns, ghost.name), 20, message="the ghost's lease deleted")
        assert not await lease_missing(management, ns, a.announcer.name)
    assert await lease_missing(management, ns, a.announcer.name), "a clean stop deletes the member Lease"
    lives = [live for _, live in changes]
    assert lives[:2] == [{"replica-a"}, {"replica-a", "Replica_B.x"}]
    assert {"replica-a", "Replica_B.x", "ghost"} in lives
    assert lives[-1] == {"replica-a"}
    assert 4.0 - 0.3 <= ghost_gone_after <= 4.0 + 2.0, ghost_gone_after
    assert clean_leave_after < 2.0, clean_leave_after


async def lease_missing(kube: KubeTransport, ns: str, name: str) -> bool:
    try:
        await kube.request("GET", f"{leases_path(ns)}/{name}")
    except KubeNotFound:
        return True
    return False


async def test_member_judgement_ignores_the_renew_time_written_by_a_skewed_clock(management: KubeTransport) -> None:
    ns, fleet = unique("fleet-skew"), unique("f")
    await ensure_namespace(management, ns)
    # An observer only (no own Lease, so no renewals of its own wake it): only the expiry timer can notice.
    observer = Membership(management, member_options(ns, fleet, "observer"), announce=False)
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "skewed", "labels": {FLEET_LABEL: fleet}},
            "spec": {"holderIdentity": "skewed", "leaseDurationSeconds": 4,
                     "renewTime": "2001-01-01T00:00:00.000000Z"}}
    await management.request("POST", leases_path(ns), body=body)
    async with running(observer, synced=observer.synced):
        # A renewTime 25 years old (a clock far behind), but news to us: live.
        await wait_for(lambda: observer.live == {"skewed"}, 10)
        await asyncio.sleep(1)
        # A renewTime far in the future (a clock far ahead) keeps it alive one duration from now, no longer.
        await management.request("PATCH", f"{leases_path(ns)}/skewed",
                                 body={"spec": {"renewTime": "2099-01-01T00:00:00.000000Z"}},
                                 content_type="application/merge-patch+json")
        renewed = time.monotonic()
        await wait_for(lambda: observer.live == frozenset(), 10)
        silent_for = time.monotonic() - renewed
    assert 4.0 - 0.3 <= silent_for <= 4.0 + 1.0, silent_for


async def test_sharding_of_the_live_membership_is_balanced_and_agreed(
        management: KubeTransport, tenant_kubeconfigs: Callable[[str], bytes]) -> None:
    ns, fleet = unique("shard-tenants"), unique("f")
    await ensure_namespace(management, ns)
    kubeconfig = tenant_kubeconfigs("fleet-shard")
    names = [f"t{i}" for i in range(9)]
    for name in names:
        await create_cluster(management, ns, name)
        await put_kubeconfig_secret(management, ns, name, kubeconfig)

    def owned(discovery: TenantDiscovery, membership: Membership) -> set[str]:
        mine = assign(discovery.tenants, membership.live)
        return {t for t, owner in mine.items() if owner == membership.options.identity}

    replicas = []
    for identity in ("replica-a", "replica-b", "replica-c"):
        replicas.append((TenantDiscovery(management, DiscoveryOptions(namespace=ns, watch_timeout=30)),
                         Membership(management, member_options(ns, fleet, identity))))
    async with contextlib.AsyncExitStack() as stack:
        for discovery, _membership in replicas:
            await stack.enter_async_context(running(discovery, synced=discovery.synced))
        tasks = [await stack.enter_async_context(running(m, synced=m.synced)) for _, m in replicas]
        all_tenants = {f"{ns}/{n}" for n in names}
        await wait_for(lambda: all(set(d.tenants) == all_tenants and len(m.live) == 3 for d, m in replicas), 15)
        shares = [owned(d, m) for d, m in replicas]
        assert set().union(*shares) == all_tenants and sum(map(len, shares)) == len(all_tenants), shares
        assert max(map(len, shares)) <= math.ceil(9 / 3) + 1, shares
        # One replica leaves cleanly: the other two split everything between them, still agreeing.
        tasks[2].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[2]
        await wait_for(lambda: all(len(m.live) == 2 for _, m in replicas[:2]), 10)
        after = [owned(d, m) for d, m in replicas[:2]]
        assert set().union(*after) == all_tenants and sum(map(len, after)) == len(all_tenants), after
        assert max(map(len, after)) <= math.ceil(9 / 2) + 1, after
    await delete_namespace_objects(management, ns)

