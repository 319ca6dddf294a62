"""The daemon's import graph: kubernetes-asyncio without its generated classes, features imported when they are on.

Each check runs in a fresh interpreter (``sys.modules`` of the test process holds whatever other tests imported).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

#: What ``cloudsigma-ccm`` imports to run a single-tenant daemon or the doctor (the fleet's process shape is imported
#: only in ``--mode=fleet``).
ENTRY_MODULES = ("ccm.cli", "ccm.single.process", "ccm.doctor")


def _modules_after(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints a JSON object as its last line."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True,
                         timeout=120)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_daemon_never_imports_the_generated_api_and_model_classes() -> None:
    result = _modules_after(f"""
        import json, sys
        for name in {ENTRY_MODULES!r}:
            __import__(name)
        from ccm.kube.library import generated_classes_loaded
        print(json.dumps({{"loaded": generated_classes_loaded(),
                          "generated": sorted(m for m in sys.modules
                                              if m.startswith(("kubernetes_asyncio.client.models.",
                                                               "kubernetes_asyncio.client.api.")))[:5]}}))
    """)
    assert result["generated"] == []
    assert result["loaded"] == []


def test_a_kubeconfig_client_is_built_without_the_generated_classes(tmp_path: object) -> None:
    result = _modules_after("""
        import asyncio, json, sys, tempfile, pathlib
        from ccm.kube.clients import api_client
        from ccm.kube.library import generated_classes_loaded
        path = pathlib.Path(tempfile.mkdtemp()) / "kubeconfig"
        path.write_text('''
        apiVersion: v1
        kind: Config
        clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
        users: [{name: u, user: {token: not-a-real-token}}]
        contexts: [{name: x, context: {cluster: c, user: u}}]
        current-context: x
        ''')
        async def main():
            client = await api_client(path)
            host = client.configuration.host
            await client.close()
            return host
        host = asyncio.run(main())
        print(json.dumps({"host": host, "loaded": generated_classes_loaded()}))
    """)
    assert result["host"] == "https://127.0.0.1:6443"
    assert result["loaded"] == []


def test_code_that_wants_the_generated_classes_still_gets_them() -> None:
    result = _modules_after("""
        import json
        import ccm.single.process
        from kubernetes_asyncio.client import CoreV1Api, V1Node
        from kubernetes_asyncio import watch
        from ccm.kube.library import ApiClient, generated_classes_loaded
        import kubernetes_asyncio.client as client
        print(json.dumps({"node": V1Node.__name__, "api": CoreV1Api.__name__, "watch": watch.Watch.__name__,
                          "same_client": client.ApiClient is ApiClient, "loaded": generated_classes_loaded()}))
    """)
    assert result == {"node": "V1Node", "api": "CoreV1Api", "watch": "Watch", "same_client": True,
                      "loaded": ["kubernetes_asyncio.client.api", "kubernetes_asyncio.client.models"]}


def test_csr_approval_and_the_fleet_are_imported_only_when_they_are_on() -> None:
    result = _modules_after(f"""
        import json, sys
        for name in {ENTRY_MODULES!r}:
            __import__(name)
        print(json.dumps({{"csr": sorted(m for m in sys.modules if m.startswith("ccm.csr")),
                          "fleet": sorted(m for m in sys.modules if m.startswith("ccm.fleet"))}}))
    """)
    assert result["csr"] == []
    assert result["fleet"] == []
