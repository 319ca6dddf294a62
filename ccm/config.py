"""Configuration: environment variables and ``--kebab-case`` flags, validated once at start-up.

Every setting is an env var ``CLOUDSIGMA_<NAME>`` and a flag ``--<name>`` (flags win). Names from the PRD
(seed 000) are kept: ``CLOUDSIGMA_IMPERSONATION_ENABLED`` / ``--impersonation-enabled`` and so on. Upstream
cloud-controller-manager flag names are used where upstream has one (``--concurrent-node-syncs``,
``--node-status-update-frequency``, ``--node-monitor-period``, ``--leader-elect*``, ``--kubeconfig``).
Secrets may also come from files: ``CLOUDSIGMA_CLIENT_SECRET_FILE``, ``CLOUDSIGMA_PASSWORD_FILE``,
``CLOUDSIGMA_STATIC_TOKEN_FILE``, ``CLOUDSIGMA_CLIENT_ASSERTION_FILE``, ``CLOUDSIGMA_CLIENT_PRIVATE_KEY_FILE``. They
are checked here (readable, not empty) and read by the credential providers, which re-read them when they change.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ccm.shutdown import ShutdownBudget

#: The token broker's target when it is just switched on: where kube-dc's CSI driver reads its token.
DEFAULT_TOKEN_BROKER_TARGET = "cloudsigma-csi/cloudsigma-token"
IMPERSONATION_STRATEGIES = ("keycloak-token-exchange", "cloudsigma-service-provider")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_FLEET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")


def check_fleet_name(fleet: str) -> str:
    """``fleet`` if usable as a label value and Lease name prefix, else :class:`ValueError` saying what to use."""
    if not _FLEET_NAME.fullmatch(fleet):
        raise ValueError(f"fleet name {fleet[:64]!r} is not usable: use at most 32 lower-case letters, digits, '-'")
    return fleet


_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?\s*(?:(\d+(?:\.\d+)?)s)?\s*"
                          r"(?:(\d+(?:\.\d+)?)ms)?\s*$")


#: Settings that are durations (``30s``, ``5m``, ``1h30m``, ``250ms`` or seconds).
DURATION_FIELDS = (
    "token_refresh_margin", "http_timeout", "node_status_update_frequency", "server_cache_max_age",
    "server_refresh_period",
    "node_monitor_period", "node_deletion_grace_period", "watch_timeout", "shutdown_timeout",
    "termination_grace_period", "leader_elect_lease_duration", "leader_elect_renew_deadline",
    "leader_elect_retry_period", "fleet_member_forget_after", "load_balancer_claim_settle",
)


class ConfigError(ValueError):
    """A setting is wrong. ``str()`` is one line naming the setting and what to do."""


def env_name(field: str) -> str:
    return "CLOUDSIGMA_" + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def parse_duration(value: Any) -> float:
    """``"5m"``, ``"1h30m"``, ``"10s"``, ``"250ms"`` or a number of seconds → seconds (finite, >= 0).

    Messages never repeat the value: a secret pasted into the wrong variable must not reach a log."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if text.startswith("-"):
                raise ValueError("is negative; durations must be >= 0") from None
            match = _DURATION_RE.match(text)
            if not text or not match or not any(match.groups()):
                raise ValueError("is not a duration; use e.g. 30s, 5m, 1h") from None
            h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
            seconds = h * 3600 + m * 60 + s + ms / 1000
    else:
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError("is not a finite duration; use e.g. 30s, 5m, 1h")
    if seconds < 0:
        raise ValueError("is negative; durations must be >= 0")
    return seconds


def _check_url_template(value: str, *, what: str) -> str:
    parsed = urlparse(value.replace("{region}", "region"))
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"is not an http(s) URL for the {what}")
    return value


class Settings(BaseSettings):
    """All settings of the CCM daemon and ``doctor``."""

    model_config = SettingsConfigDict(env_prefix="CLOUDSIGMA_", extra="ignore", validate_default=True,
                                      env_ignore_empty=True)

    # -- CloudSigma account and region (seed 000) --
    region: str = Field("", description="CloudSigma location, e.g. zrh, fra, next. Required.")
    user_email: str | None = Field(None, description="The cluster owner's CloudSigma email (the user to impersonate).")

    # -- impersonation (seed 000) --
    impersonation_enabled: bool = Field(False, description="Act as the user through impersonated tokens.")
    impersonation_strategy: str = Field(
        "keycloak-token-exchange",
        description="keycloak-token-exchange (RFC 8693) or cloudsigma-service-provider (CloudSigma's endpoint).",
    )
    oauth_url: str | None = Field(None, description="Keycloak base URL or realm issuer URL.")
    oauth_realm: str = Field("cloudsigma", description="Realm used when the OAuth URL is not a realm issuer.")
    client_id: str | None = Field(None, description="OAuth client id of the CCM's service account.")
    client_secret: SecretStr | None = Field(None, description="OAuth client secret (or CLOUDSIGMA_CLIENT_SECRET_FILE).")
    client_secret_file: Path | None = Field(None, description="File holding the client secret, re-read when it "
                                            "changes.")
    client_assertion_file: Path | None = Field(
        None, description="Secretless client authentication: a projected service-account token sent as an RFC 7523 "
        "client assertion instead of a client secret; re-read when the kubelet rotates it.")
    client_assertion_audience: str | None = Field(
        None, description="The one audience the projected token must carry; default: the realm issuer (what "
        "Keycloak expects).")
    client_private_key_file: Path | None = Field(
        None, description="private_key_jwt client authentication: a PEM RSA/EC private key whose public key is "
        "registered with the client, instead of a client secret.")
    token_issuer: str | None = Field(None, description="Issuer every impersonated token must come from (checked "
                                     "with its JWKS); default: the realm issuer of the OAuth URL.")
    impersonation_subject_claims: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["preferred_username", "email"],
        description="Token claims of which one must equal the user email (case-insensitive) for an impersonated "
        "token to be used (comma-separated).")
    token_audience: str | None = Field(None, description="Audience requested in the token exchange (API client).")
    uma_audience: str = Field("service_provider_api", description="UMA audience of the service-provider flow.")

    # -- legacy username/password --
    username: str | None = Field(None, description="CloudSigma username (email) for HTTP basic auth: the fallback.")
    password: SecretStr | None = Field(None, description="CloudSigma password (or CLOUDSIGMA_PASSWORD_FILE).")
    password_file: Path | None = Field(None, description="File holding the password, re-read when it changes.")

    # -- static bearer token --
    static_token: SecretStr | None = Field(None, description="A bearer token used as is (env CLOUDSIGMA_STATIC_TOKEN).")
    static_token_file: Path | None = Field(None, description="File with a bearer token, re-read when it changes.")
    static_token_impersonated: bool = Field(False, description="The static token is an impersonated token.")

    # -- credential chain --
    credential_chain: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Provider names in order (comma-separated). Default: impersonation strategy, static-token, "
        "password — each only when configured.",
    )
    allow_fallback_on_forbidden: bool = Field(
        False, description="Retry a 403 of an impersonated token with the next provider (hides ownership problems).")
    token_refresh_margin: float = Field(120.0, description="Refresh tokens this long before expiry (capped at 25% "
                                        "of the token's lifetime).")
    token_cache_size: int = Field(256, ge=1, description="Most tokens kept in the cache.")

    # -- CloudSigma API --
    api_url: str = Field("https://{region}.cloudsigma.com/api/2.0/",
                         description="API endpoint template used with username/password.")
    impersonation_api_url: str = Field("https://direct.{region}.cloudsigma.com/api/2.0/",
                                       description="API endpoint template used with impersonated tokens.")
    service_provider_url: str = Field("https://direct.{region}.cloudsigma.com/service_provider/api/v1/",
                                      description="CloudSigma service-provider API (impersonate endpoint).")
    http_timeout: float = Field(15.0, description="Timeout of one HTTP request to CloudSigma or the IdP.")
    api_page_size: int = Field(0, ge=0, description="Objects per list page; 0 asks for all in one response.")
    api_retry_attempts: int = Field(4, ge=1, le=20, description="Attempts per CloudSigma call (transient errors).")

    # -- tenant cluster and controllers --
    kubeconfig: Path | None = Field(None, description="Tenant kubeconfig (or KUBECONFIG); in-cluster if unset. "
                                    "Re-read when the file changes (a rotated Secret).")
    cluster_name: str = Field("", description="Name of the tenant cluster, for logs and events.")
    concurrent_node_syncs: int = Field(16, ge=1, le=256, description="Node reconcile workers (lookups come from "
                                       "the shared snapshot, so workers mostly wait on Kubernetes writes).")
    node_status_update_frequency: float = Field(300.0, description="Address re-sync period of initialized nodes.")
    server_cache_max_age: float = Field(10.0, description="Longest a server snapshot answers before a refresh.")
    server_refresh_period: float = Field(
        60.0, ge=0, description="How often the shared server snapshot is refreshed at rest; each refresh re-queues "
        "only the nodes whose server's addresses, cloud labels, host or running state changed (0: only on "
        "demand).")
    server_lookup: Literal["snapshot", "per-node"] = Field(
        "snapshot", description="snapshot: one shared listing for all nodes; per-node: one API call per node "
        "reconcile, as the upstream cloud-node-controller does (a reference mode for benchmarks).")
    node_monitor_period: float = Field(10.0, description="How often NotReady nodes are checked against the cloud.")
    node_deletion_enabled: bool = Field(True, description="Delete Nodes whose server is provably gone.")
    node_deletion_grace_period: float = Field(300.0, description="How long a node must be NotReady before deletion.")
    node_lookup_by_system_uuid: bool = Field(True, description="Match servers by status.nodeInfo.systemUUID too.")
    zone: str | None = Field(None, description="Zone label value; default: the region.")
    watch_timeout: float = Field(300.0, description="Server-side timeout of one node watch request.")
    shutdown_timeout: float = Field(20.0, description="Longest in-flight reconciles may take on SIGTERM.")
    csr_approval: Literal["off", "approve", "approve-or-deny"] = Field(
        "off", description="Kubelet-serving CSRs: off; approve those whose node, subject, usages, key and "
        "SANs check out against the cloud (others stay pending); approve-or-deny: deny the others. Needs "
        "deploy/tenant/csr-approval.")
    load_balancer: Literal["off", "metallb", "kube-vip"] = Field(
        "off", description="LoadBalancer Services: off; metallb or kube-vip: give each one a subscribed IP of the "
        "owner (claimed in the IP's meta) and tell that announcer (MetalLB L2 pool + Service annotation, or "
        "kube-vip's annotation). Needs deploy/tenant/load-balancer.")
    load_balancer_nic: Literal["require", "ensure"] = Field(
        "require", description="Nodes that can carry a load-balancer IP need a public NIC with ip_v4_conf.conf "
        "manual: require labels those (node.cloudsigma.com/load-balancer=true) and warns on the others; ensure "
        "also switches the NIC to manual (full-server PUT) and reports when the cloud ignored it.")
    load_balancer_metallb_namespace: str = Field(
        "metallb-system", description="Namespace of MetalLB, where its IPAddressPool and L2Advertisement go.")
    load_balancer_claim_settle: float = Field(
        2.0, gt=0, description="How long a new claim on an IP must stand before the IP is given to a Service (a "
        "listing taken this long after the claim was written must still show it).")
    token_broker: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Write the cluster owner's impersonated, verified token into Secrets of "
        "the tenant cluster for its own CloudSigma clients (the CSI driver): off (default); on: "
        f"{DEFAULT_TOKEN_BROKER_TARGET}; or namespace/secret targets (comma-separated). Needs "
        "deploy/tenant/token-broker.")
    token_broker_create_namespace: bool = Field(
        False, description="Let the token broker create a target's namespace when it is missing (needs "
        "deploy/tenant/token-broker-namespace).")
    termination_grace_period: float = Field(
        30.0, description="terminationGracePeriodSeconds of the pod: the shutdown timeout plus the event flush "
        "(2s), the lease release (3s) and the exit (2s) must fit in it; checked at start-up.")
    node_label_meta_keys: Annotated[list[str], NoDecode] = Field(
        ["pool", "cluster"], description="Server meta keys mirrored as node.cloudsigma.com/meta.<key> labels, kept "
        "in sync (comma-separated; key* matches by prefix; none: no meta labels).")
    node_label_tags: Annotated[list[str], NoDecode] = Field(
        [], description="Tag names mirrored as node.cloudsigma.com/tag.<name>=true labels, kept in sync "
        "(comma-separated; name* matches by prefix, * every tag; none, the default: no tag labels and no "
        "GET /tags/ call).")
    node_label_host_group: bool = Field(
        True, description="Label each node node.cloudsigma.com/host-group=<opaque id> shared by the nodes whose "
        "servers run on one physical host, for topologySpreadConstraints (one GET /servers/availability_groups/ "
        "per server snapshot).")

    # -- leader election (management cluster) --
    leader_elect: bool = Field(True, description="Use a Lease so only one replica reconciles.")
    leader_elect_kubeconfig: Path | None = Field(None, description="Management kubeconfig (leader election, "
                                                 "--cluster-ref, fleet mode); in-cluster if unset. Re-read when the "
                                                 "file changes.")
    leader_elect_resource_name: str = Field("cloudsigma-ccm", description="Lease name.")
    leader_elect_resource_namespace: str | None = Field(None, description="Lease namespace; default: pod namespace. "
                                                        "Fleet mode: where the member and tenant Leases live.")
    leader_elect_lease_duration: float = Field(15.0, description="Lease duration: how long a standby waits for a "
                                               "silent leader before it takes over (fleet mode: the same for each "
                                               "tenant's Lease and the member Leases).")
    leader_elect_renew_deadline: float = Field(10.0, description="Renew deadline: a leader whose last successful "
                                               "renewal is this old stops writing and exits 1.")
    leader_elect_retry_period: float = Field(2.0, description="Retry period of renewals and acquisition attempts.")
    leader_elect_identity: str | None = Field(None, description="Holder identity; default: hostname_uuid.")

    # -- mode: one tenant (the default) or a fleet serving every tenant of a management cluster --
    mode: Literal["single", "fleet"] = Field(
        "single", description="single: serve one tenant cluster (region, user email and kubeconfig from these "
        "settings, or --cluster-ref); fleet: serve every CloudSigmaCluster of the management cluster, sharded over "
        "the replicas by Leases (see Fleet mode).")
    cluster_ref: str | None = Field(
        None, description="Single mode: namespace/name of the tenant's CloudSigmaCluster in the management cluster; "
        "user email and region are read from it and followed while running (instead of CLOUDSIGMA_USER_EMAIL and "
        "CLOUDSIGMA_REGION).")
    fleet_name: str = Field("cloudsigma-ccm", description="Fleet mode: name of the fleet (label of its Leases, "
                            "prefix of their names); fleets sharing a namespace need different names.")
    fleet_tenant_namespace: str | None = Field(
        None, description="Fleet mode: serve the CloudSigmaClusters of this namespace only (a Role there suffices); "
        "default: all namespaces.")
    fleet_namespace_selector: str | None = Field(
        None, description="Fleet mode: label selector on Namespaces; only their CloudSigmaClusters are served (needs "
        "list/watch on namespaces, deploy/fleet/namespace-selector).")
    fleet_cluster_selector: str | None = Field(
        None, description="Fleet mode: label selector on CloudSigmaClusters; only matching ones are served.")
    fleet_secret_selector: str = Field(
        "cluster.x-k8s.io/cluster-name", description="Fleet mode: label selector of the kubeconfig Secrets to watch "
        "(Cluster API labels them); empty: every Secret is listed (and all but *-kubeconfig dropped).")
    fleet_member_forget_after: float = Field(
        3600.0, description="Fleet mode: member Leases of replicas silent this long are deleted.")
    fleet_concurrent_node_syncs: int = Field(
        4, ge=1, le=256, description="Fleet mode: node reconcile workers per tenant (each tenant has its own queue, "
        "backoff and workers, so one tenant's trouble never delays another's nodes).")
    cloudsigma_requests_per_minute: int = Field(
        10000, ge=0, description="Fleet mode: CloudSigma requests per minute per region, shared fairly by the "
        "tenants (CloudSigma documents 10,000 GET/POST/PUT per minute); 0: no limit.")

    # -- operations --
    metrics_bind_address: str = Field("0.0.0.0:10258", description="Address of /healthz, /readyz and /metrics "
                                      "(empty disables).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["auto", "json", "console"] = Field("auto", description="json, console, or auto (tty).")

    @field_validator(*DURATION_FIELDS, mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("credential_chain", mode="before")
    @classmethod
    def _chain(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError:
                    raise ValueError("is not a JSON list; write it as a comma-separated list of provider "
                                     "names") from None
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, list):
            from credentials.registry import known_providers

            known = known_providers()
            unknown = [str(i) for i, name in enumerate(value, 1) if name not in known]
            if unknown:
                raise ValueError(f"names an unknown provider (item {', '.join(unknown)} of the list); "
                                 f"known providers: {', '.join(sorted(known))}")
        return value

    @field_validator("node_label_meta_keys", "node_label_tags", mode="before")
    @classmethod
    def _label_patterns(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            value = [] if text.lower() in ("", "none") else [p.strip() for p in text.split(",") if p.strip()]
        if isinstance(value, list):
            for pattern in value:
                if not isinstance(pattern, str) or not pattern:
                    raise ValueError("must list names (comma-separated), e.g. pool,cluster")
                if "*" in pattern[:-1]:
                    raise ValueError(f"has {pattern!r}: a '*' may only end a name (it matches by prefix)")
        return value

    @field_validator("token_broker", mode="before")
    @classmethod
    def _token_broker(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.lower() in ("", "off", "false", "none"):
                return []
            if text.lower() in ("on", "true"):
                return [DEFAULT_TOKEN_BROKER_TARGET]
            value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, list):
            for target in value:
                namespace, _, name = str(target).partition("/")
                if not (_DNS_LABEL.fullmatch(namespace) and _DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 253):
                    raise ValueError("must be on, off, or namespace/secret targets separated by commas, e.g. "
                                     f"{DEFAULT_TOKEN_BROKER_TARGET}")
            if len(set(value)) != len(value):
                raise ValueError("names a target twice")
        return value

    @field_validator("impersonation_subject_claims", mode="before")
    @classmethod
    def _subject_claims(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            if not value:
                raise ValueError("must name at least one claim, e.g. preferred_username,email")
            bad = [v for v in value if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", v)]
            if bad:
                raise ValueError("must be claim names separated by commas, e.g. preferred_username,email")
        return value

    @field_validator("token_issuer")
    @classmethod
    def _token_issuer(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_url_template(value.rstrip("/"), what="token issuer")

    @field_validator("api_url", "impersonation_api_url", "service_provider_url")
    @classmethod
    def _url_template(cls, value: str) -> str:
        return _check_url_template(value, what="CloudSigma API")

    @field_validator("oauth_url")
    @classmethod
    def _oauth_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_url_template(value.rstrip("/"), what="OAuth server")

    @field_validator("user_email", "username")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value and ("@" not in value or " " in value):
            raise ValueError("is not an email address")
        return value or None

    @field_validator("leader_elect_resource_name")
    @classmethod
    def _lease_name(cls, value: str) -> str:
        dns_subdomain = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
        if not re.fullmatch(dns_subdomain, value) or len(value) > 253:
            raise ValueError("is not a valid Lease name (lower-case letters, digits, '-' and '.')")
        return value

    @field_validator("impersonation_strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        if value not in IMPERSONATION_STRATEGIES:
            raise ValueError(f"names an unknown strategy; use one of {', '.join(IMPERSONATION_STRATEGIES)}")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> Settings:
        if (self.password_file is not None and not self.username and self.password is None
                and not self.password_file.exists()):
            # deploy/ mounts the optional legacy Secret's password: without that Secret (and so without a
            # username) the file is absent, and the fallback is simply not configured.
            self.password_file = None
        # Secret files are read by the providers (and re-read on rotation); here they must be usable at start.
        for name in ("client_secret_file", "password_file", "static_token_file", "client_assertion_file",
                     "client_private_key_file"):
            _check_secret_file(getattr(self, name), name)
        fleet = self.mode == "fleet"
        if fleet:
            self._check_fleet()
        elif self.kubeconfig is None and os.environ.get("KUBECONFIG"):
            self.kubeconfig = Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
        from_cluster = fleet or self.cluster_ref is not None  # region and owner come from CloudSigmaClusters
        if self.cluster_ref is not None:
            self._check_cluster_ref()
        if not from_cluster and not self.region:
            raise _cross("region", "is required: set it to the CloudSigma location of the cluster (e.g. zrh), or "
                         "--cluster-ref to read it from the CloudSigmaCluster")
        if self.region and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", self.region):
            raise _cross("region", "is not a location id (lower-case letters, digits, '-')")
        if self.client_assertion_audience and self.client_assertion_file is None:
            raise _cross("client_assertion_file", "is missing: CLOUDSIGMA_CLIENT_ASSERTION_AUDIENCE is set, but not "
                         "the file holding the projected service-account token")
        if self.impersonation_enabled:
            if not self.user_email and not from_cluster:
                raise _cross("user_email", "is required when impersonation is enabled: set the cluster owner's email "
                             "(or --cluster-ref to read it from the CloudSigmaCluster)")
            if not self.oauth_url:
                raise _cross("oauth_url", "is required when impersonation is enabled: set the Keycloak URL")
            if not self.client_id:
                raise _cross("client_id", "is required when impersonation is enabled")
            has_secret = self.client_secret is not None and bool(self.client_secret.get_secret_value())
            methods = [m for m, on in (("a client secret", has_secret or self.client_secret_file is not None),
                                       ("CLOUDSIGMA_CLIENT_ASSERTION_FILE", self.client_assertion_file is not None),
                                       ("CLOUDSIGMA_CLIENT_PRIVATE_KEY_FILE", self.client_private_key_file is not None))
                       if on]
            if not methods:
                raise _cross("client_secret", "is required when impersonation is enabled: set it (or "
                             "CLOUDSIGMA_CLIENT_SECRET_FILE), or CLOUDSIGMA_CLIENT_ASSERTION_FILE for secretless "
                             "authentication with a projected service-account token, or "
                             "CLOUDSIGMA_CLIENT_PRIVATE_KEY_FILE for private_key_jwt")
            if len(methods) > 1:
                raise _cross("client_assertion_file" if self.client_assertion_file is not None
                             else "client_private_key_file",
                             f"cannot be combined with {methods[0]}: configure one way for the client to "
                             "authenticate")
        has_password_value = self.password is not None and bool(self.password.get_secret_value())
        has_password = bool(self.username and (has_password_value or self.password_file is not None))
        if bool(self.username) != (self.password is not None or self.password_file is not None):
            raise _cross("password" if self.username else "username",
                         "username and password must be set together")
        has_static = self.static_token is not None or self.static_token_file is not None
        if not self.credential_chain:
            chain: list[str] = []
            if self.impersonation_enabled:
                chain.append(self.impersonation_strategy)
            if has_static:
                chain.append("static-token")
            if has_password:
                chain.append("password")
            self.credential_chain = chain
        if fleet:
            one_user = [name for name in self.credential_chain if name in ("password", "static-token")]
            if one_user or not self.impersonation_enabled:
                raise _cross("credential_chain" if one_user else "impersonation_enabled",
                             "fleet mode needs impersonation (CLOUDSIGMA_IMPERSONATION_ENABLED=true with the OAuth "
                             "client): a password or static token acts as one CloudSigma user for every tenant"
                             + (f", so the chain must not list {', '.join(one_user)}" if one_user else ""))
        if not self.credential_chain:
            raise _cross("impersonation_enabled", "no credentials configured: enable impersonation "
                         "(with --oauth-url, --client-id, --client-secret, --user-email) or set "
                         "CLOUDSIGMA_USERNAME/CLOUDSIGMA_PASSWORD")
        if len(set(self.credential_chain)) != len(self.credential_chain):
            raise _cross("credential_chain", "lists a provider twice")
        if self.token_broker and (not self.impersonation_enabled
                                  or self.impersonation_strategy not in self.credential_chain):
            raise _cross("token_broker", "needs impersonation (CLOUDSIGMA_IMPERSONATION_ENABLED=true with the OAuth "
                         "client, and its strategy in the credential chain): it only ever writes an impersonated, "
                         "verified token for the cluster's owner")
        if not self.user_email and not from_cluster:
            # Password-only deployments act as the basic-auth user.
            self.user_email = self.username
        if self.load_balancer != "off" and not fleet and not self.cluster_name:
            # IP claims are keyed by the cluster name (fleet mode: the tenant's namespace/name); an empty one never
            # reads back as a claim, so every Service would lose its IP claim forever.
            raise _cross("cluster_name", "is required with --load-balancer: set it to a name unique among the "
                         "owner's clusters (IP claims are keyed by it)")
        if self.kubeconfig is not None and not (self.kubeconfig.is_file() and os.access(self.kubeconfig, os.R_OK)):
            raise _cross("kubeconfig", f"{self.kubeconfig} is not a readable file: mount the tenant kubeconfig there")
        if self.leader_elect_renew_deadline >= self.leader_elect_lease_duration:
            raise _cross("leader_elect_renew_deadline", "must be shorter than --leader-elect-lease-duration")
        if self.leader_elect_retry_period >= self.leader_elect_renew_deadline:
            raise _cross("leader_elect_retry_period", "must be shorter than --leader-elect-renew-deadline")
        for name in ("http_timeout", "server_cache_max_age", "node_monitor_period", "watch_timeout"):
            if getattr(self, name) <= 0:
                raise _cross(name, "must be greater than zero")
        budget = ShutdownBudget(drain=self.shutdown_timeout)
        if not budget.fits(self.termination_grace_period):
            raise _cross("shutdown_timeout", f"does not fit the pod's grace period: it plus {budget.overhead:g}s "
                         "(event flush, lease release, exit) must be at most --termination-grace-period; "
                         "shorten it or raise terminationGracePeriodSeconds and CLOUDSIGMA_TERMINATION_GRACE_PERIOD")
        return self

    def _check_fleet(self) -> None:
        """Fleet mode takes each tenant's region, owner and kubeconfig from the management cluster: a single-tenant
        setting would be silently ignored, so it is refused."""
        for name in ("region", "user_email", "kubeconfig", "cluster_ref", "cluster_name", "username"):
            if getattr(self, name):
                raise _cross(name, "is a single-tenant setting: fleet mode reads each tenant's from its "
                             "CloudSigmaCluster and kubeconfig Secret; unset it")
        if self.password is not None or self.password_file is not None or self.static_token is not None \
                or self.static_token_file is not None:
            field = "password" if self.password is not None or self.password_file is not None else "static_token"
            raise _cross(field, "is a single-tenant setting: in fleet mode one password or token would act as one "
                         "CloudSigma user for every tenant; unset it")
        if not self.leader_elect:
            raise _cross("leader_elect", "must be true in fleet mode: each tenant is guarded by its own Lease")
        try:
            check_fleet_name(self.fleet_name)
        except ValueError:
            raise _cross("fleet_name", "is not usable: use at most 32 lower-case letters, digits and '-'") from None
        if self.fleet_tenant_namespace is not None and not _DNS_LABEL.fullmatch(self.fleet_tenant_namespace):
            raise _cross("fleet_tenant_namespace", "is not a namespace name")

    def _check_cluster_ref(self) -> None:
        ref = self.cluster_ref or ""
        namespace, _, name = ref.partition("/")
        if not (_DNS_LABEL.fullmatch(namespace) and _DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 253):
            raise _cross("cluster_ref", "must be namespace/name of a CloudSigmaCluster")
        for field in ("region", "user_email"):
            if getattr(self, field):
                raise _cross(field, "is read from the CloudSigmaCluster named by --cluster-ref: unset it (or unset "
                             "CLOUDSIGMA_CLUSTER_REF)")

    @property
    def cluster_ref_parts(self) -> tuple[str, str] | None:
        """``(namespace, name)`` of ``--cluster-ref``, or None."""
        if self.cluster_ref is None:
            return None
        namespace, _, name = self.cluster_ref.partition("/")
        return namespace, name

    @property
    def effective_zone(self) -> str:
        return self.zone or self.region


class _CrossFieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _cross(field: str, message: str) -> _CrossFieldError:
    return _CrossFieldError(field, message)


def _check_secret_file(path: Path | None, field: str) -> None:
    """A secret file must be readable and not empty at start-up (later the providers keep its last good content)."""
    if path is None:
        return
    try:
        text = path.read_text()
    except OSError as exc:
        raise _cross(field, f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise _cross(field, f"{path} is not UTF-8 text") from None
    if not text.strip():
        raise _cross(field, f"{path} is empty")


def secrets_of(settings: Settings) -> list[str]:
    """The secret values configured directly (the log redactor hides them from the first line on)."""
    values = [settings.client_secret, settings.password, settings.static_token]
    return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the setting (env var and flag) and what is wrong."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    field = loc[0] if loc else ""
    message = str(err.get("msg", "invalid value"))
    if isinstance(inner, _CrossFieldError):
        field, message = inner.field, str(inner)
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    rejected = err.get("input")
    if isinstance(rejected, str) and rejected.strip() and rejected in message:
        message = message.replace(rejected, "(the value)")  # never echo what was rejected: it may be a secret
    if not field:
        return f"configuration error: {message}"
    return f"configuration error: {env_name(field)} / {flag_name(field)} {message}"


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Build settings from the environment plus explicit overrides (flags). Raises :class:`ConfigError`."""
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except _CrossFieldError as exc:
        raise ConfigError(f"configuration error: {env_name(exc.field)} / {flag_name(exc.field)} {exc}") from None
