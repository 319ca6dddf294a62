"""The client's tag listing and availability groups against the emulator: every page, typed errors, bad shapes."""

from __future__ import annotations

import pytest
from aiohttp import web

from cloudsigma.client import CloudSigmaClient, RetryPolicy
from cloudsigma.errors import InvalidResponse, ServerError
from tests.emulator import EmulatorServer, EmulatorState
from tests.integration.test_cloudsigma_client import ALICE, BOB, BasicSource, make_client


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    emulator_state.add_user(ALICE, password="alice-pw")
    emulator_state.add_user(BOB, password="bob-pw")
    return emulator_state


@pytest.mark.parametrize("page_size", [0, 7, 20])
async def test_lists_every_tag_across_pages(world: EmulatorState, emulator: EmulatorServer, page_size: int) -> None:
    made = {world.add_tag(f"tag-{i}", owner=ALICE): f"tag-{i}" for i in range(45)}
    world.add_tag("bobs", owner=BOB)
    client, _ = make_client(emulator, page_size=page_size)
    async with client:
        listing = await client.list_tags()
    assert {t.uuid: t.name for t in listing.tags} == made
    assert listing.total_count == 45 and not listing.invalid
    expected_calls = 1 if page_size == 0 else -(-45 // page_size)
    assert world.counters["GET /tags/"] == expected_calls == len(listing.request_ids)


async def test_a_bad_tag_object_is_left_out_and_named(world: EmulatorState, emulator: EmulatorServer) -> None:
    world.add_tag("good", owner=ALICE)
    world.add_tag("bad", uuid="not-a-uuid", owner=ALICE)
    client, _ = make_client(emulator)
    async with client:
        listing = await client.list_tags()
    assert [t.name for t in listing.tags] == ["good"]
    assert len(listing.invalid) == 1 and "not-a-uuid" in listing.invalid[0]


async def test_availability_groups(world: EmulatorState, emulator: EmulatorServer) -> None:
    a = world.add_server(ALICE, "a", host="h1")["uuid"]
    b = world.add_server(ALICE, "b", host="h1")["uuid"]
    c = world.add_server(ALICE, "c", host="h2")["uuid"]
    client, _ = make_client(emulator)
    async with client:
        groups = await client.server_availability_groups()
    assert groups == ((a, b), (a, b), (c,))
    assert world.counters["GET /servers/availability_groups/"] == 1


async def test_availability_groups_errors_are_typed(world: EmulatorState, emulator: EmulatorServer) -> None:
    world.fail_next(10, status=500, path_prefix="/servers/availability_groups/")
    client, _ = make_client(emulator, attempts=2)
    async with client:
        with pytest.raises(ServerError) as err:
            await client.server_availability_groups()
        assert err.value.request_id
        world.clear_faults()
        world.malformed_next(2, path_prefix="/servers/availability_groups/")
        with pytest.raises(InvalidResponse):
            await client.server_availability_groups()


@pytest.mark.parametrize("body", [{"objects": []}, [["not-a-uuid"]], [None], ["3f0e8b1a-8d0b-4d39-9a59-7c3f0e8b1a11"]])
async def test_availability_groups_of_another_shape_are_refused(body: object) -> None:
    """Not CloudSigma's shape (an envelope, a flat list, junk): refused whole, never read in part."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(body, headers={"X-REQUEST-ID": "rid-1"})

    app = web.Application()
    app.router.add_get("/api/2.0/servers/availability_groups/", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        source = BasicSource(f"http://127.0.0.1:{port}/api/2.0/", ALICE, "pw")
        async with CloudSigmaClient(source, user_email=ALICE, region="zrh",
                                    retry=RetryPolicy(attempts=1)) as client:
            with pytest.raises(InvalidResponse, match="availability group") as err:
                await client.server_availability_groups()
        assert err.value.request_id == "rid-1"
    finally:
        await runner.cleanup()
