"""Run the emulator: in-process (:class:`EmulatorServer`) or as a subprocess (:class:`EmulatorProcess`)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from .app import create_app
from .state import API_PREFIX, EmulatorState

REPO_ROOT = Path(__file__).resolve().parents[2]


class _Urls:
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:P`` (no trailing slash)."""
        raise NotImplementedError

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:P/api/2.0/``"""
        return f"{self.base_url}{API_PREFIX}/"

    def realm_url(self, realm: str = "cloudsigma") -> str:
        """The OAuth issuer: ``http://127.0.0.1:P/realms/{realm}``."""
        return f"{self.base_url}/realms/{realm}"

    def token_url(self, realm: str = "cloudsigma") -> str:
        return f"{self.realm_url(realm)}/protocol/openid-connect/token"

    def jwks_url(self, realm: str = "cloudsigma") -> str:
        return f"{self.realm_url(realm)}/protocol/openid-connect/certs"

    @property
    def impersonate_url(self) -> str:
        return f"{self.base_url}/service_provider/api/v1/user/impersonate"

    @property
    def control_url(self) -> str:
        return f"{self.base_url}/_emulator"


class EmulatorServer(_Urls):
    """The emulator app served in this event loop on 127.0.0.1 (a free port unless ``port`` is given)."""

    def __init__(self, state: EmulatorState | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 jwks_url: str | None = None, access_log: bool = False, shutdown_timeout: float = 2.0) -> None:
        self.state = state if state is not None else EmulatorState()
        self.host = host
        self.port = port
        self._jwks_url = jwks_url
        self._access_log = access_log
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("EmulatorServer not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> EmulatorServer:
        if self._runner is not None:
            return self
        self.app = create_app(self.state, jwks_url=self._jwks_url)
        kwargs: dict[str, Any] = {"handler_cancellation": True, "shutdown_timeout": self._shutdown_timeout}
        if not self._access_log:
            kwargs["access_log"] = None
        runner = web.AppRunner(self.app, **kwargs)
        await runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self.port = int(sock.getsockname()[1])
        self._runner = runner
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> EmulatorServer:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


class EmulatorProcess(_Urls):
    """``python -m tests.emulator`` in a subprocess (for benchmarks and demos). Its state is reachable only
    through the ``/_emulator/*`` control endpoints (see :meth:`control`)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, seed: str | Path | dict[str, Any] | None = None,
                 jwks_url: str | None = None, latency_ms: float | None = None, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, startup_timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.seed = seed
        self.jwks_url_option = jwks_url
        self.latency_ms = latency_ms
        self.extra_args = list(extra_args or [])
        self.env = env
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self._base_url: str | None = None
        self._seed_file: str | None = None
        self._drain: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("EmulatorProcess not started")
        return self._base_url

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tests.emulator", "--host", self.host, "--port", str(self.port)]
        if self.seed is not None:
            if isinstance(self.seed, dict):
                fd, name = tempfile.mkstemp(prefix="emulator-seed-", suffix=".json")
                with os.fdopen(fd, "w") as fh:
                    json.dump(self.seed, fh)
                self._seed_file = name
                cmd += ["--seed", name]
            else:
                cmd += ["--seed", str(self.seed)]
        if self.jwks_url_option:
            cmd += ["--jwks-url", self.jwks_url_option]
        if self.latency_ms is not None:
            cmd += ["--latency-ms", str(self.latency_ms)]
        return cmd + self.extra_args

    def start_sync(self) -> EmulatorProcess:
        if self.proc is not None:
            return self
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(self.command(), cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def drain() -> None:
            for line in stdout:
                lines.put(line)
            lines.put("")

        self._drain = threading.Thread(target=drain, name="emulator-stdout", daemon=True)
        self._drain.start()
        try:
            first = lines.get(timeout=self.startup_timeout).strip()
        except queue.Empty:
            self.stop_sync()
            raise RuntimeError("emulator subprocess did not report its URL in time") from None
        if not first.startswith("http"):
            self.stop_sync()
            raise RuntimeError(f"emulator subprocess failed to start (first line {first!r})")
        self._base_url = first.rstrip("/")
        self.port = int(self._base_url.rsplit(":", 1)[1])
        return self

    def stop_sync(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._drain is not None:
            self._drain.join(timeout=5)
            self._drain = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._seed_file:
            Path(self._seed_file).unlink(missing_ok=True)
            self._seed_file = None

    async def start(self) -> EmulatorProcess:
        return await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        """Call a control endpoint synchronously, e.g. ``control("POST", "faults", {"latency_ms": 5})``."""
        url = f"{self.control_url}/{path.lstrip('/')}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def __enter__(self) -> EmulatorProcess:
        return self.start_sync()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_sync()

    async def __aenter__(self) -> EmulatorProcess:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

