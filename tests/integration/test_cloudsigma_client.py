"""The CloudSigma client against the running emulator: pagination, typed errors, retries, addresses."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from cloudsigma.addresses import server_addresses
from cloudsigma.client import CloudSigmaClient, RequestRecord, RetryPolicy
from cloudsigma.errors import (
    InvalidResponse,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    ServerError,
    ServerNotFound,
    TransportError,
    UnattributedNotFound,
    Unauthorized,
)
from credentials.base import Credential, Identity
from tests.emulator import (
    EmulatorServer,
    EmulatorState,
    private_vlan_nic,
    public_dhcp_nic,
    public_manual_nic,
    public_static_nic,
)

ALICE, BOB = "alice@example.com", "bob@example.com"


class BasicSource:
    """A fixed basic-auth credential for the emulator."""

    def __init__(self, api_url: str, user: str, password: str) -> None:
        self.api_url, self.user, self.password = api_url, user, password
        self.invalidated = 0

    async def get(self, user_email: str, region: str) -> Credential:
        return Credential(scheme="basic", secret=SecretStr(self.password), api_url_template=self.api_url,
                          identity=Identity(provider="password", user=self.user), username=self.user)

    def invalidate(self, credential: Credential) -> None:
        self.invalidated += 1


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    emulator_state.add_user(ALICE, password="alice-pw")
    emulator_state.add_user(BOB, password="bob-pw")
    return emulator_state


def make_client(emulator: EmulatorServer, *, page_size: int = 0, timeout: float = 5.0, attempts: int = 4,
                records: list[RequestRecord] | None = None, user: str = ALICE, password: str = "alice-pw"
                ) -> tuple[CloudSigmaClient, BasicSource]:
    source = BasicSource(emulator.api_url, user, password)
    client = CloudSigmaClient(source, user_email=user, region="zrh", timeout=timeout, page_size=page_size,
                              retry=RetryPolicy(attempts=attempts, initial_backoff=0.01, max_backoff=0.05),
                              on_request=records.append if records is not None else None)
    return client, source


@pytest.mark.parametrize("page_size", [0, 7, 20])
async def test_lists_every_server_across_pages(world: EmulatorState, emulator: EmulatorServer,
                                               page_size: int) -> None:
    for i in range(45):
        world.add_server(ALICE, f"node-{i}", nics=[public_dhcp_nic("auto")])
    world.add_server(BOB, "bobs-server")
    client, _ = make_client(emulator, page_size=page_size)
    async with client:
        listing = await client.list_servers()
    assert len(listing.servers) == 45 and listing.total_count == 45 and listing.complete
    assert {s.name for s in listing.servers} == {f"node-{i}" for i in range(45)}
    expected_calls = 1 if page_size == 0 else -(-45 // page_size)
    assert world.counters["GET /servers/detail/"] == expected_calls
    assert len(listing.request_ids) == expected_calls


async def test_name_filter(world: EmulatorState, emulator: EmulatorServer) -> None:
    world.add_server(ALICE, "a")
    world.add_server(ALICE, "b")
    client, _ = make_client(emulator)
    async with client:
        listing = await client.list_servers(name="b")
    assert [s.name for s in listing.servers] == ["b"]


async def test_forbidden_is_not_not_found_and_carries_request_id(world: EmulatorState,
                                                                 emulator: EmulatorServer) -> None:
    bobs = world.add_server(BOB, "node-x")
    records: list[RequestRecord] = []
    client, _ = make_client(emulator, records=records)
    async with client:
        with pytest.raises(PermissionDenied) as denied:
            await client.get_server(bobs["uuid"])
        with pytest.raises(ServerNotFound) as missing:
            await client.get_server("00000000-0000-4000-8000-000000000000")
    assert denied.value.status == 403 and denied.value.error_type == "permission"
    assert denied.value.request_id and "LIST" in (denied.value.error_message or "")
    assert denied.value.context.user == ALICE
    assert missing.value.status == 404 and missing.value.error_type == "notexist" and missing.value.request_id
    # never retried: one request each
    assert world.counters["GET /servers/{uuid}/"] == 2
    assert [r.status for r in records] == [403, 404]
    logged = {r.request_id for r in world.requests}
    assert denied.value.request_id in logged and missing.value.request_id in logged


async def test_404_is_proof_only_as_cloudsigmas_notexist_with_request_id(world: EmulatorState,
                                                                       emulator: EmulatorServer) -> None:
    gone = "00000000-0000-4000-8000-000000000000"
    client, _ = make_client(emulator)
    async with client:
        world.proxy_html_next(1, status=404, path_prefix=f"/servers/{gone}/", method="GET")
        with pytest.raises(UnattributedNotFound) as proxied:
            await client.get_server(gone)
        with pytest.raises(ServerNotFound) as listed_shape:
            await client.get_server(gone)
        world.single_object_errors = True  # the incident report's shape
        with pytest.raises(ServerNotFound) as object_shape:
            await client.get_server(gone)
    # an edge proxy's HTML page without X-REQUEST-ID proves nothing, whatever its status
    assert not isinstance(proxied.value, NotFound)
    assert proxied.value.status == 404 and proxied.value.request_id is None and proxied.value.error_type is None
    for proven in (listed_shape.value, object_shape.value):
        assert proven.status == 404 and proven.error_type == "notexist" and proven.request_id


async def test_single_object_error_bodies(world: EmulatorState, emulator: EmulatorServer) -> None:
    world.single_object_errors = True
    bobs = world.add_server(BOB, "node-x")
    client, _ = make_client(emulator)
    async with client:
        with pytest.raises(PermissionDenied) as denied:
            await client.get_server(bobs["uuid"])
    assert denied.value.error_type == "permission"


async def test_unauthorized_reacquires_once(world: EmulatorState, emulator: EmulatorServer) -> None:
    client, source = make_client(emulator, password="wrong")
    async with client:
        with pytest.raises(Unauthorized) as exc:
            await client.list_servers()
    assert exc.value.status == 401 and exc.value.request_id
    assert source.invalidated == 1
    assert world.counters["GET /servers/detail/"] == 2


@pytest.mark.parametrize("status", [500, 503])
async def test_transient_5xx_is_retried(world: EmulatorState, emulator: EmulatorServer, status: int) -> None:
    world.add_server(ALICE, "a")
    world.fail_next(2, status=status)
    client, _ = make_client(emulator)
    async with client:
        listing = await client.list_servers()
    assert len(listing.servers) == 1
    assert world.counters["GET /servers/detail/"] == 3


async def test_5xx_gives_up_after_bounded_attempts(world: EmulatorState, emulator: EmulatorServer) -> None:
    world.fail_next(10, status=503)
    client, _ = make_client(emulator, attempts=3)
    async with client:
        with pytest.raises(ServerError) as exc:
            await client.list_servers()
    assert exc.value.status == 503 and exc.value.error_type == "concurrency" and exc.value.request_id
    assert world.counters["GET /servers/detail/"] == 3


async def test_429_waits_as_told(world: EmulatorState, emulator: EmulatorServer) -> None:
    world.add_server(ALICE, "a")
    world.rate_limit_next(1, retry_after=1)
    client, _ = make_client(emulator)
    started = time.monotonic()
    async with client:
        await client.list_servers()
    assert time.monotonic() - started >= 0.95
    assert world.counters["GET /servers/detail/"] == 2


async def test_429_beyond_limit_is_raised(world: EmulatorState, emulator: EmulatorServer) -> None:
    world.rate_limit_next(1, retry_after=3600)
    client, _ = make_client(emulator)
    async with client:
        with pytest.raises(RateLimited) as exc:
            await client.list_servers()
    assert exc.value.retry_after == 3600


async def test_timeout_malformed_and_reset(world: EmulatorState, emulator: EmulatorServer) -> None:
    world.add_server(ALICE, "a")
    client, _ = make_client(emulator, timeout=0.3, attempts=1)
    async with client:
        world.hang_next(1)
        with pytest.raises(RequestTimeout):
            await client.list_servers()
        world.malformed_next(1)
        with pytest.raises(InvalidResponse):
            await client.list_servers()
        world.reset_next(2)
        with pytest.raises(TransportError):
            await client.list_servers()
        world.clear_faults()
        assert len((await client.list_servers()).servers) == 1


async def test_missing_page_fails_the_whole_listing(world: EmulatorState, emulator: EmulatorServer) -> None:
    for i in range(30):
        world.add_server(ALICE, f"n{i}")
    world.fail_page(10, status=500, n=10)
    client, _ = make_client(emulator, page_size=10, attempts=2)
    async with client:
        with pytest.raises(ServerError):
            await client.list_servers()


async def test_addresses_of_every_nic_shape(world: EmulatorState, emulator: EmulatorServer) -> None:
    dhcp = world.add_server(ALICE, "dhcp", nics=[public_dhcp_nic("94.26.101.149", ip_v6="2a03:b0c0::5")])
    static = world.add_server(ALICE, "static", nics=[public_static_nic("185.12.5.5")])
    manual = world.add_server(ALICE, "manual", nics=[public_manual_nic()])
    vlan = world.add_server(ALICE, "vlan", nics=[public_dhcp_nic("94.26.101.150"),
                                                 private_vlan_nic("5bc05e7e-6555-4f40-add8-3b8e91447702")])
    stopped = world.add_server(ALICE, "stopped", status="stopped", nics=[public_dhcp_nic("94.26.101.151")])
    client, _ = make_client(emulator)
    async with client:
        by_uuid = {s.uuid: s for s in (await client.list_servers()).servers}
        direct = await client.get_server(static["uuid"])
    assert server_addresses(by_uuid[dhcp["uuid"]]).ipv4 == ("94.26.101.149",)
    assert server_addresses(by_uuid[dhcp["uuid"]]).ipv6 == ("2a03:b0c0::5",)
    assert server_addresses(direct).ipv4 == ("185.12.5.5",)
    assert server_addresses(by_uuid[manual["uuid"]]).unknown_public_nics == 1
    got_vlan = server_addresses(by_uuid[vlan["uuid"]])
    assert got_vlan.ipv4 == ("94.26.101.150",) and len(got_vlan.private_nics) == 1
    assert by_uuid[stopped["uuid"]].runtime is None
    assert server_addresses(by_uuid[stopped["uuid"]]).ipv4 == ()
