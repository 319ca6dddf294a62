"""A real kube-apiserver (with its etcd embedded in the same process) for integration tests.

The binary is built from ``tests/kube-apiserver`` by ``scripts/build-kube-apiserver.sh`` (or taken from
``$CCM_KUBE_APISERVER_BIN``). Each :class:`KubeAPIServer` owns a temporary work dir holding the etcd data,
the serving certificate (self-signed by the API server into ``--cert-dir``), a client CA generated here,
the service-account keys and the log file. Several instances can run at once (e.g. a "management" and a
"tenant" cluster); each listens on its own free port of 127.0.0.1.

Identities are client certificates signed by the instance's client CA: :meth:`KubeAPIServer.kubeconfig`
mints one for any user/groups and writes a kubeconfig that embeds the serving CA, so TLS verification
stays on. Authorization is RBAC; ``system:masters`` is the admin group.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import datetime
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KubeAPIServer", "KubeAPIServerError", "find_kube_apiserver_binary"]

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-kube-apiserver.sh"

ENV_BINARY = "CCM_KUBE_APISERVER_BIN"
"""Path of a prebuilt binary; skips the build script."""
ENV_KEEP_DIR = "CCM_KEEP_TEST_DIRS"
"""If set to 1/true/yes, :meth:`KubeAPIServer.stop` keeps the work dir (logs, etcd data) for debugging."""

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"

_binary_lock = threading.Lock()
_binary_path: Path | None = None


class KubeAPIServerError(RuntimeError):
    """The API server could not be built, started or stopped."""


def find_kube_apiserver_binary() -> Path:
    """The kube-apiserver binary: ``$CCM_KUBE_APISERVER_BIN``, else the build script's (cached) output.

    The build script only builds when the binary for the current pin is missing; the result is
    memoised for the process, so several instances do not run it twice.
    """
    global _binary_path
    with _binary_lock:
        if _binary_path is not None:
            return _binary_path
        env = os.environ.get(ENV_BINARY)
        if env:
            path = Path(env)
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise KubeAPIServerError(f"${ENV_BINARY}={env} is not an executable file")
        else:
            proc = subprocess.run(
                ["bash", str(BUILD_SCRIPT)],
                stdout=subprocess.PIPE,
                stderr=None,  # build progress goes straight to the terminal / CI log
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise KubeAPIServerError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
            lines = proc.stdout.strip().splitlines()
            if not lines:
                raise KubeAPIServerError(f"{BUILD_SCRIPT} printed no path")
            path = Path(lines[-1])
        _binary_path = path
        return path


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class _ClientCA:
    """A CA whose certificates the API server accepts as client identities (``--client-ca-file``)."""

    def __init__(self, common_name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue_client_cert(
        self, user: str, groups: Sequence[str]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A client certificate for ``user`` (CN) in ``groups`` (one O each), as Kubernetes reads them."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


_live: weakref.WeakSet[KubeAPIServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Do not leave API servers running if a test run ends without stopping them."""
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop()


class KubeAPIServer:
    """One kube-apiserver process with embedded etcd, listening on ``https://127.0.0.1:<port>``.

    Lifecycle: :meth:`start` → (:meth:`restart` | :meth:`stop_process` + :meth:`start`)* → :meth:`stop`.
    The port, etcd data, serving certificate and client CA survive :meth:`restart`, so kubeconfigs
    minted before a restart keep working after it. :meth:`stop` ends the process and deletes the work dir.
    The async variants (``astart``/``astop``/``arestart``/``astop_process``) run the blocking work in a
    thread so a running event loop (e.g. the CCM under test) keeps going meanwhile.
    """

    def __init__(
        self,
        name: str = "kube",
        *,
        binary: Path | str | None = None,
        extra_args: Sequence[str] = (),
        verbosity: int = 0,
        startup_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        base_dir: Path | str | None = None,
        service_account_issuer: str = SERVICE_ACCOUNT_ISSUER,
    ) -> None:
        """``service_account_issuer``: the ``iss`` of service-account tokens; ``{url}`` stands for this server's
        own ``https://127.0.0.1:<port>`` (so its OIDC discovery and JWKS are served where the issuer points)."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"invalid instance name {name!r}")
        self.name = name
        self._binary = Path(binary) if binary is not None else None
        self.extra_args = list(extra_args)
        self.verbosity = verbosity
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self._service_account_issuer = service_account_issuer

        self._lock = threading.RLock()  # lifecycle (start/stop/restart)
        self._kc_lock = threading.Lock()  # kubeconfig minting; not blocked by a restart in progress
        self._work_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._port: int | None = None
        self._etcd_client_port: int | None = None
        self._etcd_peer_port: int | None = None
        self._client_ca: _ClientCA | None = None
        self._serving_ca_pem: bytes | None = None
        self._admin_kubeconfig: Path | None = None
        self._kubeconfigs: dict[tuple[str, tuple[str, ...]], Path] = {}
        self.last_start_seconds: float | None = None
        """Wall time of the last successful start (process spawn → /readyz ok)."""

    # ------------------------------------------------------------------ properties

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def port(self) -> int:
        if self._port is None:
            raise KubeAPIServerError(f"{self.name}: not started")
        return self._port

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>``."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def service_account_issuer(self) -> str:
        return self._service_account_issuer.replace("{url}", self.url)

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            raise KubeAPIServerError(f"{self.name}: not started")
        return self._work_dir

    @property
    def log_path(self) -> Path:
        """The API server's (and etcd's) combined stdout/stderr, appended to across restarts."""
        return self.work_dir / "kube-apiserver.log"

    @property
    def serving_ca_pem(self) -> bytes:
        """PEM of the CA that signed the API server's (self-signed) serving certificate."""
        if self._serving_ca_pem is None:
            raise KubeAPIServerError(f"{self.name}: not started")
        return self._serving_ca_pem

    @property
    def serving_ca_path(self) -> Path:
        return self.work_dir / "serving-ca.crt"

    @property
    def client_ca_path(self) -> Path:
        return self.work_dir / "pki" / "client-ca.crt"

    @property
    def admin_kubeconfig(self) -> Path:
        """Kubeconfig for user ``admin`` in group ``system:masters``."""
        if self._admin_kubeconfig is None:
            self._admin_kubeconfig = self.kubeconfig("admin", ["system:masters"])
        return self._admin_kubeconfig

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, KubeAPIServerError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the process (first time: create the work dir, keys and ports) and wait for /readyz.

        Starting after :meth:`stop_process` reuses the same port and etcd data.
        """
        with self._lock:
            if self.running:
                return
            binary = self._binary or find_kube_apiserver_binary()
            first = self._work_dir is None
            if first:
                self._prepare()
            attempts = 3 if first else 1
            for attempt in range(attempts):
                try:
                    self._spawn_and_wait(binary)
                    break
                except KubeAPIServerError:
                    in_use = "address already in use" in self.log_tail(200)
                    self._kill()
                    if first and in_use and attempt + 1 < attempts:
                        # Lost the race for a port picked by _free_ports: try other ports.
                        self._pick_ports()
                        shutil.rmtree(self.work_dir / "etcd", ignore_errors=True)
                        continue
                    if first:
                        self._cleanup()
                    raise
            _live.add(self)

    def stop_process(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after ``stop_timeout``) but keep the work dir,
        port and etcd data, so :meth:`start` resumes the same cluster."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            self._proc = None
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def restart(self, downtime: float = 0.0) -> None:
        """Stop the process and start it again on the same port with the same etcd data."""
        with self._lock:
            if self._work_dir is None:
                raise KubeAPIServerError(f"{self.name}: restart() before start()")
            self.stop_process()
            if downtime > 0:
                time.sleep(downtime)
            self.start()

    def stop(self) -> None:
        """Stop the process and delete the work dir (unless ``$CCM_KEEP_TEST_DIRS`` is set)."""
        with self._lock:
            self.stop_process()
            self._cleanup()
            _live.discard(self)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop_process(self) -> None:
        await asyncio.to_thread(self.stop_process)

    async def arestart(self, downtime: float = 0.0) -> None:
        await asyncio.to_thread(self.restart, downtime)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> KubeAPIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        port = self._port if self._port is not None else "-"
        return f"<KubeAPIServer {self.name} port={port} {state}>"

    # ------------------------------------------------------------------ identities

    def kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """Write (once per user/groups) a kubeconfig for a client certificate with CN=user, O=groups.

        The serving CA, client certificate and key are embedded; the server is ``self.url``.
        """
        with self._kc_lock:
            if self._client_ca is None or self._serving_ca_pem is None:
                raise KubeAPIServerError(f"{self.name}: not started")
            key_ = (user, tuple(groups))
            existing = self._kubeconfigs.get(key_)
            if existing is not None and existing.exists():
                return existing
            cert, key = self._client_ca.issue_client_cert(user, groups)
            digest = hashlib.sha256(repr(key_).encode()).hexdigest()[:8]
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", user)[:40]
            path = self.work_dir / "kubeconfigs" / f"{safe}-{digest}.yaml"
            path.parent.mkdir(exist_ok=True)
            cluster = f"{self.name}"
            context = f"{user}@{self.name}"
            config: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": cluster,
                        "cluster": {
                            "server": self.url,
                            "certificate-authority-data": _b64(self.serving_ca_pem),
                        },
                    }
                ],
                "users": [
                    {
                        "name": user,
                        "user": {
                            "client-certificate-data": _b64(_pem_cert(cert)),
                            "client-key-data": _b64(_pem_key(key)),
                        },
                    }
                ],
                "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
                "current-context": context,
            }
            data = yaml.safe_dump(config, sort_keys=False).encode()
            _write_private(path, data)
            self._kubeconfigs[key_] = path
            return path

    # ------------------------------------------------------------------ internals

    def _prepare(self) -> None:
        base = self._base_dir
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        self._work_dir = Path(tempfile.mkdtemp(prefix=f"kube-apiserver-{self.name}-", dir=base))
        pki = self._work_dir / "pki"
        for d in (pki, self._work_dir / "serving", self._work_dir / "etcd"):
            d.mkdir(mode=0o700)

        self._client_ca = _ClientCA(f"ccm-test-client-ca-{self.name}")
        self.client_ca_path.write_bytes(_pem_cert(self._client_ca.cert))

        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(pki / "sa.key", _pem_key(sa_key))
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self._pick_ports()

    def _pick_ports(self) -> None:
        self._port, self._etcd_client_port, self._etcd_peer_port = _free_ports(3)
        self._kubeconfigs.clear()
        self._admin_kubeconfig = None

    def _args(self) -> list[str]:
        wd = self.work_dir
        pki = wd / "pki"
        return [
            f"--etcd-data-dir={wd / 'etcd'}",
            f"--etcd-client-port={self._etcd_client_port}",
            f"--etcd-peer-port={self._etcd_peer_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={wd / 'serving'}",
            f"--client-ca-file={self.client_ca_path}",
            f"--service-account-issuer={self.service_account_issuer}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=RBAC",
            # No controller-manager runs, so no default ServiceAccount would ever appear.
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            # The "kubernetes" Endpoints would point at 127.0.0.1, which validation rejects (log spam).
            "--endpoint-reconciler-type=none",
            # On SIGTERM, cut open watches after 2s instead of waiting up to --request-timeout (60s).
            "--shutdown-send-retry-after=true",
            "--profiling=false",
            f"--v={self.verbosity}",
            *self.extra_args,
        ]

    def _spawn_and_wait(self, binary: Path) -> None:
        wd = self.work_dir
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop_process
        self._log_file.write(f"===== start {_now().isoformat()} port={self.port}\n".encode())
        self._log_file.flush()
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            [str(binary), *self._args()],
            cwd=wd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own process group: a Ctrl-C in the terminal reaches pytest, which stops us cleanly.
            start_new_session=True,
        )
        self._wait_ready(t0 + self.startup_timeout)
        self.last_start_seconds = time.monotonic() - t0

    def _wait_ready(self, deadline: float) -> None:
        cert_file = self.work_dir / "serving" / "apiserver.crt"
        last_error = "no answer yet"
        ctx: ssl.SSLContext | None = None
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise KubeAPIServerError(
                    f"{self.name}: kube-apiserver exited with code {code} before ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise KubeAPIServerError(
                    f"{self.name}: not ready after {self.startup_timeout:.0f}s ({last_error}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if ctx is None and cert_file.exists():
                with contextlib.suppress(ValueError, OSError):
                    ctx = self._ssl_context(cert_file)
            if ctx is not None:
                status, body = _https_get(ctx, self.port, "/readyz")
                if status == 200 and body.strip() == "ok":
                    return
                last_error = f"/readyz: {status} {body.strip()[-200:]}"
            time.sleep(0.1)

    def _ssl_context(self, cert_file: Path) -> ssl.SSLContext:
        """Trust exactly the CA of the serving certificate written to --cert-dir; authenticate as a master."""
        if self._serving_ca_pem is None:
            certs = x509.load_pem_x509_certificates(cert_file.read_bytes())
            cas = [c for c in certs if _is_ca(c)]
            if not cas:
                raise ValueError(f"no CA certificate in {cert_file}")
            self._serving_ca_pem = _pem_cert(cas[0])
            self.serving_ca_path.write_bytes(self._serving_ca_pem)
        ctx = ssl.create_default_context(cadata=self.serving_ca_pem.decode())
        cert_path = self.work_dir / "pki" / "readyz-client.pem"
        if not cert_path.exists():
            assert self._client_ca is not None
            cert, key = self._client_ca.issue_client_cert("readyz-probe", ["system:masters"])
            _write_private(cert_path, _pem_cert(cert) + _pem_key(key))
        ctx.load_cert_chain(cert_path)
        return ctx

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _cleanup(self) -> None:
        wd = self._work_dir
        if wd is not None and os.environ.get(ENV_KEEP_DIR, "").lower() not in ("1", "true", "yes"):
            shutil.rmtree(wd, ignore_errors=True)
        self._work_dir = None
        self._client_ca = None
        self._serving_ca_pem = None
        self._admin_kubeconfig = None
        self._kubeconfigs.clear()
        self._port = self._etcd_client_port = self._etcd_peer_port = None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _https_get(ctx: ssl.SSLContext, port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
