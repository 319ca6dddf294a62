"""The container image, built from the Containerfile and run for real (tests/realenv/image.py).

- what is in it: the interpreter, the libraries it loads, CA certificates, the venv with the runtime lock's
  packages and nothing else (no shell, no pip, no compiler, no package manager), at most 150 MB;
- ``--help`` from the image;
- the daemon from the image, as UID 65532 with a read-only root filesystem and only /tmp writable, host network,
  against the test kube-apiserver (under the tenant RBAC of deploy/tenant) and the CloudSigma emulator on
  loopback: it initializes a Node and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import ApiClient

from ccm.kube.transport import KubeTransport
from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import addresses, node_json, taint_keys
from tests.realenv.apply import applied
from tests.realenv.image import Image, build_image
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.kustomize import render
from tests.realenv.nodes import register_node, wait_for
from tests.unit.test_locks import lock

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MAX_SIZE = 150 * 1000 * 1000  # bytes, uncompressed
UNINIT = "node.cloudprovider.kubernetes.io/uninitialized"
USER, PASSWORD = "image-owner@example.com", "image-test-password-7d1c"


@pytest.fixture(scope="session")
def image() -> Image:
    return build_image()


def podman(image: Image, subcommand: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(image.podman(subcommand, *args), capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def rootfs(image: Image) -> Iterator[Path]:
    """The image's file system, mounted read-only from the store."""
    proc = podman(image, "image", "mount", image.ref)
    assert proc.returncode == 0, proc.stderr
    try:
        yield Path(proc.stdout.strip())
    finally:
        podman(image, "image", "unmount", image.ref)


def resolve_in(root: Path, path: str) -> Path:
    """``path`` inside the image with its symbolic links followed as the kernel would in the container."""
    parts = [p for p in path.split("/") if p]
    current = root
    hops = 0
    while parts:
        candidate = current / parts.pop(0)
        if candidate.is_symlink():
            hops += 1
            assert hops < 40, f"symlink loop at {path}"
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = root
            continue
        current = candidate
    return current


def test_help_from_the_image(image: Image) -> None:
    proc = podman(image, "run", "--rm", "--network", "host", "--read-only", "--user", "65532:65532", image.ref,
                  "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: cloudsigma-ccm")
    assert "--region" in proc.stdout and "--user-email" in proc.stdout


def test_image_config(image: Image) -> None:
    proc = podman(image, "image", "inspect", image.ref)
    assert proc.returncode == 0, proc.stderr
    (info,) = json.loads(proc.stdout)
    config = info["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/opt/venv/bin/cloudsigma-ccm"]
    assert config["Cmd"] == ["run"]
    assert config["WorkingDir"] == "/tmp"
    assert "10258/tcp" in config["ExposedPorts"]
    assert info["Size"] <= MAX_SIZE, f"image is {info['Size'] / 1e6:.1f} MB, the goal is 150 MB"
    assert len(info["RootFS"]["Layers"]) == 1  # one layer: the assembled rootfs


def test_image_holds_only_the_interpreter_its_libraries_certificates_and_the_venv(rootfs: Path) -> None:
    assert sorted(p.name for p in rootfs.iterdir()) == ["etc", "home", "lib", "lib64", "opt", "tmp", "usr", "var"]
    assert sorted(p.name for p in (rootfs / "usr" / "bin").iterdir()) == ["python3.11"]
    names = {p.name for p in rootfs.rglob("*") if not p.is_dir()} | {
        p.name for p in rootfs.rglob("*") if p.is_dir() and "site-packages" in p.parts}
    for forbidden in ("sh", "bash", "dash", "busybox", "apt", "apt-get", "dpkg", "gcc", "cc", "ld", "as", "make",
                      "pip", "pip3", "ensurepip", "setuptools", "wheel", "pytest", "hypothesis", "matplotlib"):
        assert forbidden not in names, forbidden
    for link in (p for p in rootfs.rglob("*") if p.is_symlink()):
        target = resolve_in(rootfs, "/" + str(link.relative_to(rootfs)))
        assert target.exists(), f"dangling link /{link.relative_to(rootfs)} -> {os.readlink(link)}"
    bundle = resolve_in(rootfs, "/usr/lib/ssl/cert.pem")  # where OpenSSL (Python's ssl) looks by default
    assert bundle.read_text().count("BEGIN CERTIFICATE") > 50
    assert "nonroot:x:65532:65532:" in (rootfs / "etc" / "passwd").read_text()
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    status = list((rootfs / "var" / "lib" / "dpkg" / "status.d").iterdir())
    assert {"libc6", "libssl3", "libpython3.11-stdlib", "python3.11-minimal"} <= {p.name for p in status}
    for entry in status:
        assert re.search(r"^Version: \S+$", entry.read_text(), re.M), entry.name


def test_image_venv_holds_the_runtime_lock_and_the_project_only(rootfs: Path) -> None:
    site = rootfs / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    installed = {}
    for dist in site.glob("*.dist-info"):
        meta = (dist / "METADATA").read_text()
        name = re.search(r"^Name: (.+)$", meta, re.M)
        version = re.search(r"^Version: (.+)$", meta, re.M)
        assert name and version, dist
        installed[re.sub(r"[-_.]+", "-", name.group(1)).lower()] = version.group(1)
    expected = {pin.name: pin.version for pin in lock("runtime").values() if pin.applies()}
    expected["cloudsigma-ccm"] = "0.1.0"
    assert installed == expected
    assert not list((rootfs / "opt" / "venv" / "bin").glob("pip*"))


# ------------------------------------------------------------------------------------------------ the daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
        return resp.status, await resp.text()


@pytest.fixture
async def tenant_rbac(kube_api: ApiClient) -> AsyncIterator[None]:
    async with applied(KubeTransport(kube_api), render(REPO / "deploy" / "tenant")):
        yield


@pytest.mark.usefixtures("clean_nodes", "tenant_rbac")
async def test_daemon_from_the_image_initializes_a_node(
        image: Image, emulator_state: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
        kube_api: ApiClient, tmp_path: Path) -> None:
    emulator_state.add_user(USER, password=PASSWORD)
    server = emulator_state.add_server(USER, "image-worker", nics=[public_dhcp_nic("94.26.101.210")])
    await register_node(kube_api, "image-worker")

    # The tenant kubeconfig as the Deployment mounts it: a read-only directory, the file readable by 65532 only.
    tenant = tmp_path / "tenant"
    tenant.mkdir()
    tenant.chmod(0o755)
    kubeconfig = tenant / "kubeconfig"
    shutil.copy(kube_apiserver.kubeconfig("cloudsigma-ccm", []), kubeconfig)
    os.chown(kubeconfig, 65532, 65532)
    kubeconfig.chmod(0o400)
    port = free_port()
    env_file = tmp_path / "env"  # secrets stay off the command line
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {
        "CLOUDSIGMA_REGION": "zrh", "CLOUDSIGMA_USERNAME": USER, "CLOUDSIGMA_PASSWORD": PASSWORD,
        "CLOUDSIGMA_API_URL": emulator.api_url, "CLOUDSIGMA_KUBECONFIG": "/etc/cloudsigma-ccm/tenant/kubeconfig",
        "CLOUDSIGMA_LEADER_ELECT": "false", "CLOUDSIGMA_METRICS_BIND_ADDRESS": f"127.0.0.1:{port}",
        "CLOUDSIGMA_LOG_FORMAT": "json", "CLOUDSIGMA_NODE_DELETION_ENABLED": "true",
    }.items()))
    name = f"ccm-image-test-{port}"
    command = image.podman(
        "run", "--rm", "--name", name, "--network", "host", "--user", "65532:65532", "--read-only",
        "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m,mode=1777", "--cap-drop", "all",
        "--security-opt", "no-new-privileges", "--volume", f"{tenant}:/etc/cloudsigma-ccm/tenant:ro",
        "--env-file", str(env_file), image.ref)
    log_path = tmp_path / "ccm.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                                                    stderr=log_file)
        try:
            async def initialized() -> dict[str, Any] | None:
                if proc.returncode is not None:
                    raise AssertionError(f"the container exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
                node = await node_json(kube_api, "image-worker")
                return node if UNINIT not in taint_keys(node) else None

            node = await wait_for(initialized, 90)
            status, _ = await wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz"), 15)
            assert status == 200
            inside = await asyncio.create_subprocess_exec(
                *image.podman("exec", name, "/opt/venv/bin/python", "-c",
                              "import os; open('/tmp/w', 'w').write('x'); print(os.getuid(), os.getgid());"
                              "open('/opt/venv/x', 'w')"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(inside.communicate(), 60)
            proc.send_signal(signal.SIGTERM)  # podman run passes it on to the container
            code = await asyncio.wait_for(proc.wait(), 40)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            with contextlib.suppress(Exception):
                subprocess.run(image.podman("rm", "--force", name), capture_output=True, timeout=60, check=False)
    logs = log_path.read_text()
    assert code == 0, logs[-3000:]
    assert node["spec"]["providerID"] == f"cloudsigma://{server['uuid']}"
    assert ("ExternalIP", "94.26.101.210") in addresses(node)
    assert out.decode().split() == ["65532", "65532"]  # UID/GID, and /tmp is writable ...
    assert "Read-only file system" in err.decode()  # ... and nothing else is
    assert '"event": "ccm_starting"' in logs
    assert PASSWORD not in logs
