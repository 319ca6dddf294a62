"""``/debug/tenants``: the fleet's view of every tenant, scrubbed of known secrets; absent in single-tenant mode."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from ccm.health import HealthState, create_app
from ccm.logging import Redactor
from ccm.metrics import Metrics


async def test_debug_tenants_lists_the_fleet_view_redacted_and_is_absent_in_single_mode() -> None:
    redactor = Redactor()
    redactor.add("leaked-token-123456789")

    def view() -> dict[str, Any]:
        return {"mode": "fleet", "replica": "r1", "tenants": [
            {"tenant": "team/c1", "owner": "r1", "status": {"last_error": {"error": "401 leaked-token-123456789"}}}]}

    state = HealthState(leading=True, tenants=view, redact=redactor.redact_text)
    async with TestClient(TestServer(create_app(state, Metrics()))) as http:
        resp = await http.get("/debug/tenants")
        assert resp.status == 200
        body = await resp.json()
        assert body["tenants"][0]["owner"] == "r1" and "generated_at" in body
        assert "leaked-token-123456789" not in await resp.text()
    async with TestClient(TestServer(create_app(HealthState(), Metrics()))) as http:
        resp = await http.get("/debug/tenants")
        assert resp.status == 404 and "single-tenant" in await resp.text()
