"""The emulator's world: users, OAuth clients, servers, IPs, fault settings, request log and counters.

Everything is plain data that tests may read and change while the emulator is serving. Server objects are
kept as the full JSON dicts the API returns (the dict :meth:`EmulatorState.add_server` returns is the live
object); ``runtime`` parts are recomputed from ``status`` and the DHCP leases whenever those change.
"""

from __future__ import annotations

import collections
import copy
import datetime as dt
import ipaddress
import json
import re
import time
import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .auth import SigningKey

API_PREFIX = "/api/2.0"
SERVER_STATUSES = frozenset({"stopped", "starting", "running", "stopping", "paused", "unavailable"})
#: Statuses in which a server has a (non-null) ``runtime``.
RUNTIME_STATUSES = frozenset({"running", "paused", "stopping"})

NicKind = Literal["dhcp", "static", "manual", "vlan", "none"]
IpConf = Literal["dhcp", "static", "manual"]
FaultKind = Literal["error", "rate_limit", "hang", "malformed", "reset", "page_error", "delay", "proxy_html"]
FAULT_KINDS: frozenset[str] = frozenset({"error", "rate_limit", "hang", "malformed", "reset", "page_error", "delay",
                                         "proxy_html"})
#: Fault kinds answered by something in front of CloudSigma: no ``X-REQUEST-ID`` on the response.
NOT_FROM_CLOUDSIGMA: frozenset[str] = frozenset({"proxy_html"})

_SA_NAMESPACE = uuidlib.UUID("6f1c2a4e-8d0b-4d39-9a59-7c3f0e8b1a11")


_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def normalise_path(path: str) -> str:
    """Counter key path: ``/api/2.0`` stripped, uuids as ``{uuid}``, addresses under ``/ips/`` as ``{ip}``."""
    if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
        path = path[len(API_PREFIX):] or "/"
    segments = path.split("/")
    out: list[str] = []
    for i, seg in enumerate(segments):
        if _UUID_RE.match(seg):
            out.append("{uuid}")
            continue
        if i > 0 and segments[i - 1] == "ips" and seg:
            try:
                ipaddress.ip_address(seg)
            except ValueError:
                pass
            else:
                out.append("{ip}")
                continue
        out.append(seg)
    return "/".join(out)


def ip_ref(address: str) -> dict[str, str]:
    return {"resource_uri": f"{API_PREFIX}/ips/{address}/", "uuid": address}


def user_ref(user_uuid: str) -> dict[str, str]:
    return {"resource_uri": f"{API_PREFIX}/user/{user_uuid}/", "uuid": user_uuid}


def server_ref(server_uuid: str) -> dict[str, str]:
    return {"resource_uri": f"{API_PREFIX}/servers/{server_uuid}/", "uuid": server_uuid}


def _tag_ref(tag_uuid: str) -> dict[str, str]:
    return {"resource_uri": f"{API_PREFIX}/tags/{tag_uuid}/", "uuid": tag_uuid}


def _zero_io() -> dict[str, int]:
    return {"bytes_recv": 0, "bytes_sent": 0, "packets_recv": 0, "packets_sent": 0}


# --------------------------------------------------------------------------------------------- entities


@dataclass
class User:
    email: str
    password: str
    uuid: str
    #: Keycloak username (``preferred_username``); token exchange looks ``requested_subject`` up by this or uuid.
    username: str

    def ref(self) -> dict[str, str]:
        return user_ref(self.uuid)


@dataclass
class Client:
    """An OAuth client registered in the emulator's identity provider."""

    client_id: str
    secret: str
    #: May get the ``service_provider_api`` RPT and call the impersonate endpoint.
    may_impersonate: bool = True
    #: May use legacy RFC 8693 token exchange (``requested_subject``).
    may_exchange: bool = True
    #: Lower-cased emails this client may impersonate/exchange to; ``None`` means anybody.
    allowed_users: set[str] | None = None
    #: When set, the client's own (client_credentials) tokens carry this email, so they act as that user.
    service_account_email: str | None = None

    @property
    def service_account_uuid(self) -> str:
        return str(uuidlib.uuid5(_SA_NAMESPACE, self.client_id))

    def may_act_for(self, email: str) -> bool:
        return self.allowed_users is None or email.lower() in self.allowed_users


@dataclass
class NicSpec:
    """What a NIC builder returns; :meth:`EmulatorState.add_server` turns it into the API's NIC dict.

    ``ip``/``ip_v6`` may be ``"auto"`` to take the next address from the emulator's pool.
    """

    kind: NicKind
    ip: str | None = None
    ip_v6: str | None = None
    ip_v6_conf: IpConf | None = None
    vlan: str | None = None
    mac: str | None = None
    model: str = "virtio"


def public_dhcp_nic(ip: str | None = None, *, ip_v6: str | None = None, ip_v6_conf: IpConf | None = None,
                    mac: str | None = None, model: str = "virtio") -> NicSpec:
    """A public NIC with ``conf: dhcp``; ``ip`` is the current lease, only visible in runtime while running."""
    return NicSpec("dhcp", ip=ip, ip_v6=ip_v6, ip_v6_conf=ip_v6_conf or ("dhcp" if ip_v6 else None), mac=mac,
                   model=model)


def public_static_nic(ip: str, *, ip_v6: str | None = None, ip_v6_conf: IpConf | None = None,
                      mac: str | None = None, model: str = "virtio") -> NicSpec:
    """A public NIC with ``conf: static``; the IP is in ``ip_v4_conf.ip.uuid`` (and owned by the server's owner)."""
    return NicSpec("static", ip=ip, ip_v6=ip_v6, ip_v6_conf=ip_v6_conf or ("static" if ip_v6 else None), mac=mac,
                   model=model)


def public_manual_nic(*, ip_v6: str | None = None, ip_v6_conf: IpConf | None = None, mac: str | None = None,
                      model: str = "virtio") -> NicSpec:
    """A public NIC with ``conf: manual``: the API knows no IPv4 address for it."""
    return NicSpec("manual", ip_v6=ip_v6, ip_v6_conf=ip_v6_conf or ("dhcp" if ip_v6 else None), mac=mac, model=model)


def public_ipv6_nic(ip_v6: str | None, *, conf: IpConf = "static", mac: str | None = None,
                    model: str = "virtio") -> NicSpec:
    """A public NIC with only ``ip_v6_conf`` (``ip_v4_conf`` is null)."""
    return NicSpec("none", ip_v6=ip_v6, ip_v6_conf=conf, mac=mac, model=model)


def private_vlan_nic(vlan_uuid: str, *, mac: str | None = None, model: str = "virtio") -> NicSpec:
    """A private NIC on a VLAN: ``ip_v4_conf`` null; the API never reports its IPs."""
    return NicSpec("vlan", vlan=vlan_uuid, mac=mac, model=model)


@dataclass
class IpRecord:
    """An IP known to the API. ``dynamic`` ones are DHCP leases, listed only while attached to a running server."""

    uuid: str
    owner_uuid: str
    dynamic: bool = False
    netmask: int = 24
    gateway: str | None = None
    nameservers: list[str] = field(default_factory=lambda: ["185.12.5.2", "185.12.5.3"])
    meta: dict[str, Any] = field(default_factory=dict)
    tags: list[dict[str, str]] = field(default_factory=list)

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.uuid).version


@dataclass
class Fault:
    """One injected fault. Matches requests by method / path prefix (full ``/api/2.0/...`` or API-relative
    ``/servers/...``) and, for ``page_error``, by the ``offset`` query parameter. ``count`` is how many matching
    requests it affects (``None``: all of them until removed)."""

    kind: FaultKind
    count: int | None = 1
    path_prefix: str | None = None
    method: str | None = None
    #: ``error``/``page_error``/``proxy_html``: the HTTP status (500, 503, 404...). ``rate_limit`` always answers 429.
    status: int = 500
    #: Error body ``error_type``; default ``backend`` (``concurrency`` for 503, ``ratelimit`` for 429).
    error_type: str | None = None
    error_message: str | None = None
    #: ``rate_limit``: seconds for the ``Retry-After`` header.
    retry_after: int = 1
    #: ``page_error``: the list offset that fails (``offset`` query parameter; absent counts as 0).
    offset: int | None = None
    #: ``delay``: extra latency in ms for matching requests.
    delay_ms: float = 0.0
    #: How many requests this fault has hit so far.
    hits: int = 0
    id: str = field(default_factory=lambda: uuidlib.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.hits >= self.count

    def matches(self, method: str, path: str, query: Mapping[str, str], *, is_list: bool = True) -> bool:
        if self.exhausted:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        if self.path_prefix:
            rel = path[len(API_PREFIX):] if path.startswith(API_PREFIX + "/") else None
            if not (path.startswith(self.path_prefix) or (rel is not None and rel.startswith(self.path_prefix))):
                return False
        if self.kind == "page_error":
            if not is_list:
                return False
            try:
                offset = int(query.get("offset", "0") or "0")
            except ValueError:
                return False
            if offset != (self.offset or 0):
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FaultSettings:
    #: Latency added to every request (except ``/_emulator/*``), in milliseconds.
    latency_ms: float = 0.0
    rules: list[Fault] = field(default_factory=list)
    #: A hung request is answered with 504 after this long if the client is still waiting.
    hang_max_seconds: float = 300.0

    def add(self, fault: Fault) -> Fault:
        self.rules.append(fault)
        return fault

    def clear(self) -> None:
        self.rules.clear()
        self.latency_ms = 0.0

    def take(self, method: str, path: str, query: Mapping[str, str], *, is_list: bool = True) -> list[Fault]:
        """The faults that apply to this request (``delay`` ones first, then at most one answering fault);
        their hit counters are advanced and exhausted ones removed."""
        chosen: list[Fault] = []
        answering: Fault | None = None
        for fault in self.rules:
            if not fault.matches(method, path, query, is_list=is_list):
                continue
            if fault.kind == "delay":
                chosen.append(fault)
            elif answering is None:
                answering = fault
        if answering is not None:
            chosen.append(answering)
        for fault in chosen:
            fault.hits += 1
        self.rules = [f for f in self.rules if not f.exhausted]
        return chosen


@dataclass
class RequestRecord:
    method: str
    path: str
    query: str
    #: Normalised endpoint, the counter key (``GET /servers/{uuid}/``).
    endpoint: str
    request_id: str
    status: int | None = None
    user: str | None = None
    auth_kind: str | None = None
    token_source: str | None = None
    token_azp: str | None = None
    token_sub: str | None = None
    #: Kind of the fault applied, if any (``error``, ``hang``, ``reset``...).
    fault: str | None = None
    started_at: float = 0.0
    duration_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- state


@dataclass
class EmulatorState:
    users: dict[str, User] = field(default_factory=dict)  # lower-cased email -> user
    clients: dict[str, Client] = field(default_factory=dict)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # uuid -> full server object (live)
    ips: dict[str, IpRecord] = field(default_factory=dict, repr=False)
    #: DHCP leases: (server uuid, mac) -> (ipv4, ipv6); shown in runtime only while the server has one.
    leases: dict[tuple[str, str], tuple[str | None, str | None]] = field(default_factory=dict, repr=False)
    tags: dict[str, str] = field(default_factory=dict)  # tag uuid -> name
    #: tag uuid -> owner's user uuid (None: a tag every user may see, a test convenience).
    tag_owners: dict[str, str | None] = field(default_factory=dict)
    #: server uuid -> the physical compute host it runs on (never in an API object; see availability groups).
    hosts: dict[str, str] = field(default_factory=dict, repr=False)

    faults: FaultSettings = field(default_factory=FaultSettings)
    counters: collections.Counter[str] = field(default_factory=collections.Counter, repr=False)
    requests: list[RequestRecord] = field(default_factory=list, repr=False)
    max_log: int = 100_000

    # API behaviour
    default_limit: int = 20
    #: ``id`` of the single location ``/locations/`` lists (its ``api_endpoint`` is the emulator itself).
    location_id: str = "emu"
    #: Errors as one object ``{"error_type", "error_message"}`` (the incident report's shape) instead of a list.
    single_object_errors: bool = False
    #: List DHCP-leased IPs in ``/ips/`` (with their ``server``) while the server is running.
    dhcp_ips_in_ip_list: bool = True
    #: Render runtime ``ip_v6`` as a plain string (the schema says string) instead of an ``{uuid, resource_uri}``.
    ipv6_runtime_as_string: bool = False
    #: ``GET /servers/availability_groups/``: one inner array per running server (the docs' example lists the
    #: group of two servers twice), or one per host (False).
    availability_groups_per_server: bool = True
    #: ``PUT /servers/{uuid}/`` on a running server: ``"ignore"`` every change but ``name``, ``meta`` and ``tags``
    #: (servers.rst: "all other changes to the definition of a running server will be ignored"), or ``"apply"``
    #: them, NICs included (what the kube-dc project reports seeing when it switches a running server's NIC).
    running_server_changes: Literal["ignore", "apply"] = "ignore"

    # identity
    signing_key: SigningKey = field(default_factory=SigningKey.shared, repr=False)
    token_lifetime: int = 300
    #: Lifetime of impersonated tokens (default: ``token_lifetime``).
    impersonation_lifetime: int | None = None
    #: Whether the impersonate endpoint includes ``expires_in`` (kube-dc assumes 15 min without it).
    impersonate_include_expires_in: bool = True
    #: Claims tried, in order, to map a bearer token to a user (matched against email, then username).
    user_claims: list[str] = field(default_factory=lambda: ["email", "preferred_username"])
    realms: set[str] = field(default_factory=lambda: {"cloudsigma"})
    uma_audiences: set[str] = field(default_factory=lambda: {"service_provider_api"})
    #: ``legacy`` (V1: ``requested_subject`` works) or ``standard`` (Keycloak 26.2+ V2: it is rejected).
    token_exchange_mode: Literal["legacy", "standard"] = "legacy"
    #: External issuer's JWKS (``{issuer}/protocol/openid-connect/certs``) and, optionally, its expected ``iss``.
    jwks_url: str | None = None
    external_issuer: str | None = None
    jwks_refetch_interval: float = 0.0
    clock_leeway: float = 0.0
    #: Misbehaviour to inject: impersonating (exchange or service-provider) the key email hands out a token for the
    #: value email instead — an identity provider answering for the wrong user (lower-cased emails).
    impersonation_substitutes: dict[str, str] = field(default_factory=dict)
    #: Added to ``time.time()`` for token issuance/expiry (see :meth:`advance_time`).
    time_offset: float = 0.0

    _seq: int = 0
    _ip_seq: int = 0

    # ----------------------------------------------------------------------------------------- basics

    def now(self) -> float:
        return time.time() + self.time_offset

    def advance_time(self, seconds: float) -> None:
        """Move the emulator's token clock forward (tokens expire sooner from its point of view)."""
        self.time_offset += seconds

    def rotate_signing_key(self) -> SigningKey:
        """A freshly generated signing key: every token issued so far stops verifying (401)."""
        self.signing_key = SigningKey.generate()
        return self.signing_key

    def _next_mac(self) -> str:
        self._seq += 1
        n = self._seq
        return "22:" + ":".join(f"{(n >> shift) & 0xFF:02x}" for shift in (32, 24, 16, 8, 0))

    def allocate_ip(self, version: int = 4) -> str:
        """Next free address of the emulator's public pool (185.212.0.0/16, 2a02:1338::/64)."""
        while True:
            self._ip_seq += 1
            n = self._ip_seq
            addr = (f"185.212.{(n // 250) % 256}.{n % 250 + 2}" if version == 4
                    else str(ipaddress.IPv6Address("2a02:1338::") + n))
            if addr not in self.ips:
                return addr

    # ----------------------------------------------------------------------------------------- users & clients

    def add_user(self, email: str, password: str = "password", uuid: str | None = None,
                 username: str | None = None) -> User:
        user = User(email=email, password=password, uuid=uuid or str(uuidlib.uuid4()), username=username or email)
        self.users[email.lower()] = user
        return user

    def get_user(self, email: str) -> User | None:
        return self.users.get(email.lower())

    def another_location(self, location_id: str) -> EmulatorState:
        """A fresh state for another CloudSigma location in which the same people have accounts (same email and
        password) but no servers. Each location is a separate cloud with its own API endpoint and its own user
        accounts, so the users get new uuids; serve it with a second :class:`EmulatorServer`."""
        other = EmulatorState(location_id=location_id)
        for user in self.users.values():
            other.add_user(user.email, user.password, username=user.username)
        return other

    def user_by_uuid(self, user_uuid: str) -> User | None:
        return next((u for u in self.users.values() if u.uuid == user_uuid), None)

    def user_by_username(self, username: str) -> User | None:
        low = username.lower()
        return next((u for u in self.users.values() if u.username.lower() == low), None)

    def _require_user(self, email: str) -> User:
        user = self.get_user(email)
        if user is None:
            raise KeyError(f"no emulator user {email!r}; add_user() first")
        return user

    def user_for_claims(self, claims: Mapping[str, Any]) -> User | None:
        """Map token claims to a user: each of ``user_claims`` in order, matched by email then username."""
        for claim in self.user_claims:
            value = claims.get(claim)
            if not isinstance(value, str) or not value:
                continue
            user = self.get_user(value) or self.user_by_username(value)
            if claim == "sub" and user is None:
                user = self.user_by_uuid(value)
            if user is not None:
                return user
        return None

    def add_client(self, client_id: str, secret: str, may_impersonate: bool = True, *,
                   may_exchange: bool | None = None, allowed_users: Iterable[str] | None = None,
                   service_account_email: str | None = None) -> Client:
        client = Client(client_id=client_id, secret=secret, may_impersonate=may_impersonate,
                        may_exchange=may_impersonate if may_exchange is None else may_exchange,
                        allowed_users=None if allowed_users is None else {e.lower() for e in allowed_users},
                        service_account_email=service_account_email)
        self.clients[client_id] = client
        return client

    # ----------------------------------------------------------------------------------------- tags

    def add_tag(self, name: str, uuid: str | None = None, *, owner: str | None = None) -> str:
        """Create a tag (``owner``: the email of the user owning it; None: visible to every user)."""
        tag_uuid = uuid or str(uuidlib.uuid4())
        self.tags[tag_uuid] = name
        self.tag_owners[tag_uuid] = self._require_user(owner).uuid if owner else None
        return tag_uuid

    def rename_tag(self, tag_uuid: str, name: str) -> None:
        if tag_uuid not in self.tags:
            raise KeyError(f"no tag {tag_uuid}")
        self.tags[tag_uuid] = name

    def tags_visible_to(self, user_uuid: str) -> list[str]:
        """Uuids of the tags ``/tags/`` lists for a user (owned by them, or owner-less)."""
        return [t for t in self.tags if self.tag_owners.get(t) in (None, user_uuid)]

    def tag_resources(self, tag_uuid: str, user_uuid: str) -> list[dict[str, Any]]:
        """The tag's ``resources`` as the API renders them: the user's servers and IPs carrying it."""
        out: list[dict[str, Any]] = []
        for srv in self.servers.values():
            if srv["owner"]["uuid"] == user_uuid and any(t.get("uuid") == tag_uuid for t in srv.get("tags", [])):
                out.append({"owner": user_ref(user_uuid), "res_type": "servers",
                            "resource_uri": srv["resource_uri"], "uuid": srv["uuid"]})
        for rec in self.ips.values():
            if rec.owner_uuid == user_uuid and any(t.get("uuid") == tag_uuid for t in rec.tags):
                out.append({"owner": user_ref(user_uuid), "res_type": "ips",
                            "resource_uri": f"{API_PREFIX}/ips/{rec.uuid}/", "uuid": rec.uuid})
        return out

    def set_server_tags(self, server_uuid: str, tag_uuids: Sequence[str]) -> dict[str, Any]:
        """Replace a server's tags (as ``PUT /servers/{uuid}/`` with a ``tags`` list of uuids does, running or not);
        the server object shows references ``{uuid, resource_uri}``."""
        unknown = [t for t in tag_uuids if t not in self.tags]
        if unknown:
            raise ValueError(f"unknown tag(s) {unknown}")
        srv = self.servers[server_uuid]
        srv["tags"] = [_tag_ref(t) for t in dict.fromkeys(tag_uuids)]
        return srv

    def set_server_meta(self, server_uuid: str, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Replace a server's whole ``meta`` (an update never merges): keys at most 32 characters, string values."""
        _check_meta(meta)
        srv = self.servers[server_uuid]
        srv["meta"] = dict(meta)
        return srv

    def update_server(self, server_uuid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /servers/{uuid}/`` with a server definition: ``name``, ``meta`` and ``tags`` always; ``cpu``,
        ``mem``, ``smp`` and the NICs' IP configuration only while the server is not running (unless
        :attr:`running_server_changes` is ``"apply"``). Read-only fields in the body are ignored. A NIC is matched
        to the server's by ``mac``; only its ``ip_v4_conf``/``ip_v6_conf`` change (``manual``/``dhcp`` drop the
        address, ``static`` needs one the owner holds)."""
        srv = self.servers[server_uuid]
        for key in ("name", "cpu", "mem", "vnc_password"):  # the docs' minimal edit (request_server_edit_minimal)
            if key not in body:
                raise ValueError(f"{key} is required")
        if "meta" in body:
            _check_meta(body["meta"] or {})
        tags = [t["uuid"] if isinstance(t, dict) else str(t) for t in body.get("tags") or []]
        running = srv["status"] in RUNTIME_STATUSES
        nic_changes: list[tuple[dict[str, Any], dict[str, Any]]] = []
        if not running or self.running_server_changes == "apply":
            by_mac = {n["mac"]: n for n in srv["nics"]}
            for raw in body.get("nics") or []:
                nic = by_mac.get(str((raw or {}).get("mac") or ""))
                if nic is None:
                    raise ValueError(f"unknown NIC {raw.get('mac')!r}: only existing NICs can be changed here")
                nic_changes.append((nic, raw))
        srv["name"] = str(body["name"])
        if "meta" in body:
            srv["meta"] = dict(body["meta"] or {})
        if "tags" in body:
            self.set_server_tags(server_uuid, tags)
        if running and self.running_server_changes == "ignore":
            return srv
        srv["cpu"], srv["mem"] = int(body["cpu"]), int(body["mem"])
        srv["smp"] = int(body.get("smp", srv["smp"]))
        owner = self.user_by_uuid(srv["owner"]["uuid"])
        for nic, raw in nic_changes:
            for key in ("ip_v4_conf", "ip_v6_conf"):
                conf = raw.get(key)
                if not isinstance(conf, dict) or not isinstance(nic.get(key), dict):
                    continue
                kind = conf.get("conf")
                if kind in ("manual", "dhcp"):
                    nic[key] = {"conf": kind, "ip": None}
                elif kind == "static":
                    ref = conf.get("ip")
                    addr = ref.get("uuid") if isinstance(ref, dict) else ref
                    if not addr or owner is None:
                        raise ValueError("a static conf needs an IP")
                    nic[key] = {"conf": "static", "ip": ip_ref(self._ensure_ip(owner, str(addr), dynamic=False))}
                else:
                    raise ValueError(f"unknown conf {kind!r}")
        self._refresh_runtime(server_uuid)
        return srv

    # ----------------------------------------------------------------------------------------- physical hosts

    def move_server(self, server_uuid: str, host: str) -> dict[str, Any]:
        """Put a server on another physical host (as a restart elsewhere or a live migration would)."""
        srv = self.servers[server_uuid]
        self.hosts[server_uuid] = host
        return srv

    def availability_group_of(self, server_uuid: str) -> list[str]:
        """The running servers of the server's owner on its host, itself included; empty if it is not running."""
        srv = self.servers[server_uuid]
        if srv["status"] != "running":
            return []
        host = self.hosts.get(server_uuid)
        return [s["uuid"] for s in self.servers.values()
                if s["owner"]["uuid"] == srv["owner"]["uuid"] and s["status"] == "running"
                and self.hosts.get(s["uuid"]) == host]

    def availability_groups(self, user_uuid: str) -> list[list[str]]:
        """``GET /servers/availability_groups/``: running servers sharing a host; non-running servers are in none."""
        running = [s["uuid"] for s in self.servers.values()
                   if s["owner"]["uuid"] == user_uuid and s["status"] == "running"]
        by_host: dict[str | None, list[str]] = {}
        for srv_uuid in running:
            by_host.setdefault(self.hosts.get(srv_uuid), []).append(srv_uuid)
        if self.availability_groups_per_server:
            return [list(by_host[self.hosts.get(u)]) for u in running]
        return list(by_host.values())

    # ----------------------------------------------------------------------------------------- IPs

    def add_ip(self, owner_email: str, address: str | None = None, *, netmask: int = 24,
               gateway: str | None = None, meta: dict[str, Any] | None = None, dynamic: bool = False) -> IpRecord:
        """Register an IP owned by a user (a subscription IP unless ``dynamic``)."""
        owner = self._require_user(owner_email)
        addr = address or self.allocate_ip()
        addr = str(ipaddress.ip_address(addr))
        if gateway is None and ipaddress.ip_address(addr).version == 4:
            gateway = str(ipaddress.ip_network(f"{addr}/{netmask}", strict=False).network_address + 1)
        record = IpRecord(uuid=addr, owner_uuid=owner.uuid, dynamic=dynamic, netmask=netmask, gateway=gateway,
                          meta=dict(meta or {}))
        self.ips[addr] = record
        return record

    def _ensure_ip(self, owner: User, address: str, dynamic: bool) -> str:
        addr = str(ipaddress.ip_address(address))
        if addr not in self.ips:
            self.add_ip(owner.email, addr, dynamic=dynamic)
        return addr

    def ip_attachments(self) -> dict[str, str]:
        """address -> uuid of the server using it now (static conf, or a DHCP lease of a running server)."""
        attached: dict[str, str] = {}
        for srv in self.servers.values():
            for nic in srv["nics"]:
                for conf_key in ("ip_v4_conf", "ip_v6_conf"):
                    conf = nic.get(conf_key)
                    if isinstance(conf, dict) and isinstance(conf.get("ip"), dict):
                        attached.setdefault(str(conf["ip"]["uuid"]), srv["uuid"])
                runtime = nic.get("runtime")
                if isinstance(runtime, dict):
                    for key in ("ip_v4", "ip_v6"):
                        ref = runtime.get(key)
                        if isinstance(ref, dict) and ref.get("uuid"):
                            attached.setdefault(str(ref["uuid"]), srv["uuid"])
                        elif isinstance(ref, str) and ref:
                            attached.setdefault(ref, srv["uuid"])
        return attached

    def set_ip_meta(self, address: str, meta: Mapping[str, Any]) -> IpRecord:
        """Replace an IP's whole ``meta`` (``PUT /ips/{uuid}/``; meta.rst: an update never merges)."""
        _check_meta(meta)
        rec = self.ips[address]
        rec.meta = dict(meta)
        return rec

    def set_ip_tags(self, address: str, tag_uuids: Sequence[str]) -> IpRecord:
        """Put an IP under these tags (what ``PUT /tags/{uuid}/`` with the IP among its resources does)."""
        unknown = [t for t in tag_uuids if t not in self.tags]
        if unknown:
            raise ValueError(f"unknown tag(s) {unknown}")
        rec = self.ips[address]
        rec.tags = [_tag_ref(t) for t in dict.fromkeys(tag_uuids)]
        return rec

    def visible_ips(self, owner_uuid: str) -> list[tuple[IpRecord, str | None]]:
        """The user's IPs as ``/ips/`` lists them, with the uuid of the server each is attached to."""
        attached = self.ip_attachments()
        out: list[tuple[IpRecord, str | None]] = []
        for rec in self.ips.values():
            if rec.owner_uuid != owner_uuid:
                continue
            server = attached.get(rec.uuid)
            if rec.dynamic and (server is None or not self.dhcp_ips_in_ip_list):
                continue
            out.append((rec, server))
        return out

    # ----------------------------------------------------------------------------------------- servers

    def add_server(self, owner_email: str, name: str, *, status: str = "running",
                   nics: Sequence[NicSpec | dict[str, Any]] | None = None, cpu: int = 2000, smp: int = 1,
                   mem: int = 2 * 1024**3, uuid: str | None = None, meta: dict[str, str] | None = None,
                   tags: Sequence[str] | None = None, host: str | None = None) -> dict[str, Any]:
        """Create a server owned by ``owner_email``; returns the live full server object. ``host``: the physical
        host it runs on (default: a host of its own)."""
        owner = self._require_user(owner_email)
        if status not in SERVER_STATUSES:
            raise ValueError(f"bad status {status!r}")
        srv_uuid = uuid or str(uuidlib.uuid4())
        server: dict[str, Any] = {
            "context": True, "cpu": cpu, "cpu_model": None, "cpu_type": "amd", "cpus_instead_of_cores": False,
            "drives": [], "enable_numa": False, "grantees": [], "hv_relaxed": False, "hv_tsc": False,
            "hypervisor": "kvm", "jobs": [], "mem": mem, "meta": dict(meta or {}), "name": name, "nics": [],
            "owner": owner.ref(), "permissions": [], "pubkeys": [], "requirements": [],
            "resource_uri": f"{API_PREFIX}/servers/{srv_uuid}/", "runtime": None, "smp": smp, "status": status,
            "tags": [_tag_ref(t) for t in (tags or [])],
            "uuid": srv_uuid, "vnc_password": uuidlib.uuid4().hex[:12],
        }
        self.servers[srv_uuid] = server
        self.hosts[srv_uuid] = host or f"host-{srv_uuid[:8]}"
        for spec in nics or []:
            server["nics"].append(self._build_nic(server, owner, spec))
        self._refresh_runtime(srv_uuid)
        return server

    def _build_nic(self, server: dict[str, Any], owner: User, spec: NicSpec | dict[str, Any]) -> dict[str, Any]:
        if isinstance(spec, dict):
            return self._adopt_raw_nic(server, owner, spec)
        mac = spec.mac or self._next_mac()
        nic: dict[str, Any] = {"boot_order": None, "ip_v4_conf": None, "ip_v6_conf": None, "mac": mac,
                               "model": spec.model, "runtime": None, "vlan": None}
        if spec.kind == "vlan":
            if not spec.vlan:
                raise ValueError("a private NIC needs a vlan uuid")
            nic["vlan"] = {"resource_uri": f"{API_PREFIX}/vlans/{spec.vlan}/", "uuid": spec.vlan}
            return nic
        lease_v4: str | None = None
        lease_v6: str | None = None
        ip = self.allocate_ip(4) if spec.ip == "auto" else spec.ip
        ip6 = self.allocate_ip(6) if spec.ip_v6 == "auto" else spec.ip_v6
        if spec.kind == "dhcp":
            nic["ip_v4_conf"] = {"conf": "dhcp", "ip": None}
            if ip:
                lease_v4 = self._ensure_ip(owner, ip, dynamic=True)
        elif spec.kind == "static":
            if not ip:
                raise ValueError("a static NIC needs an IP")
            nic["ip_v4_conf"] = {"conf": "static", "ip": ip_ref(self._ensure_ip(owner, ip, dynamic=False))}
        elif spec.kind == "manual":
            nic["ip_v4_conf"] = {"conf": "manual", "ip": None}
        if spec.ip_v6_conf:
            if spec.ip_v6_conf == "static":
                if not ip6:
                    raise ValueError("a static IPv6 conf needs an address")
                nic["ip_v6_conf"] = {"conf": "static", "ip": ip_ref(self._ensure_ip(owner, ip6, dynamic=False))}
            else:
                nic["ip_v6_conf"] = {"conf": spec.ip_v6_conf, "ip": None}
                if spec.ip_v6_conf == "dhcp" and ip6:
                    lease_v6 = self._ensure_ip(owner, ip6, dynamic=True)
        if lease_v4 or lease_v6:
            self.leases[(server["uuid"], mac)] = (lease_v4, lease_v6)
        return nic

    def _adopt_raw_nic(self, server: dict[str, Any], owner: User, raw: dict[str, Any]) -> dict[str, Any]:
        nic = copy.deepcopy(raw)
        nic.setdefault("boot_order", None)
        nic.setdefault("ip_v4_conf", None)
        nic.setdefault("ip_v6_conf", None)
        nic.setdefault("model", "virtio")
        nic.setdefault("vlan", None)
        nic["mac"] = nic.get("mac") or self._next_mac()
        runtime = nic.get("runtime") if isinstance(nic.get("runtime"), dict) else {}
        leases: list[str | None] = [None, None]
        for idx, (conf_key, rt_key) in enumerate((("ip_v4_conf", "ip_v4"), ("ip_v6_conf", "ip_v6"))):
            conf = nic.get(conf_key)
            if not isinstance(conf, dict):
                continue
            if isinstance(conf.get("ip"), dict) and conf["ip"].get("uuid"):
                self._ensure_ip(owner, str(conf["ip"]["uuid"]), dynamic=False)
            ref = runtime.get(rt_key) if isinstance(runtime, dict) else None
            addr = ref.get("uuid") if isinstance(ref, dict) else ref
            if conf.get("conf") == "dhcp" and isinstance(addr, str) and addr:
                leases[idx] = self._ensure_ip(owner, addr, dynamic=True)
        nic["runtime"] = None
        if leases[0] or leases[1]:
            self.leases[(server["uuid"], nic["mac"])] = (leases[0], leases[1])
        return nic

    def _refresh_runtime(self, server_uuid: str) -> None:
        srv = self.servers[server_uuid]
        has_runtime = srv["status"] in RUNTIME_STATUSES
        rt_nics: list[dict[str, Any]] = []
        for nic in srv["nics"]:
            if not has_runtime:
                nic["runtime"] = None
                continue
            v4conf, v6conf = nic.get("ip_v4_conf"), nic.get("ip_v6_conf")
            public = isinstance(v4conf, dict) or isinstance(v6conf, dict)
            lease = self.leases.get((server_uuid, nic["mac"]), (None, None))
            addrs: list[str | None] = [None, None]
            for idx, conf in enumerate((v4conf, v6conf)):
                if not isinstance(conf, dict):
                    continue
                if conf.get("conf") == "static" and isinstance(conf.get("ip"), dict):
                    addrs[idx] = str(conf["ip"]["uuid"])
                elif conf.get("conf") == "dhcp":
                    addrs[idx] = lease[idx]
            ip_v6: Any = None
            if addrs[1]:
                ip_v6 = addrs[1] if self.ipv6_runtime_as_string else ip_ref(addrs[1])
            runtime = {"interface_type": "public" if public else "private", "io": _zero_io(),
                       "ip_v4": ip_ref(addrs[0]) if addrs[0] else None, "ip_v6": ip_v6}
            nic["runtime"] = runtime
            rt_nics.append({**runtime, "io": _zero_io(), "mac": nic["mac"]})
        if has_runtime:
            old = srv.get("runtime")
            since = old.get("active_since") if isinstance(old, dict) else None
            srv["runtime"] = {"active_since": since or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                              "nics": rt_nics}
        else:
            srv["runtime"] = None

    def get_server(self, server_uuid: str) -> dict[str, Any]:
        return self.servers[server_uuid]

    def servers_of(self, owner_email: str) -> list[dict[str, Any]]:
        owner = self._require_user(owner_email)
        return [s for s in self.servers.values() if s["owner"]["uuid"] == owner.uuid]

    def set_status(self, server_uuid: str, status: str) -> dict[str, Any]:
        """Change a server's status; ``runtime`` (and DHCP addresses) appear/vanish accordingly."""
        if status not in SERVER_STATUSES:
            raise ValueError(f"bad status {status!r}")
        self.servers[server_uuid]["status"] = status
        self._refresh_runtime(server_uuid)
        return self.servers[server_uuid]

    def set_server_ip(self, server_uuid: str, ip: str | None, *, nic_index: int = 0,
                      version: Literal[4, 6] = 4) -> dict[str, Any]:
        """Change the address of a public NIC: the lease of a DHCP NIC (visible while running; ``None`` clears
        it) or the ``ip`` of a static one. ``ip="auto"`` takes a new pool address (a DHCP reboot)."""
        srv = self.servers[server_uuid]
        nic = srv["nics"][nic_index]
        conf = nic.get("ip_v4_conf" if version == 4 else "ip_v6_conf")
        if not isinstance(conf, dict):
            raise ValueError(f"NIC {nic_index} of {server_uuid} has no IPv{version} configuration")
        owner = self.user_by_uuid(srv["owner"]["uuid"])
        if owner is None:
            raise KeyError("server owner vanished")
        if ip == "auto":
            ip = self.allocate_ip(version)
        key = (server_uuid, nic["mac"])
        old = self.leases.get(key, (None, None))
        if conf.get("conf") == "dhcp":
            old_addr = old[0] if version == 4 else old[1]
            addr = self._ensure_ip(owner, ip, dynamic=True) if ip else None
            self.leases[key] = (addr, old[1]) if version == 4 else (old[0], addr)
            if old_addr and old_addr != addr and self.ips.get(old_addr, None) is not None \
                    and self.ips[old_addr].dynamic:
                del self.ips[old_addr]
        elif conf.get("conf") == "static":
            if not ip:
                raise ValueError("a static NIC needs an IP")
            conf["ip"] = ip_ref(self._ensure_ip(owner, ip, dynamic=False))
        else:
            raise ValueError("the API knows no address for a manual NIC")
        self._refresh_runtime(server_uuid)
        return srv

    def remove_server(self, server_uuid: str) -> None:
        """Delete a server (GET answers 404 afterwards); its DHCP leases return to the pool."""
        self.servers.pop(server_uuid, None)
        self.hosts.pop(server_uuid, None)
        for key in [k for k in self.leases if k[0] == server_uuid]:
            for addr in self.leases.pop(key):
                if addr and addr in self.ips and self.ips[addr].dynamic:
                    del self.ips[addr]

    def transfer_server(self, server_uuid: str, new_owner_email: str) -> dict[str, Any]:
        """Give a server to another user (the old owner then gets 403 on it)."""
        owner = self._require_user(new_owner_email)
        srv = self.servers[server_uuid]
        srv["owner"] = owner.ref()
        for key, addrs in self.leases.items():
            if key[0] == server_uuid:
                for addr in addrs:
                    if addr and addr in self.ips and self.ips[addr].dynamic:
                        self.ips[addr].owner_uuid = owner.uuid
        return srv

    # ----------------------------------------------------------------------------------------- faults

    def add_fault(self, fault: Fault) -> Fault:
        return self.faults.add(fault)

    def fail_next(self, n: int = 1, *, status: int = 500, error_type: str | None = None,
                  path_prefix: str | None = None, method: str | None = None) -> Fault:
        """The next ``n`` matching requests answer ``status`` with an error list (``backend``/``concurrency``)."""
        return self.add_fault(Fault("error", count=n, status=status, error_type=error_type, path_prefix=path_prefix,
                                    method=method))

    def rate_limit_next(self, n: int = 1, *, retry_after: int = 1, path_prefix: str | None = None,
                        method: str | None = None) -> Fault:
        """The next ``n`` matching requests answer 429 with ``Retry-After: retry_after``."""
        return self.add_fault(Fault("rate_limit", count=n, status=429, retry_after=retry_after,
                                    path_prefix=path_prefix, method=method))

    def hang_next(self, n: int = 1, *, path_prefix: str | None = None, method: str | None = None) -> Fault:
        """The next ``n`` matching requests never answer (until the client gives up)."""
        return self.add_fault(Fault("hang", count=n, path_prefix=path_prefix, method=method))

    def malformed_next(self, n: int = 1, *, path_prefix: str | None = None, method: str | None = None) -> Fault:
        """The next ``n`` matching requests answer 200 with a truncated JSON body."""
        return self.add_fault(Fault("malformed", count=n, path_prefix=path_prefix, method=method))

    def reset_next(self, n: int = 1, *, path_prefix: str | None = None, method: str | None = None) -> Fault:
        """The next ``n`` matching requests get their TCP connection reset without an answer."""
        return self.add_fault(Fault("reset", count=n, path_prefix=path_prefix, method=method))

    def fail_page(self, offset: int, *, status: int = 500, n: int | None = 1, path_prefix: str | None = None,
                  error_type: str | None = None) -> Fault:
        """List requests with ``offset=offset`` answer ``status`` (a page missing mid-pagination)."""
        return self.add_fault(Fault("page_error", count=n, status=status, offset=offset, path_prefix=path_prefix,
                                    error_type=error_type))

    def proxy_html_next(self, n: int | None = 1, *, status: int = 404, path_prefix: str | None = None,
                        method: str | None = None) -> Fault:
        """The next ``n`` matching requests are answered by "an edge proxy" in front of the API: an HTML page with
        ``status`` and no ``X-REQUEST-ID`` (not CloudSigma's error list)."""
        return self.add_fault(Fault("proxy_html", count=n, status=status, path_prefix=path_prefix, method=method))

    def delay_next(self, n: int | None, delay_ms: float, *, path_prefix: str | None = None,
                   method: str | None = None) -> Fault:
        """Extra latency for the next ``n`` matching requests (``None``: all)."""
        return self.add_fault(Fault("delay", count=n, delay_ms=delay_ms, path_prefix=path_prefix, method=method))

    def set_latency(self, ms: float) -> None:
        self.faults.latency_ms = ms

    def clear_faults(self) -> None:
        """Remove every fault rule and the global latency."""
        self.faults.clear()

    # ----------------------------------------------------------------------------------------- stats

    def record(self, rec: RequestRecord) -> None:
        self.requests.append(rec)
        if len(self.requests) > self.max_log:
            del self.requests[: len(self.requests) - self.max_log]

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def requests_to(self, endpoint: str) -> list[RequestRecord]:
        """Log records whose normalised endpoint equals ``endpoint`` (e.g. ``"GET /servers/{uuid}/"``)."""
        return [r for r in self.requests if r.endpoint == endpoint]

    def reset_stats(self) -> None:
        self.counters.clear()
        self.requests.clear()

    def stats(self) -> dict[str, Any]:
        return {"counters": dict(self.counters), "requests": [r.to_json() for r in self.requests],
                "faults": [f.to_json() for f in self.faults.rules], "latency_ms": self.faults.latency_ms}

    # ----------------------------------------------------------------------------------------- seed

    def load_seed(self, data: Mapping[str, Any]) -> None:
        """Load ``{"settings": {...}, "users": [...], "clients": [...], "ips": [...], "servers": [...]}``.

        Server entries: ``owner`` (email), ``name``, optional ``status/cpu/smp/mem/uuid/meta/tags/host`` and ``nics``
        (``{"type": "dhcp"|"static"|"manual"|"vlan"|"ipv6", "ip": "1.2.3.4"|"auto", "ip_v6": ..., "vlan": ...}``);
        ``count: N`` creates N servers named ``{name}-{i}`` (use ``"ip": "auto"`` with it; ``"hosts": K`` spreads
        them over K physical hosts ``host-{i % K}``). Tag entries:
        ``{"name", "uuid", "owner"}`` (servers' ``tags`` list their uuids).
        """
        settings = data.get("settings", {})
        for key in ("token_lifetime", "impersonation_lifetime", "single_object_errors", "default_limit",
                    "user_claims", "jwks_url", "external_issuer", "dhcp_ips_in_ip_list", "token_exchange_mode",
                    "impersonate_include_expires_in", "ipv6_runtime_as_string", "availability_groups_per_server",
                    "running_server_changes"):
            if key in settings:
                setattr(self, key, settings[key])
        if "realms" in settings:
            self.realms = set(settings["realms"])
        if "latency_ms" in settings:
            self.faults.latency_ms = float(settings["latency_ms"])
        for u in data.get("users", []):
            self.add_user(u["email"], u.get("password", "password"), uuid=u.get("uuid"), username=u.get("username"))
        for c in data.get("clients", []):
            self.add_client(c["client_id"], c["secret"], c.get("may_impersonate", True),
                            may_exchange=c.get("may_exchange"), allowed_users=c.get("allowed_users"),
                            service_account_email=c.get("service_account_email"))
        for t in data.get("tags", []):
            self.add_tag(t["name"], uuid=t.get("uuid"), owner=t.get("owner"))
        for ip in data.get("ips", []):
            self.add_ip(ip["owner"], ip.get("uuid") or ip.get("address"), meta=ip.get("meta"))
        for s in data.get("servers", []):
            count = int(s.get("count", 1))
            for i in range(count):
                name = s["name"] if "count" not in s else f"{s['name']}-{i}"
                self.add_server(s["owner"], name, status=s.get("status", "running"),
                                nics=[_seed_nic(n) for n in s.get("nics", [])], cpu=int(s.get("cpu", 2000)),
                                smp=int(s.get("smp", 1)), mem=int(s.get("mem", 2 * 1024**3)),
                                uuid=s.get("uuid") if count == 1 else None, meta=s.get("meta"),
                                tags=s.get("tags"),
                                host=f"host-{i % int(s['hosts'])}" if s.get("hosts") else s.get("host"))

    @classmethod
    def from_seed_file(cls, path: str | Path) -> EmulatorState:
        state = cls()
        state.load_seed(json.loads(Path(path).read_text()))
        return state


def _check_meta(meta: Mapping[str, Any]) -> None:
    """meta.rst: a string map with keys of at most 32 characters."""
    if not isinstance(meta, Mapping):
        raise ValueError("meta must be an object")
    for key, value in meta.items():
        if not isinstance(key, str) or not key or len(key) > 32:
            raise ValueError(f"meta key {key!r} must be 1-32 characters")
        if not isinstance(value, str):
            raise ValueError(f"meta value of {key!r} must be a string")


def _seed_nic(spec: Mapping[str, Any]) -> NicSpec | dict[str, Any]:
    kind = spec.get("type", "dhcp")
    mac = spec.get("mac")
    if kind == "dhcp":
        return public_dhcp_nic(spec.get("ip"), ip_v6=spec.get("ip_v6"), mac=mac)
    if kind == "static":
        return public_static_nic(spec["ip"], ip_v6=spec.get("ip_v6"), mac=mac)
    if kind == "manual":
        return public_manual_nic(ip_v6=spec.get("ip_v6"), mac=mac)
    if kind == "vlan":
        return private_vlan_nic(spec["vlan"], mac=mac)
    if kind == "ipv6":
        return public_ipv6_nic(spec.get("ip_v6"), conf=spec.get("conf", "static"), mac=mac)
    if kind == "raw":
        return dict(spec["nic"])
    raise ValueError(f"unknown NIC type {kind!r}")
