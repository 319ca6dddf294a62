"""The emulator's IP listing and edits and its server edits behave as CloudSigma documents them (networking.rst:
"Currently only IP meta field can be edited", meta.rst: an update replaces the map, keys ≤ 32 characters;
servers.rst: "if a server is running, only name, meta, and tags fields can be changed"): raw HTTP."""

from __future__ import annotations

import aiohttp
import pytest

from tests.emulator import public_dhcp_nic, public_static_nic
from tests.emulator.server import EmulatorServer
from tests.emulator.state import EmulatorState
from tests.integration.test_emulator import alice_auth, call

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@example.com", "bob@example.com"
PW = "alice-pw"


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    emulator_state.add_user(ALICE, password=PW)
    emulator_state.add_user(BOB, password="bob-pw")
    return emulator_state


async def test_ip_listing_pages_and_meta_edit(world: EmulatorState, emulator: EmulatorServer,
                                              emulator_http: aiohttp.ClientSession) -> None:
    subscribed = [world.add_ip(ALICE, f"185.5.0.{i}").uuid for i in range(2, 27)]  # 25: more than a page
    server = world.add_server(ALICE, "n1", nics=[public_static_nic(subscribed[0])])
    world.add_ip(BOB, "185.6.0.2")
    r = await call(emulator_http, "GET", emulator.api_url + "ips/detail/", headers=alice_auth())
    assert r.json["meta"]["total_count"] == 25 and len(r.json["objects"]) == 20  # default limit 20
    r = await call(emulator_http, "GET", emulator.api_url + "ips/detail/?limit=0", headers=alice_auth())
    by_ip = {o["uuid"]: o for o in r.json["objects"]}
    assert set(by_ip) == set(subscribed)  # never Bob's
    assert by_ip[subscribed[0]]["server"]["uuid"] == server["uuid"] and by_ip[subscribed[1]]["server"] is None
    assert by_ip[subscribed[1]]["subscription"] and by_ip[subscribed[1]]["meta"] == {}

    url = emulator.api_url + f"ips/{subscribed[1]}/"
    r = await call(emulator_http, "PUT", url, headers=alice_auth(), json={"meta": {"a": "1", "b": "2"}})
    assert r.status == 200 and r.json["meta"] == {"a": "1", "b": "2"}
    r = await call(emulator_http, "PUT", url, headers=alice_auth(),
                   json={"meta": {"c": "3"}, "server": {"uuid": server["uuid"]}})
    assert r.json["meta"] == {"c": "3"} and r.json["server"] is None  # replaced, never merged; only meta edits
    r = await call(emulator_http, "PUT", url, headers=alice_auth(), json={"meta": {"k" * 33: "x"}})
    assert r.status == 400 and r.json[0]["error_type"] == "validation"
    r = await call(emulator_http, "PUT", emulator.api_url + "ips/185.6.0.2/", headers=alice_auth(),
                   json={"meta": {}})
    assert r.status == 403
    r = await call(emulator_http, "PUT", emulator.api_url + "ips/185.9.9.9/", headers=alice_auth(),
                   json={"meta": {}})
    assert r.status == 404


def definition(server: dict[str, object], conf: str) -> dict[str, object]:
    nics = [{"mac": n["mac"], "ip_v4_conf": {"conf": conf, "ip": None}} for n in server["nics"]]  # type: ignore
    return {"name": "renamed", "cpu": 4000, "mem": server["mem"], "vnc_password": "pw", "meta": {"k": "v"},
            "nics": nics}


@pytest.mark.parametrize(("status", "rule", "changes_nic"), [
    ("running", "ignore", False), ("stopped", "ignore", True), ("running", "apply", True)])
async def test_server_edit_follows_the_running_server_rule(
        world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession, status: str,
        rule: str, changes_nic: bool) -> None:
    world.running_server_changes = rule  # type: ignore[assignment]
    server = world.add_server(ALICE, "n1", status=status, nics=[public_dhcp_nic("185.7.0.2")])
    r = await call(emulator_http, "PUT", emulator.api_url + f"servers/{server['uuid']}/", headers=alice_auth(),
                   json=definition(server, "manual"))
    assert r.status == 200
    assert r.json["name"] == "renamed" and r.json["meta"] == {"k": "v"}  # always
    assert (r.json["nics"][0]["ip_v4_conf"]["conf"] == "manual") is changes_nic
    assert (r.json["cpu"] == 4000) is changes_nic
    r = await call(emulator_http, "PUT", emulator.api_url + f"servers/{server['uuid']}/", headers=alice_auth(),
                   json={"name": "x"})
    assert r.status == 400 and r.json[0]["error_type"] == "validation"  # cpu, mem, vnc_password are required
