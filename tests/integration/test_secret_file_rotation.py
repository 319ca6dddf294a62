"""Secret files rotate without a restart (issue 14, item 6): the password file, against the emulator's accounts.

The client secret is rotated against the real Keycloak in tests/integration/test_secretless.py; here the legacy
password: CloudSigma changes it, the mounted Secret follows (a ``..data`` symlink swap), and the daemon's next
call uses the new one — no restart, no 401 after the swap, nodes keep being initialized.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient
from structlog.testing import capture_logs

from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic
from tests.integration.harness import ALICE, ALICE_PW, node_json, running_ccm, taint_keys, two_users
from tests.integration.test_e2e import UNINIT
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import register_node, wait_for
from tests.realenv.sa_issuer import write_projected_token

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_nodes")]


async def test_password_file_rotation_is_used_by_the_next_call(
        emulator_state: EmulatorState, emulator: EmulatorServer, kube_apiserver: KubeAPIServer,
        kube_api: ApiClient, tmp_path: Path) -> None:
    two_users(emulator_state)
    emulator_state.add_server(ALICE, "pw-a", nics=[public_dhcp_nic("auto")])
    emulator_state.add_server(ALICE, "pw-b", nics=[public_dhcp_nic("auto")])
    volume = tmp_path / "cloudsigma-credentials"
    password_file = write_projected_token(volume, ALICE_PW, key="password")
    await register_node(kube_api, "pw-a")
    with capture_logs() as logs:
        async with running_ccm(kube_apiserver.admin_kubeconfig, emulator, password=None,
                               password_file=password_file):
            async def initialized(name: str) -> bool:
                node = await node_json(kube_api, name)
                return UNINIT not in taint_keys(node)

            await wait_for(lambda: initialized("pw-a"), 30)
            # CloudSigma's password changes, then the Secret volume follows.
            emulator_state.users[ALICE.lower()].password = "rotated-password-2"
            write_projected_token(volume, "rotated-password-2", key="password")
            swapped = len(emulator_state.requests)
            await asyncio.sleep(2.1)  # past the snapshot's max age (2 s): pw-b needs a fresh listing
            await register_node(kube_api, "pw-b")
            await wait_for(lambda: initialized("pw-b"), 30)
            await wait_for(lambda: [r for r in emulator_state.requests[swapped:] if r.path.startswith("/api/2.0/")],
                           10)
    after = emulator_state.requests[swapped:]
    assert after and all(r.status == 200 for r in after if r.path.startswith("/api/2.0/")), \
        [(r.path, r.status) for r in after]
    reloaded = [e for e in logs if e["event"] == "watched_file_reloaded"]
    assert [(e["what"], e["path"]) for e in reloaded] == [("password", str(password_file))]
    assert "rotated-password-2" not in repr(logs)

