"""A real Keycloak on loopback for the integration tests.

``scripts/fetch-keycloak.sh`` downloads the pinned distribution, runs ``kc.sh build`` with the legacy token exchange
(``--features=token-exchange,admin-fine-grained-authz:v1``) and leaves a warm-up template (a fresh database with the
master realm and a bootstrap admin, plus a JVM class-data-sharing archive). :class:`Keycloak` starts that build with
``kc.sh start --optimized`` -- the prebuilt production mode with the embedded H2 ``dev-file`` database and a local
cache -- because ``start-dev`` cannot use a prebuilt server and re-runs the ~45 s Quarkus augmentation in every
fresh installation. Its database, logs and transaction store live in the instance's work directory, so
:meth:`Keycloak.stop` and :meth:`Keycloak.start` keep the realm, its clients, users and signing keys.

The first :meth:`Keycloak.start` configures, through the admin REST API, the realm ``cloudsigma`` with:

* ``cloudsigma-ccm``: a confidential client (secret) with a service account, allowed to impersonate users: users
  permissions are enabled and a client policy naming ``cloudsigma-ccm`` is added to the *impersonate* permission
  (``admin-impersonating.permission.users``; the ``user-impersonated`` one does not allow it);
* ``cloudsigma-api``: the audience client, whose ``token-exchange`` permission allows ``cloudsigma-ccm`` too.

Tests add more impersonating clients with :meth:`Keycloak.add_impersonating_client` (other authenticators:
``federated-jwt`` for a Kubernetes service-account token, ``client-jwt`` for a private key; mappers), identity
providers with :meth:`Keycloak.add_kubernetes_identity_provider`, and rotate the realm's signing key with
:meth:`Keycloak.rotate_signing_key`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AUDIENCE",
    "CLIENT_ID",
    "FEATURES",
    "REALM",
    "REFRESH_TOKEN_TYPE",
    "TOKEN_EXCHANGE_GRANT",
    "Keycloak",
    "KeycloakError",
    "TokenResponse",
    "resolve_keycloak_home",
]

FEATURES = "token-exchange,admin-fine-grained-authz:v1"
REALM = "cloudsigma"
CLIENT_ID = "cloudsigma-ccm"
AUDIENCE = "cloudsigma-api"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"

REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch-keycloak.sh"

# Startup-oriented JVM options: C1 only and the serial collector start Keycloak ~40 % faster on two cores than
# kc.sh's defaults (G1, tiered); scripts/fetch-keycloak.sh trains its CDS archive with the same options.
_JVM_OPTIONS = (
    "-XX:MetaspaceSize=96M -XX:MaxMetaspaceSize=256m -Dfile.encoding=UTF-8 -XX:+ExitOnOutOfMemoryError "
    "-Djava.security.egd=file:/dev/urandom -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"
)
_PR_SET_PDEATHSIG = 1
# Environment variables of the caller that would change how kc.sh/Keycloak run.
_SCRUBBED_ENV = re.compile(r"^(KC_|KEYCLOAK_|QUARKUS_|JAVA_OPTS|JAVA_ADD_OPENS|JAVA_LOCALE|JAVA_HOME$)")


class KeycloakError(RuntimeError):
    """Keycloak did not start, or an admin call failed."""


@dataclass(frozen=True)
class TokenResponse:
    """The raw answer of the token endpoint."""

    status: int
    body: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error(self) -> str | None:
        value = self.body.get("error")
        return value if isinstance(value, str) else None

    @property
    def error_description(self) -> str | None:
        value = self.body.get("error_description")
        return value if isinstance(value, str) else None

    @property
    def access_token(self) -> str:
        token = self.body.get("access_token")
        if self.status != 200 or not isinstance(token, str):
            raise KeycloakError(f"no access token: HTTP {self.status} {self.body!r}")
        return token

    @property
    def issued_token_type(self) -> str | None:
        value = self.body.get("issued_token_type")
        return value if isinstance(value, str) else None


async def resolve_keycloak_home() -> Path:
    """``$KEYCLOAK_HOME`` if set, else what ``scripts/fetch-keycloak.sh`` prints (it fetches/builds when needed)."""
    explicit = os.environ.get("KEYCLOAK_HOME")
    if explicit:
        return Path(explicit)
    proc = await asyncio.create_subprocess_exec(
        "bash", str(FETCH_SCRIPT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise KeycloakError(
            f"{FETCH_SCRIPT} failed (exit {proc.returncode}):\n{stderr.decode(errors='replace')[-4000:]}"
        )
    lines = stdout.decode().strip().splitlines()
    if not lines:
        raise KeycloakError(f"{FETCH_SCRIPT} printed no Keycloak home")
    return Path(lines[-1])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _terminate_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies (kc.sh forwards it to the JVM).

    Keeps a killed or crashed pytest from leaving a JVM behind that holds its ports.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Keycloak:
    """One Keycloak server process on 127.0.0.1, configured for the CCM's token exchange.

    ``await start()`` launches it (and configures the realm the first time); ``await stop()`` stops it; ``start()``
    again brings it back on the same ports with the same database.
    """

    realm = REALM
    client_id = CLIENT_ID
    audience = AUDIENCE

    def __init__(
        self,
        work_dir: Path,
        *,
        home: Path | None = None,
        java_home: Path | None = None,
        client_secret: str | None = None,
        startup_timeout: float = 300.0,
        use_template: bool = True,
    ) -> None:
        self.work_dir = Path(work_dir)
        self._home = home
        self._java_home = java_home
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.startup_timeout = startup_timeout
        self._use_template = use_template
        self.http_port = 0
        self.management_port = 0
        self._admin_username = "admin"
        self._admin_password = secrets.token_urlsafe(18)
        self._admin_token: str | None = None
        self._admin_token_expiry = 0.0
        self._proc: asyncio.subprocess.Process | None = None
        self._configured = False
        self._cds_archive: Path | None = None
        self.users: dict[str, str] = {}  # username -> user id
        self.last_start_seconds = 0.0
        self._impersonation_policy: str | None = None  # the client policy on the impersonate permission
        self._authz: str | None = None
        self._key_rotations = 0
        self.truststore_paths: list[Path] = []

    # ------------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/{self.realm}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "keycloak.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the server and wait until it is ready; configure the realm on the first start."""
        if self.running:
            return
        began = time.monotonic()
        if self._home is None:
            self._home = await resolve_keycloak_home()
        if self._java_home is None:
            self._java_home = self._pick_java_home(self._home)
        stamp = self._home / ".ccm-build"
        if stamp.is_file() and FEATURES not in stamp.read_text():
            raise KeycloakError(f"{self._home} was built without --features={FEATURES}: rerun {FETCH_SCRIPT}")
        first = self.http_port == 0
        if first:
            self._prepare_work_dir(self._home)
        for attempt in range(3 if first else 1):
            if first:
                self.http_port = _free_port()
                self.management_port = _free_port()
                while self.management_port == self.http_port:
                    self.management_port = _free_port()
            try:
                await self._launch()
                break
            except KeycloakError:
                if first and attempt < 2 and "Port already bound" in self._log_tail():
                    continue  # another process took a port between _free_port() and the JVM's bind
                raise
        if not self._configured:
            try:
                await self._configure()
            except BaseException:
                await self.stop()
                raise
            self._configured = True
        self.last_start_seconds = time.monotonic() - began

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it after ``timeout`` seconds. Keeps the work dir."""
        proc, self._proc = self._proc, None
        self._admin_token = None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # kc.sh forwards it to the JVM
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        # kc.sh may exit before its JVM; make sure nothing of the group outlives stop().
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @staticmethod
    def _pick_java_home(home: Path) -> Path:
        explicit = os.environ.get("KEYCLOAK_JAVA_HOME")
        if explicit:
            return Path(explicit)
        marker = home / ".ccm-java-home"
        if marker.is_file():
            return Path(marker.read_text().strip())
        raise KeycloakError(f"{marker} is missing: run {FETCH_SCRIPT} or set KEYCLOAK_JAVA_HOME")

    def _prepare_work_dir(self, home: Path) -> None:
        (self.work_dir / "data" / "h2").mkdir(parents=True, exist_ok=True)
        template = home / ".ccm-warm"
        if self._use_template and (template / "ready").is_file():
            shutil.copyfile(template / "keycloakdb.mv.db", self.work_dir / "data" / "h2" / "keycloakdb.mv.db")
            username, password = (template / "bootstrap-admin").read_text().splitlines()[:2]
            self._admin_username, self._admin_password = username, password
            archive = template / "keycloak.jsa"
            java_marker = template / "java-home"
            same_java = java_marker.is_file() and Path(java_marker.read_text().strip()) == self._java_home
            if archive.is_file() and same_java:
                self._cds_archive = archive

    def _command(self) -> list[str]:
        assert self._home is not None
        return [
            str(self._home / "bin" / "kc.sh"), "start", "--optimized",
            "--http-enabled=true", "--http-host=127.0.0.1", f"--http-port={self.http_port}",
            "--http-management-host=127.0.0.1", f"--http-management-port={self.management_port}",
            f"--hostname={self.base_url}", "--cache=local",
            # CAs for Keycloak's outgoing TLS (e.g. a kube-apiserver's discovery and JWKS); a run-time option.
            *([f"--truststore-paths={','.join(str(p) for p in self.truststore_paths)}"] if self.truststore_paths
              else []),
        ]

    def _environment(self) -> dict[str, str]:
        assert self._java_home is not None
        env = {k: v for k, v in os.environ.items() if not _SCRUBBED_ENV.match(k)}
        jvm = [
            _JVM_OPTIONS,
            # The dev-file database is ${kc.db-url-path:${kc.home.dir}}/data/h2/keycloakdb (Keycloak's
            # Database.java): put it, and the transaction log, in the work dir rather than in the shared home.
            f"-Dkc.db-url-path={self.work_dir}",
            f"-Dquarkus.transaction-manager.object-store.directory={self.work_dir / 'transaction-logs'}",
            f"-Djava.io.tmpdir={self.work_dir / 'tmp'}",
        ]
        if self._cds_archive is not None:
            jvm.append(f"-XX:SharedArchiveFile={self._cds_archive}")
        env["JAVA_OPTS"] = " ".join(jvm)
        env["JAVA_HOME"] = str(self._java_home)
        # Used only when the master realm is created, i.e. without the template database.
        env["KC_BOOTSTRAP_ADMIN_USERNAME"] = self._admin_username
        env["KC_BOOTSTRAP_ADMIN_PASSWORD"] = self._admin_password
        return env

    async def _launch(self) -> None:
        (self.work_dir / "tmp").mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self._command())}\n".encode())
            log.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *self._command(), env=self._environment(), cwd=self.work_dir,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=_terminate_with_parent,
            )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://127.0.0.1:{self.management_port}/health/ready"
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                proc = self._proc
                if proc is None or proc.returncode is not None:
                    code = None if proc is None else proc.returncode
                    raise KeycloakError(f"Keycloak exited ({code}) during start-up:\n{self._log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise KeycloakError(
                        f"Keycloak not ready after {self.startup_timeout:.0f} s:\n{self._log_tail()}"
                    )
                await asyncio.sleep(0.2)

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ admin REST API

    async def _get_admin_token(self, http: aiohttp.ClientSession) -> str:
        if self._admin_token is not None and time.monotonic() < self._admin_token_expiry:
            return self._admin_token
        form = {
            "grant_type": "password", "client_id": "admin-cli",
            "username": self._admin_username, "password": self._admin_password,
        }
        async with http.post(f"{self.base_url}/realms/master/protocol/openid-connect/token", data=form) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                raise KeycloakError(f"admin login failed: HTTP {resp.status} {body!r}")
        self._admin_token = str(body["access_token"])
        self._admin_token_expiry = time.monotonic() + float(body.get("expires_in", 60)) - 10
        return self._admin_token

    async def admin_request(
        self, method: str, path: str, json: Any = None, *, expect: tuple[int, ...] = (200, 201, 204)
    ) -> tuple[int, Any, Mapping[str, str]]:
        """Call the admin REST API (``path`` below ``/admin/realms``); returns (status, JSON body or None, headers)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            token = await self._get_admin_token(http)
            async with http.request(
                method, f"{self.base_url}/admin/realms{path}", json=json,
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                text = await resp.text()
                if resp.status not in expect:
                    raise KeycloakError(f"{method} {path}: HTTP {resp.status} {text[:2000]}")
                body = None
                if text and resp.content_type == "application/json":
                    body = await resp.json()
                return resp.status, body, resp.headers.copy()

    async def _create(self, path: str, json: Any) -> str:
        """POST a representation; returns the new object's id from the Location header."""
        _, body, headers = await self.admin_request("POST", path, json, expect=(201,))
        if "Location" in headers:
            return headers["Location"].rstrip("/").rsplit("/", 1)[-1]
        return str(body["id"])  # the authorization endpoints answer the created representation instead

    async def _client_uuid(self, client_id: str) -> str:
        _, body, _ = await self.admin_request("GET", f"/{self.realm}/clients?clientId={client_id}")
        if not body:
            raise KeycloakError(f"client {client_id!r} not found")
        return str(body[0]["id"])

    async def _add_policy_to_permission(self, authz: str, permission_id: str, policy_id: str) -> None:
        _, permission, _ = await self.admin_request("GET", f"{authz}/permission/scope/{permission_id}")
        permission["policies"] = [policy_id]
        await self.admin_request("PUT", f"{authz}/permission/scope/{permission_id}", permission)

    async def _configure(self) -> None:
        realm = f"/{self.realm}"
        await self.admin_request("POST", "", {"realm": self.realm, "enabled": True, "sslRequired": "none"})
        ccm = await self._create(f"{realm}/clients", {
            "clientId": self.client_id, "name": "CloudSigma CCM", "enabled": True,
            "publicClient": False, "clientAuthenticatorType": "client-secret", "secret": self.client_secret,
            "serviceAccountsEnabled": True, "standardFlowEnabled": False, "implicitFlowEnabled": False,
            "directAccessGrantsEnabled": False,
        })
        api = await self._create(f"{realm}/clients", {
            "clientId": self.audience, "name": "CloudSigma API", "enabled": True, "publicClient": False,
            "serviceAccountsEnabled": False, "standardFlowEnabled": False, "implicitFlowEnabled": False,
            "directAccessGrantsEnabled": False,
        })
        # Fine-grained admin permissions (v1) live in the realm-management client's authorization server.
        _, users_perms, _ = await self.admin_request(
            "PUT", f"{realm}/users-management-permissions", {"enabled": True})
        _, api_perms, _ = await self.admin_request(
            "PUT", f"{realm}/clients/{api}/management/permissions", {"enabled": True})
        authz = f"{realm}/clients/{await self._client_uuid('realm-management')}/authz/resource-server"
        policy = await self._create(f"{authz}/policy/client", {
            "name": f"client {self.client_id}", "type": "client", "logic": "POSITIVE",
            "decisionStrategy": "UNANIMOUS", "clients": [ccm],
        })
        await self._add_policy_to_permission(authz, users_perms["scopePermissions"]["impersonate"], policy)
        await self._add_policy_to_permission(authz, api_perms["scopePermissions"]["token-exchange"], policy)
        self._authz, self._impersonation_policy = authz, policy

    async def add_impersonating_client(
        self, client_id: str, *, secret: str | None = None, authenticator: str = "client-secret",
        attributes: Mapping[str, str] | None = None, mappers: list[dict[str, Any]] | None = None,
        default_scopes: bool = True,
    ) -> str:
        """Create a confidential client allowed to impersonate users (like ``cloudsigma-ccm``); returns its uuid.

        ``authenticator``: ``client-secret``, ``federated-jwt`` (attributes ``jwt.credential.issuer`` = identity
        provider alias, ``jwt.credential.sub`` = federated subject) or ``client-jwt`` (attributes
        ``use.jwks.string``/``jwks.string``). ``default_scopes=False`` leaves out the profile/email scopes, so
        ``mappers`` alone decide ``preferred_username``/``email``.
        """
        assert self._authz is not None and self._impersonation_policy is not None, "start() first"
        representation: dict[str, Any] = {
            "clientId": client_id, "enabled": True, "publicClient": False, "clientAuthenticatorType": authenticator,
            "serviceAccountsEnabled": True, "standardFlowEnabled": False, "implicitFlowEnabled": False,
            "directAccessGrantsEnabled": False, "attributes": dict(attributes or {}),
            "protocolMappers": list(mappers or []),
        }
        if secret is not None:
            representation["secret"] = secret
        if not default_scopes:
            representation["defaultClientScopes"] = ["basic"]
        uuid = await self._create(f"/{self.realm}/clients", representation)
        path = f"{self._authz}/policy/client/{self._impersonation_policy}"
        _, policy, _ = await self.admin_request("GET", path)
        policy["clients"] = sorted({*policy.get("clients", []), uuid})
        await self.admin_request("PUT", path, policy)
        return uuid

    async def add_kubernetes_identity_provider(self, alias: str, issuer: str, *, max_expiration: int = 3600) -> None:
        """A "Kubernetes" identity provider trusting service-account tokens of ``issuer`` (federated client
        authentication); ``max_expiration`` is the longest assertion lifetime it accepts (Keycloak's default 300 s
        is shorter than the 600 s minimum of the TokenRequest API)."""
        await self.admin_request("POST", f"/{self.realm}/identity-provider/instances", {
            "alias": alias, "providerId": "kubernetes", "enabled": True,
            "config": {"issuer": issuer, "fedClientAssertionMaxExp": str(max_expiration)},
        }, expect=(201,))

    async def rotate_signing_key(self) -> str:
        """Add an RS256 key with a higher priority than every other: new tokens are signed with it, the old keys
        stay published (as Keycloak's rotation procedure has it). Returns the new key's ``kid``."""
        self._key_rotations += 1
        _, realm, _ = await self.admin_request("GET", f"/{self.realm}")
        component = await self._create(f"/{self.realm}/components", {
            "name": f"rsa-rotated-{self._key_rotations}", "providerId": "rsa-generated",
            "providerType": "org.keycloak.keys.KeyProvider", "parentId": realm["id"],
            "config": {"priority": [str(1000 + self._key_rotations)], "enabled": ["true"], "active": ["true"],
                       "keySize": ["2048"], "algorithm": ["RS256"]},
        })
        _, keys, _ = await self.admin_request("GET", f"/{self.realm}/keys")
        for key in keys["keys"]:
            if key.get("providerId") == component and key.get("algorithm") == "RS256":
                return str(key["kid"])
        raise KeycloakError(f"no RS256 key from the new key provider {component}")
    async def add_user(
        self, email: str, password: str, *, first_name: str = "Test", last_name: str = "User",
        username: str | None = None,
    ) -> str:
        """Create an enabled user whose username is ``email`` (verified) unless ``username`` says otherwise;
        returns its id (``users`` is keyed by username)."""
        user_id = await self._create(f"/{self.realm}/users", {
            "username": username or email, "email": email, "emailVerified": True, "enabled": True,
            "firstName": first_name, "lastName": last_name,
            "credentials": [{"type": "password", "value": password, "temporary": False}],
        })
        self.users[username or email] = user_id
        return user_id

    async def set_access_token_lifespan(self, seconds: int) -> None:
        """Set the realm's access token lifespan (also that of exchanged tokens)."""
        await self.admin_request("PUT", f"/{self.realm}", {"accessTokenLifespan": int(seconds)})

    # ------------------------------------------------------------------ token endpoint

    async def jwks(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(self.jwks_url) as resp,
        ):
            resp.raise_for_status()
            body: dict[str, Any] = await resp.json()
            return body

    async def exchange(
        self,
        user: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        requested_token_type: str | None = ACCESS_TOKEN_TYPE,
        audience: str | None = AUDIENCE,
    ) -> TokenResponse:
        """Legacy RFC 8693 exchange impersonating ``user`` (``requested_subject``: a username or user id).

        ``requested_token_type=None`` or ``audience=None`` leave the parameter out.
        """
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "client_id": client_id or self.client_id,
            "client_secret": self.client_secret if client_secret is None else client_secret,
            "requested_subject": user,
        }
        if requested_token_type is not None:
            form["requested_token_type"] = requested_token_type
        if audience is not None:
            form["audience"] = audience
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(self.token_endpoint, data=form) as resp,
        ):
            body = await resp.json(content_type=None)
            return TokenResponse(resp.status, body if isinstance(body, dict) else {"raw": body})
