"""The CloudSigma side: the emulator subprocess, its seed, and its request counters.

The emulator also plays the identity provider: Keycloak-style legacy token exchange at
``/realms/cloudsigma/protocol/openid-connect/token``, so the daemon runs with impersonation as in
production (``token:token-exchange`` counts the exchanges).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.emulator import EmulatorProcess

USER_EMAIL = "owner@bench.example"
CLIENT_ID = "cloudsigma-ccm-bench"
CLIENT_SECRET = "bench-client-secret-not-a-real-one"
NODE_PREFIX = "node"
TOKEN_EXCHANGE = "token:token-exchange"


def node_names(n: int) -> list[str]:
    return [f"{NODE_PREFIX}-{i}" for i in range(n)]


BENCH_TAG = "3b0d5c1e-6a2f-4c8d-9e7b-1f2a3b4c5d6e"
SERVERS_PER_HOST = 4


def seed(n: int, *, token_lifetime: int) -> dict[str, Any]:
    """One user owning ``n`` running servers ``node-0..node-(n-1)``, each with a public DHCP NIC, the meta a
    Cluster API provider writes (``pool``, ``cluster``), one tag, and ``SERVERS_PER_HOST`` servers per physical
    host: every source of the cloud labels has something to say."""
    return {
        "settings": {"token_lifetime": token_lifetime},
        "users": [{"email": USER_EMAIL, "password": "unused-password"}],
        "clients": [{"client_id": CLIENT_ID, "secret": CLIENT_SECRET, "may_impersonate": True,
                     "may_exchange": True}],
        "tags": [{"name": "bench", "uuid": BENCH_TAG, "owner": USER_EMAIL}],
        "servers": [{"owner": USER_EMAIL, "name": NODE_PREFIX, "count": n, "nics": [{"type": "dhcp", "ip": "auto"}],
                     "meta": {"pool": "workers", "cluster": "bench"}, "tags": [BENCH_TAG],
                     "hosts": max(1, -(-n // SERVERS_PER_HOST))}],
    }


def start_emulator(n: int, *, latency_ms: float, token_lifetime: int) -> EmulatorProcess:
    return EmulatorProcess(seed=seed(n, token_lifetime=token_lifetime), latency_ms=latency_ms,
                           startup_timeout=120.0).start_sync()


def daemon_env(emulator: EmulatorProcess, kubeconfig: str) -> dict[str, str]:
    """The daemon's environment: impersonation through the emulator's token exchange, no leader election."""
    return {
        "CLOUDSIGMA_REGION": "zrh",
        "CLOUDSIGMA_IMPERSONATION_ENABLED": "true",
        "CLOUDSIGMA_OAUTH_URL": emulator.realm_url(),
        "CLOUDSIGMA_CLIENT_ID": CLIENT_ID,
        "CLOUDSIGMA_CLIENT_SECRET": CLIENT_SECRET,
        "CLOUDSIGMA_USER_EMAIL": USER_EMAIL,
        "CLOUDSIGMA_IMPERSONATION_API_URL": emulator.api_url,
        "CLOUDSIGMA_API_URL": emulator.api_url,
        "CLOUDSIGMA_KUBECONFIG": kubeconfig,
        "CLOUDSIGMA_LEADER_ELECT": "false",
        "CLOUDSIGMA_CLUSTER_NAME": "bench",
    }


@dataclass(frozen=True)
class CloudCounters:
    """The emulator's counters at one moment: ``"GET /servers/detail/"``, ``"token:token-exchange"``..."""

    raw: dict[str, int]

    @classmethod
    def read(cls, emulator: EmulatorProcess) -> CloudCounters:
        stats = emulator.control("GET", "stats?requests=0")
        return cls({str(k): int(v) for k, v in (stats.get("counters") or {}).items()})

    def __sub__(self, other: CloudCounters) -> CloudCounters:
        keys = set(self.raw) | set(other.raw)
        return CloudCounters({k: self.raw.get(k, 0) - other.raw.get(k, 0) for k in sorted(keys)
                              if self.raw.get(k, 0) - other.raw.get(k, 0)})

    @property
    def api(self) -> dict[str, int]:
        """CloudSigma API 2.0 requests by endpoint (``GET /servers/detail/``...)."""
        return {k: v for k, v in self.raw.items() if " " in k and "/realms/" not in k}

    @property
    def identity(self) -> dict[str, int]:
        """Requests to the identity provider (token endpoint, OIDC discovery)."""
        return {k: v for k, v in self.raw.items() if " " in k and "/realms/" in k}

    @property
    def api_total(self) -> int:
        return sum(self.api.values())

    @property
    def list_requests(self) -> int:
        """Server list requests (``GET /servers/`` and ``GET /servers/detail/``, every page counted)."""
        return sum(v for k, v in self.api.items() if k in ("GET /servers/", "GET /servers/detail/"))

    @property
    def token_exchanges(self) -> int:
        return self.raw.get(TOKEN_EXCHANGE, 0)

    def as_json(self) -> dict[str, Any]:
        return {"api_total": self.api_total, "api_by_endpoint": self.api, "list_requests": self.list_requests,
                "identity_by_endpoint": self.identity, "token_exchanges": self.token_exchanges}
