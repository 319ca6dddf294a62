"""``cloudsigma-ccm doctor``: find out, from inside the pod, what stops the CCM — without writing anything.

Checks, in order: configuration; tenant API reachability and every RBAC permission the CCM needs
(SelfSubjectAccessReview); each credential provider (token acquired, with its claims, or the exact failure);
the CloudSigma account as the CCM sees it (owner uuids, server count, request ids); and for every Node what
the controller would do. Exit code 1 when something blocks the CCM, 0 otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ccm.config import Settings
from ccm.kube.clients import api_client
from ccm.kube.errors import KubeError, KubeNotFound
from ccm.kube.fetching import list_nodes
from ccm.kube.permissions import TENANT, needed
from ccm.kube.transport import KubeTransport
from ccm.logging import Redactor
from ccm.nodes.decide import plan_initialization, plan_resync
from ccm.nodes.matching import MatchKind, describe_candidates, match_server
from ccm.nodes.view import node_view
from ccm.servercache import ServerSnapshot
from ccm.tenant.services import RedactingSource
from ccm.tokenbroker import secret as tb_secret
from ccm.tokenbroker.secret import Target, secret_view
from ccm.tokenbroker.wiring import token_broker_permissions, token_broker_targets
from cloudsigma.client import CloudSigmaClient, RetryPolicy
from cloudsigma.errors import CloudSigmaError
from credentials.base import Credential, CredentialError, NoCredential
from credentials.cache import TokenCache
from credentials.chain import CredentialChain
from credentials.factory import build_chain, build_verifier
from credentials.registry import create_provider

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    area: str
    name: str
    status: Status
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


async def collect(settings: Settings, redactor: Redactor) -> list[Check]:
    checks: list[Check] = [Check("config", "settings", "ok",
                                 f"region {settings.region}, user {settings.user_email}, chain "
                                 f"{' -> '.join(settings.credential_chain)}")]
    if settings.allow_fallback_on_forbidden:
        checks.append(Check("config", "allow_fallback_on_forbidden", "warn",
                            "403s of impersonated tokens are retried with other credentials: ownership problems "
                            "(seed 001) will be hidden"))
    checks += await _credential_checks(settings, redactor)
    snapshot, cloud_checks, client, chain = await _cloud_checks(settings, redactor)
    checks += cloud_checks
    try:
        checks += await _kube_checks(settings, snapshot, client)
    finally:
        await client.close()
        await chain.aclose()
    return checks


async def _credential_checks(settings: Settings, redactor: Redactor) -> list[Check]:
    """Each provider on its own, through a one-provider chain so its token is verified as the daemon would."""
    out: list[Check] = []
    user = settings.user_email or ""
    for name in settings.credential_chain:
        try:
            provider = create_provider(name, settings)
        except Exception as exc:
            out.append(Check("credentials", name, "fail", f"cannot build provider: {exc}"))
            continue
        chain = CredentialChain([provider], TokenCache(maxsize=4), verifier=build_verifier(settings),
                                on_secret=redactor.add)
        try:
            credential = await chain.get(user, settings.region)
            redactor.add(credential.secret.get_secret_value())
            status = chain.status()[0]
            out.append(Check("credentials", name, "ok", _credential_detail(credential, settings.region, status),
                             status))
        except NoCredential as exc:
            failure = exc.failures[0] if exc.failures else exc
            out.append(Check("credentials", name, "fail", f"{failure.reason}: {failure.message}",
                             chain.status()[0]))
        finally:
            await chain.aclose()
    if out and all(c.status == "fail" for c in out):
        out.append(Check("credentials", "chain", "fail", "no provider in the chain can produce a credential"))
    elif out and out[0].status == "fail":
        out.append(Check("credentials", "chain", "warn",
                         f"the preferred provider {settings.credential_chain[0]} fails: the CCM runs on a fallback"))
    return out


def _credential_detail(credential: Credential, region: str, status: dict[str, Any]) -> str:
    """One line: whom the credential acts as, how it was verified, when it expires, how the client authenticates."""
    ident = credential.identity
    claims = {k: ident.claims[k] for k in ("sub", "azp", "aud", "exp", "preferred_username", "email")
              if k in ident.claims}
    text = f"credential acquired for {ident.user or '?'} -> {credential.api_url(region)}"
    verification = ident.verification
    if verification is not None:
        text += f"; token {verification.status}"
        if verification.matched_claim:
            text += f" ({verification.matched_claim} = {ident.claims.get(verification.matched_claim)!r}"
            text += f", issuer {verification.issuer}, key {verification.kid})"
        elif verification.detail:
            text += f" ({verification.detail})"
    current = status.get("current") or {}
    if current.get("expires_in") is not None:
        text += f"; expires in {current['expires_in']:.0f}s"
    if status.get("client_auth"):
        text += f"; client authenticates with {status['client_auth']} ({status.get('client_auth_source')}"
        if status.get("public_key_thumbprint"):
            text += f", public key thumbprint {status['public_key_thumbprint']}"
        text += ")"
    return text + (f"; claims {claims}" if claims else "")


async def _cloud_checks(settings: Settings, redactor: Redactor) -> tuple[
        ServerSnapshot | None, list[Check], CloudSigmaClient, Any]:
    chain = build_chain(settings, on_secret=redactor.add)
    client = CloudSigmaClient(RedactingSource(chain, redactor), user_email=settings.user_email or "",
                              region=settings.region, timeout=settings.http_timeout, retry=RetryPolicy(attempts=2),
                              page_size=settings.api_page_size)
    try:
        listing = await client.list_servers()
    except (CloudSigmaError, CredentialError) as exc:
        return None, [Check("cloudsigma", "list servers", "fail", str(exc))], client, chain
    owners = sorted({s.owner_uuid or "unknown" for s in listing.servers})
    status: Status = "ok" if listing.complete else "warn"
    detail = (f"{len(listing.servers)} servers visible to {settings.user_email} via {listing.provider}; owners "
              f"{', '.join(owners) or 'none'}; request ids {', '.join(listing.request_ids)}")
    if not listing.complete:
        detail += f"; {len(listing.invalid)} objects could not be parsed"
    snapshot = ServerSnapshot.from_list(listing, fetched_at=0.0)
    return snapshot, [Check("cloudsigma", "list servers", status, detail,
                            {"owners": owners, "servers": len(listing.servers)})], client, chain


async def _kube_checks(settings: Settings, snapshot: ServerSnapshot | None, client: CloudSigmaClient) -> list[Check]:
    out: list[Check] = []
    try:
        tenant = await api_client(settings.kubeconfig)
    except Exception as exc:
        return [Check("tenant", "kubeconfig", "fail", f"cannot load the tenant kubeconfig: {exc}")]
    kube = KubeTransport(tenant, timeout=settings.http_timeout)
    try:
        try:
            version = await kube.request("GET", "/version")
            out.append(Check("tenant", "api reachable", "ok", f"Kubernetes {version.get('gitVersion', '?')}"))
        except KubeError as exc:
            out.append(Check("tenant", "api reachable", "fail", str(exc)))
            return out
        wanted = needed(TENANT, deletion_enabled=settings.node_deletion_enabled,
                        csr_approval=settings.csr_approval != "off", load_balancer=settings.load_balancer)
        for permission in wanted + token_broker_permissions(settings):
            label = permission.label
            try:
                answer = await kube.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                            body=permission.review())
            except KubeError as exc:
                out.append(Check("rbac", label, "fail", f"cannot ask: {exc}"))
                continue
            allowed = bool((answer.get("status") or {}).get("allowed"))
            where = (f"the Role in namespace {permission.namespace}" if permission.namespace
                     else "the tenant ClusterRole")
            hint = ("" if allowed else f" — grant it with {where} (deploy/tenant)"
                    + (" or set --node-deletion-enabled=false" if permission.when == "deletion" else ""))
            out.append(Check("rbac", label, "ok" if allowed else "fail", ("allowed" if allowed else "DENIED") + hint))
        for target in token_broker_targets(settings):
            out.append(await token_broker_check(kube, target))
        try:
            nodes, _ = await list_nodes(kube)
        except KubeError as exc:
            out.append(Check("nodes", "list", "fail", str(exc)))
            return out
        for node in nodes:
            out.append(await _node_check(settings, node, snapshot, client))
    finally:
        await tenant.close()
    return out


async def token_broker_check(kube: KubeTransport, target: Target) -> Check:
    """What a token broker target holds (read from the tenant cluster, never the token): last write, the token's
    expiry, the last error."""
    try:
        obj = await kube.request("GET", target.path)
    except KubeNotFound:
        return Check("token-broker", target.key, "warn", "the Secret does not exist (yet): the running CCM creates it")
    except KubeError as exc:
        return Check("token-broker", target.key, "fail", f"cannot read the Secret: {exc}")
    view = secret_view(obj)
    meta = obj.get("metadata") or {}
    writes = [str(m.get("time")) for m in meta.get("managedFields") or [] if m.get("time")]
    data: dict[str, Any] = {"last_write": max(writes) if writes else None,
                            "token_expires_at": view.data.get("expires_at") or None,
                            "owner": view.annotations.get(tb_secret.OWNER),
                            "last_error": view.annotations.get(tb_secret.LAST_ERROR)}
    if not view.managed:
        label = f"{tb_secret.MANAGED_BY_LABEL}={tb_secret.MANAGED_BY}"
        return Check("token-broker", target.key, "fail", f"not managed by the CCM (no label {label}): the broker "
                     "leaves it alone; delete it or add the label", data)
    expires = view.token_expires_at
    text = f"last write {data['last_write'] or '?'}"
    if data["last_error"]:
        text += f"; last error: {data['last_error']}"
    if expires is None:
        return Check("token-broker", target.key, "fail", f"holds no token; {text}", data)
    left = expires - time.time()
    status: Status = "ok" if left > 0 and not data["last_error"] else ("warn" if left > 0 else "fail")
    return Check("token-broker", target.key, status, f"holds a token for {data['owner']} "
                 f"{'expiring' if left > 0 else 'EXPIRED'} at {data['token_expires_at']} ({left:.0f}s); {text}", data)


async def _node_check(settings: Settings, node: dict[str, Any], snapshot: ServerSnapshot | None,
                      client: CloudSigmaClient) -> Check:
    view = node_view(node)
    if snapshot is None:
        return Check("nodes", view.name, "warn", "not checked: the CloudSigma listing failed")
    match = match_server(view, snapshot.by_uuid, snapshot.by_name, use_system_uuid=settings.node_lookup_by_system_uuid)
    state = "uninitialized" if view.uninitialized else "initialized"
    if match.kind is MatchKind.FOUND and match.server is not None:
        server = match.server
        plan = (plan_initialization(view, server, region=settings.region, zone=settings.effective_zone)
                if view.uninitialized else plan_resync(view, server, region=settings.region,
                                                       zone=settings.effective_zone))
        if plan.blocked:
            return Check("nodes", view.name, "fail", f"{state}; server {server.uuid} found by {match.via} but: "
                         f"{plan.blocked}")
        what = []
        if plan.provider_id:
            what.append(f"set providerID {plan.provider_id}")
        if plan.addresses is not None:
            what.append("addresses " + ", ".join(f"{a.type}={a.address}" for a in plan.addresses))
        if plan.labels:
            what.append("labels " + ", ".join(f"{k}={v}" for k, v in sorted(plan.labels.items())))
        if plan.taints is not None and view.uninitialized:
            what.append("remove the uninitialized taint")
        return Check("nodes", view.name, "ok", f"{state}; server {server.uuid} ({server.status}) found by "
                     f"{match.via}; would " + ("; ".join(what) if what else "change nothing"))
    if match.kind is MatchKind.AMBIGUOUS:
        return Check("nodes", view.name, "fail", f"{state}; several servers carry its name: {match.detail}")
    if match.kind is MatchKind.FOREIGN_PROVIDER_ID:
        return Check("nodes", view.name, "fail", f"{state}; {match.detail}")
    if match.kind is MatchKind.NOT_IN_SNAPSHOT and match.provider_uuid:
        try:
            server = await client.get_server(match.provider_uuid)
            return Check("nodes", view.name, "ok", f"{state}; server {server.uuid} found by direct GET only")
        except CloudSigmaError as exc:
            extra = (f"; servers with its name: {describe_candidates(match.name_matches)} (providerID is stale)"
                     if match.name_matches else "")
            return Check("nodes", view.name, "fail", f"{state}; server {match.provider_uuid} from providerID: "
                         f"{exc}{extra}")
    return Check("nodes", view.name, "fail", f"{state}; no server named {view.name!r} among "
                 f"{len(snapshot.servers)} servers of {settings.user_email}")


def render_table(checks: list[Check]) -> str:
    width_area = max(len(c.area) for c in checks)
    width_name = max(len(c.name) for c in checks)
    lines = [f"{'AREA':<{width_area}}  {'CHECK':<{width_name}}  STATUS  DETAIL"]
    for c in checks:
        lines.append(f"{c.area:<{width_area}}  {c.name:<{width_name}}  {c.status.upper():<6}  {c.detail}")
    return "\n".join(lines)


async def run_all_tenants_doctor(settings: Settings, redactor: Redactor, *, output: str = "table") -> int:
    """``doctor --all-tenants`` (and ``doctor`` in fleet mode): every tenant of the fleet, from the management
    cluster. Exit 1 when a tenant cannot be served, has no live owner, or its credentials or controllers fail."""
    from ccm.fleet.doctor import run_all_tenants
    from ccm.kube.permissions import fleet
    from ccm.process.lifetime import kube_client, lease_namespace

    namespace = lease_namespace(settings)
    management = await kube_client(settings.leader_elect_kubeconfig, setting="leader_elect_kubeconfig",
                                   what="management kubeconfig")
    try:
        kube = KubeTransport(management, timeout=settings.http_timeout,
                             permissions=fleet(namespace, tenant_namespace=settings.fleet_tenant_namespace,
                                               namespace_selector=bool(settings.fleet_namespace_selector)))
        text, ok = await run_all_tenants(settings, kube, namespace=namespace, output=output)
    finally:
        await management.close()
    sys.stdout.write(redactor.redact_text(text) + "\n")
    return 0 if ok else 1


async def _with_cluster_ref(settings: Settings) -> Settings:
    """``--cluster-ref``: the owner email and region as the CloudSigmaCluster says now."""
    from ccm.clusters.clusterapi import clusters_path
    from ccm.clusters.tenants import parse_owner
    from ccm.kube.informer import list_all
    from ccm.kube.permissions import cluster_ref
    from ccm.process.lifetime import kube_client

    parts = settings.cluster_ref_parts
    if parts is None:
        return settings
    namespace, name = parts
    management = await kube_client(settings.leader_elect_kubeconfig, setting="leader_elect_kubeconfig",
                                   what="management kubeconfig")
    try:
        kube = KubeTransport(management, timeout=settings.http_timeout, permissions=cluster_ref(namespace, name))
        items, _ = await list_all(kube, clusters_path(namespace), query={"fieldSelector": f"metadata.name={name}"})
    finally:
        await management.close()
    if not items:
        raise ValueError(f"--cluster-ref {settings.cluster_ref}: no such CloudSigmaCluster")
    email, region = parse_owner(items[0])
    return settings.model_copy(update={"user_email": email, "region": region})


async def run_doctor(settings: Settings, redactor: Redactor, *, output: str = "table",
                     all_tenants: bool = False) -> int:
    if all_tenants or settings.mode == "fleet":
        return await run_all_tenants_doctor(settings, redactor, output=output)
    settings = await _with_cluster_ref(settings)
    checks = await collect(settings, redactor)
    failed = [c for c in checks if c.status == "fail"]
    if output == "json":
        text = json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2, default=str)
    else:
        text = render_table(checks) + f"\n\n{len(failed)} problem(s) found." if failed else render_table(checks) + \
            "\n\nNo problems found."
    sys.stdout.write(redactor.redact_text(text) + "\n")
    return 1 if failed else 0
