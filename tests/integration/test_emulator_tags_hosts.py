"""The emulator's tags, meta updates and server availability groups behave as CloudSigma documents them
(``tags.rst``, ``meta.rst``, ``availability_groups.rst``, ``general.rst``): raw HTTP against the in-process server."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.emulator.server import EmulatorProcess, EmulatorServer
from tests.emulator.state import EmulatorState
from tests.integration.test_emulator import alice_auth, basic, call

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@example.com", "bob@example.com"
PW = "alice-pw"


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    s = emulator_state
    s.add_user(ALICE, password=PW)
    s.add_user(BOB, password="bob-pw")
    return s


async def test_tags_list_names_and_resources_paginated(
        world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession) -> None:
    tags = [world.add_tag(f"tag-{i:02d}", owner=ALICE) for i in range(25)]
    bobs = world.add_tag("bobs", owner=BOB)
    server = world.add_server(ALICE, "node-1", tags=[tags[0], tags[3]])
    world.add_server(BOB, "bob-1", tags=[bobs])

    r = await call(emulator_http, "GET", emulator.api_url + "tags/", headers=alice_auth())
    assert r.status == 200 and r.request_id
    assert r.json["meta"] == {"limit": 20, "offset": 0, "total_count": 25}  # the default limit is 20
    assert len(r.json["objects"]) == 20
    r = await call(emulator_http, "GET", emulator.api_url + "tags/?limit=0", headers=alice_auth())
    objects = r.json["objects"]
    assert [o["name"] for o in objects] == [f"tag-{i:02d}" for i in range(25)]  # never bob's tags
    first = objects[0]
    assert first["uuid"] == tags[0]
    assert first["resource_uri"] == f"/api/2.0/tags/{tags[0]}/"
    assert first["owner"]["uuid"] == world.get_user(ALICE).uuid  # type: ignore[union-attr]
    assert first["resources"] == [{"owner": first["owner"], "res_type": "servers",
                                   "resource_uri": f"/api/2.0/servers/{server['uuid']}/", "uuid": server["uuid"]}]
    r = await call(emulator_http, "GET", emulator.api_url + "tags/?limit=10&offset=20", headers=alice_auth())
    assert [o["name"] for o in r.json["objects"]] == [f"tag-{i:02d}" for i in range(20, 25)]
    r = await call(emulator_http, "GET", emulator.api_url + "tags/?name=tag-03,tag-04", headers=alice_auth())
    assert [o["name"] for o in r.json["objects"]] == ["tag-03", "tag-04"]


async def test_server_objects_carry_tag_references_and_single_tag_get(
        world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession) -> None:
    tag = world.add_tag("gpu", owner=ALICE)
    bobs = world.add_tag("bobs", owner=BOB)
    server = world.add_server(ALICE, "node-1", tags=[tag])
    r = await call(emulator_http, "GET", emulator.api_url + f"servers/{server['uuid']}/", headers=alice_auth())
    assert r.json["tags"] == [{"resource_uri": f"/api/2.0/tags/{tag}/", "uuid": tag}]  # references, no name

    r = await call(emulator_http, "GET", emulator.api_url + f"tags/{tag}/", headers=alice_auth())
    assert r.status == 200 and r.json["name"] == "gpu" and r.json["resources"][0]["uuid"] == server["uuid"]
    r = await call(emulator_http, "GET", emulator.api_url + f"tags/{tag}/servers/", headers=alice_auth())
    assert [o["uuid"] for o in r.json["objects"]] == [server["uuid"]]
    r = await call(emulator_http, "GET", emulator.api_url + f"tags/{bobs}/", headers=alice_auth())
    assert r.status == 403 and r.json[0]["error_type"] == "permission"
    r = await call(emulator_http, "GET", emulator.api_url + "tags/00000000-0000-4000-8000-000000000000/",
                   headers=alice_auth())
    assert r.status == 404 and r.json[0]["error_type"] == "notexist" and r.request_id


async def test_meta_and_tags_change_at_run_time(
        world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession) -> None:
    a, b = world.add_tag("a", owner=ALICE), world.add_tag("b", owner=ALICE)
    server = world.add_server(ALICE, "node-1", meta={"pool": "blue", "keep": "x"}, tags=[a])
    world.set_server_meta(server["uuid"], {"pool": "green"})  # the whole map is replaced
    world.set_server_tags(server["uuid"], [b])
    r = await call(emulator_http, "GET", emulator.api_url + f"servers/{server['uuid']}/", headers=alice_auth())
    assert r.json["status"] == "running"
    assert r.json["meta"] == {"pool": "green"}
    assert [t["uuid"] for t in r.json["tags"]] == [b]
    with pytest.raises(ValueError, match="1-32 characters"):
        world.set_server_meta(server["uuid"], {"k" * 33: "v"})
    with pytest.raises(ValueError, match="unknown tag"):
        world.set_server_tags(server["uuid"], ["00000000-0000-4000-8000-000000000000"])


async def test_availability_groups_list_running_servers_sharing_a_host(
        world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession) -> None:
    s1 = world.add_server(ALICE, "n1", host="h1")["uuid"]
    s2 = world.add_server(ALICE, "n2", host="h1")["uuid"]
    s3 = world.add_server(ALICE, "n3", host="h2")["uuid"]
    world.add_server(ALICE, "n4", host="h1", status="stopped")
    world.add_server(BOB, "bob-1", host="h1")
    url = emulator.api_url + "servers/availability_groups/"

    r = await call(emulator_http, "GET", url, headers=alice_auth())
    assert r.status == 200 and r.request_id
    # As the docs' example: one array per running server, each naming every server on its host (itself too);
    # stopped servers and other users' servers are in none.
    assert r.json == [[s1, s2], [s1, s2], [s3]]
    world.availability_groups_per_server = False
    r = await call(emulator_http, "GET", url, headers=alice_auth())
    assert r.json == [[s1, s2], [s3]]

    world.move_server(s2, "h2")
    r = await call(emulator_http, "GET", url, headers=alice_auth())
    assert sorted(map(sorted, r.json)) == sorted([[s1], sorted([s2, s3])])
    r = await call(emulator_http, "GET", url + f"{s3}/", headers=alice_auth())
    assert sorted(r.json) == sorted([s2, s3])
    world.set_status(s3, "stopped")
    r = await call(emulator_http, "GET", url + f"{s3}/", headers=alice_auth())
    assert r.json == []
    r = await call(emulator_http, "GET", url, headers=basic(ALICE, "wrong"))
    assert r.status == 401
    assert world.counters["GET /servers/availability_groups/"] == 4


async def test_subprocess_control_changes_meta_tags_and_host(emulator_http: aiohttp.ClientSession) -> None:
    seed: dict[str, Any] = {
        "users": [{"email": ALICE, "password": PW}],
        "tags": [{"name": "gpu", "uuid": "6a1bd6a3-6a0f-4f5e-9a3c-3b1d7f3e2c11", "owner": ALICE}],
        "servers": [{"owner": ALICE, "name": "n1", "uuid": "3f0e8b1a-8d0b-4d39-9a59-7c3f0e8b1a11", "host": "h1",
                     "meta": {"pool": "a"}}],
    }
    srv = seed["servers"][0]["uuid"]
    async with EmulatorProcess(seed=seed) as emu:
        await asyncio.to_thread(emu.control, "POST", f"servers/{srv}/meta", {"meta": {"pool": "b"}})
        await asyncio.to_thread(emu.control, "POST", f"servers/{srv}/tags", {"tags": [seed["tags"][0]["uuid"]]})
        await asyncio.to_thread(emu.control, "POST", f"servers/{srv}/host", {"host": "h9"})
        made = await asyncio.to_thread(emu.control, "POST", "tags", {"name": "new", "owner": ALICE})
        r = await call(emulator_http, "GET", emu.api_url + f"servers/{srv}/", headers=basic(ALICE, PW))
        assert r.json["meta"] == {"pool": "b"}
        assert r.json["tags"][0]["uuid"] == seed["tags"][0]["uuid"]
        r = await call(emulator_http, "GET", emu.api_url + "tags/?limit=0", headers=basic(ALICE, PW))
        assert {o["name"] for o in r.json["objects"]} == {"gpu", "new"}
        assert made["uuid"] in {o["uuid"] for o in r.json["objects"]}
        r = await call(emulator_http, "GET", emu.api_url + "servers/availability_groups/", headers=basic(ALICE, PW))
        assert r.json == [[srv]]
