"""The CCM daemon as a subprocess, and resource sampling of processes (psutil / ``/proc``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from bench import promtext

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_binary() -> Path:
    """``cloudsigma-ccm`` next to the running interpreter (``.venv/bin/cloudsigma-ccm``)."""
    path = Path(sys.executable).parent / "cloudsigma-ccm"
    if not path.is_file():
        raise SystemExit(f"{path} not found: install the project into the venv (pip install -e .)")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 if it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak resident set size (``VmHWM``) of ``pid`` from ``/proc/<pid>/status``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Polls ``memory_info().rss`` of one process every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                rss = int(proc.memory_info().rss)
            except psutil.Error:
                return
            self.samples += 1
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


@dataclass(frozen=True)
class DaemonConfig:
    """What differs between daemon runs: the flags; the environment carries the account and endpoints."""

    flags: tuple[str, ...]
    env: dict[str, str]
    label: str


class Daemon:
    """``cloudsigma-ccm`` (the console script) as a subprocess, logging to a file."""

    def __init__(self, config: DaemonConfig, log_dir: Path) -> None:
        self.config = config
        self.metrics_port = free_port()
        self.log_path = log_dir / f"ccm-{config.label}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.sampler: RssSampler | None = None
        self.started_at = 0.0
        self.peak_rss_hwm: int | None = None
        self.peak_rss_sampled = 0
        self.uptime = 0.0
        #: Seconds from SIGTERM to exit (the daemon promises to finish only in-flight reconciles).
        self.stop_seconds: float | None = None
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("daemon not started")
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def command(self) -> list[str]:
        return [str(daemon_binary()), *self.config.flags, f"--metrics-bind-address=127.0.0.1:{self.metrics_port}"]

    def start(self, ready_timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSIGMA_") and k != "KUBECONFIG"}
        env.update(self.config.env)
        self._log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.command(), env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.sampler = RssSampler(self.proc.pid).start()
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cloudsigma-ccm exited with {self.proc.returncode} during start-up; "
                                   f"log: {self.log_path}\n{self.log_tail()}")
            if self._get("/readyz") == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cloudsigma-ccm not ready after {ready_timeout}s; log: {self.log_path}\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def metrics(self) -> promtext.MetricsSnapshot:
        return promtext.scrape(self.base_url + "/metrics")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (graceful shutdown), SIGKILL after ``timeout``; records peak RSS and uptime first."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self.peak_rss_hwm = vm_hwm_bytes(proc.pid)
            self.uptime = time.monotonic() - self.started_at
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            self.stop_seconds = time.monotonic() - signalled
        self.exit_code = proc.returncode
        if self.sampler is not None:
            self.peak_rss_sampled = self.sampler.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.stop()
