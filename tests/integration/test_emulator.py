"""The CloudSigma emulator behaves like the documented API (raw HTTP against the in-process server)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.emulator.auth import SigningKey, parse_jwt
from tests.emulator.oauth import JWKS_KEY
from tests.emulator.server import EmulatorProcess, EmulatorServer
from tests.emulator.state import (
    EmulatorState,
    private_vlan_nic,
    public_dhcp_nic,
    public_ipv6_nic,
    public_manual_nic,
    public_static_nic,
)

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@example.com", "bob@example.com"
PW = "alice-pw"
UMA = "urn:ietf:params:oauth:grant-type:uma-ticket"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class Resp:
    def __init__(self, status: int, headers: CIMultiDict[str], text: str) -> None:
        self.status, self.headers, self.text = status, headers, text

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def request_id(self) -> str | None:
        return self.headers.get("X-REQUEST-ID")


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Resp:
    async with http.request(method, url, **kw) as r:
        return Resp(r.status, CIMultiDict(r.headers), await r.text())


def basic(email: str, password: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(email, password)}


def alice_auth() -> dict[str, str]:
    return basic(ALICE, PW)


def uid(state: EmulatorState, email: str) -> str:
    user = state.get_user(email)
    assert user is not None
    return user.uuid


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    """alice (45 servers + a few special ones later), bob (2 servers), a service-provider client."""
    s = emulator_state
    s.add_user(ALICE, password=PW, uuid="4705fb9a-0591-4ead-9d42-b2e86493f9b4")
    s.add_user(BOB, password="bob-pw")
    for i in range(45):
        s.add_server(ALICE, f"node-{i:02d}", nics=[public_dhcp_nic("auto")])
    s.add_server(BOB, "bob-1", uuid="feaf4d9d-7cdc-4ecc-b2f7-bef11a0c7519")
    s.add_server(BOB, "bob-2")
    s.add_client("kube-dc-partner", "sp-secret", may_impersonate=True)
    return s


# ------------------------------------------------------------------------------------------- lists


async def test_default_limit_is_20_and_limit_0_returns_all(
        world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession) -> None:
    r = await call(emulator_http, "GET", emulator.api_url + "servers/", headers=alice_auth())
    assert r.status == 200
    assert r.json["meta"] == {"limit": 20, "offset": 0, "total_count": 45}
    assert len(r.json["objects"]) == 20

    r = await call(emulator_http, "GET", emulator.api_url + "servers/detail/?limit=0", headers=alice_auth())
    assert r.json["meta"] == {"limit": 0, "offset": 0, "total_count": 45}
    assert len(r.json["objects"]) == 45
    assert {o["owner"]["uuid"] for o in r.json["objects"]} == {uid(world, ALICE)}


async def test_offset_paging_visits_every_server_once(
        world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession) -> None:
    seen: list[str] = []
    offset = 0
    while True:
        r = await call(emulator_http, "GET", emulator.api_url + f"servers/?limit=20&offset={offset}",
                       headers=alice_auth())
        assert r.json["meta"]["offset"] == offset
        seen += [o["uuid"] for o in r.json["objects"]]
        offset += 20
        if offset >= r.json["meta"]["total_count"]:
            break
    assert len(seen) == len(set(seen)) == 45
    r = await call(emulator_http, "GET", emulator.api_url + "servers/?offset=40", headers=alice_auth())
    assert len(r.json["objects"]) == 5
    r = await call(emulator_http, "GET", emulator.api_url + "servers/?limit=abc", headers=alice_auth())
    assert r.status == 400
    assert r.json[0]["error_type"] == "validation"


async def test_short_and_detail_objects(
        world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession) -> None:
    r = await call(emulator_http, "GET", emulator.api_url + "servers/?limit=1", headers=alice_auth())
    assert set(r.json["objects"][0]) == {"uuid", "name", "status", "runtime", "owner", "resource_uri"}
    r = await call(emulator_http, "GET", emulator.api_url + "servers/detail/?limit=1", headers=alice_auth())
    full = r.json["objects"][0]
    for key in ("cpu", "smp", "mem", "meta", "tags", "nics", "runtime", "owner", "resource_uri", "status"):
        assert key in full
    assert full["resource_uri"] == f"/api/2.0/servers/{full['uuid']}/"
    assert full["runtime"]["nics"][0]["interface_type"] == "public"


async def test_filters(world: EmulatorState, emulator: EmulatorServer,
                       emulator_http: aiohttp.ClientSession) -> None:
    tag = world.add_tag("k8s")
    special = world.add_server(ALICE, "weird,name", tags=[tag])
    world.add_server(ALICE, "Worker-A", tags=[tag])
    base = emulator.api_url + "servers/"

    async def names(query: str) -> list[str]:
        r = await call(emulator_http, "GET", base + "?limit=0&" + query, headers=alice_auth())
        assert r.status == 200, r.text
        return sorted(o["name"] for o in r.json["objects"])

    assert await names("name=node-03") == ["node-03"]
    assert await names("name=node-03,node-07") == ["node-03", "node-07"]
    assert await names("name=node-03&name=node-07") == []  # separate parameters AND
    assert await names("name__contains=WORKER") == ["Worker-A"]  # case-insensitive
    assert await names("name__contains=node-4") == ["node-40", "node-41", "node-42", "node-43", "node-44"]
    assert await names(f"uuid={special['uuid']}") == ["weird,name"]
    assert await names(f"tag={tag}") == ["Worker-A", "weird,name"]
    assert await names(f"tag={tag}&name__contains=worker") == ["Worker-A"]
    assert await names("name=weird%5C,name") == ["weird,name"]  # escaped comma
    # bob's servers never show up in alice's lists
    assert await names("name=bob-1") == []


# ------------------------------------------------------------------------------------------- errors


async def test_another_users_server_is_403_with_request_id(
        world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession) -> None:
    bob_server = "feaf4d9d-7cdc-4ecc-b2f7-bef11a0c7519"
    r = await call(emulator_http, "GET", emulator.api_url + f"servers/{bob_server}/", headers=alice_auth())
    assert r.status == 403
    assert r.json == [{
        "error_type": "permission",
        "error_message": "User 4705fb9a-0591-4ead-9d42-b2e86493f9b4 does not have all of the permissions [LIST] "
                         f"in order to complete the operation on resources [{bob_server}]",
        "error_point": None,
    }]
    assert r.request_id is not None
    assert uuid.UUID(r.request_id)
    rec = world.requests[-1]
    assert (rec.request_id, rec.status, rec.user, rec.auth_kind) == (r.request_id, 403, ALICE, "basic")

    world.single_object_errors = True
    r = await call(emulator_http, "GET", emulator.api_url + f"servers/{bob_server}/", headers=alice_auth())
    assert r.status == 403
    assert isinstance(r.json, dict)
    assert r.json["error_type"] == "permission"


async def test_404_and_401(world: EmulatorState, emulator: EmulatorServer,
                           emulator_http: aiohttp.ClientSession) -> None:
    r = await call(emulator_http, "GET", emulator.api_url + f"servers/{uuid.uuid4()}/", headers=alice_auth())
    assert r.status == 404
    assert r.json[0]["error_type"] == "notexist"
    assert r.request_id
    r = await call(emulator_http, "GET", emulator.api_url + "nosuchthing/", headers=alice_auth())
    assert r.status == 404
    assert r.json[0]["error_type"] == "notexist"
    assert r.request_id
    for kw in ({}, {"headers": basic(ALICE, "wrong")}, {"headers": basic("x@y.z", PW)},
               {"headers": bearer("not-a-jwt")}, {"headers": {"Authorization": "Digest foo"}}):
        r = await call(emulator_http, "GET", emulator.api_url + "servers/", **kw)
        assert r.status == 401, kw
        assert isinstance(r.json, list)
        assert r.request_id
    assert world.counters["GET /servers/"] == 5


# ------------------------------------------------------------------------------------------- NICs & IPs


async def test_nic_kinds_and_runtime(world: EmulatorState, emulator: EmulatorServer,
                                     emulator_http: aiohttp.ClientSession) -> None:
    vlan = str(uuid.uuid4())
    srv = world.add_server(ALICE, "mixed", nics=[
        public_dhcp_nic("94.26.101.149", ip_v6="2a02:1338::10"), public_static_nic("185.12.6.183"),
        public_manual_nic(), private_vlan_nic(vlan), public_ipv6_nic("2a02:1338::99")])

    async def get() -> dict[str, Any]:
        r = await call(emulator_http, "GET", emulator.api_url + f"servers/{srv['uuid']}/", headers=alice_auth())
        assert r.status == 200
        body: dict[str, Any] = r.json
        return body

    s = await get()
    dhcp, static, manual, private, v6 = s["nics"]
    assert dhcp["ip_v4_conf"] == {"conf": "dhcp", "ip": None}
    assert dhcp["runtime"]["ip_v4"]["uuid"] == "94.26.101.149"
    assert dhcp["runtime"]["ip_v6"]["uuid"] == "2a02:1338::10"
    assert static["ip_v4_conf"]["ip"]["uuid"] == "185.12.6.183"
    assert static["runtime"]["ip_v4"]["uuid"] == "185.12.6.183"
    assert manual["ip_v4_conf"]["conf"] == "manual"
    assert manual["runtime"]["ip_v4"] is None
    assert private["ip_v4_conf"] is None
    assert private["vlan"]["uuid"] == vlan
    assert private["runtime"]["interface_type"] == "private"
    assert private["runtime"]["ip_v4"] is None
    assert v6["ip_v4_conf"] is None
    assert v6["ip_v6_conf"]["ip"]["uuid"] == "2a02:1338::99"
    public_rt = [n for n in s["runtime"]["nics"] if n["interface_type"] == "public"]
    assert public_rt[0]["ip_v4"]["uuid"] == "94.26.101.149"

    world.set_status(srv["uuid"], "stopped")
    s = await get()
    assert s["status"] == "stopped"
    assert s["runtime"] is None
    assert all(n["runtime"] is None for n in s["nics"])
    assert s["nics"][1]["ip_v4_conf"]["ip"]["uuid"] == "185.12.6.183"  # static survives

    world.set_server_ip(srv["uuid"], "94.26.101.150")  # new DHCP lease on the next boot
    world.set_status(srv["uuid"], "running")
    s = await get()
    assert s["nics"][0]["runtime"]["ip_v4"]["uuid"] == "94.26.101.150"

    world.remove_server(srv["uuid"])
    r = await call(emulator_http, "GET", emulator.api_url + f"servers/{srv['uuid']}/", headers=alice_auth())
    assert r.status == 404


async def test_ips_list_with_server_reference(world: EmulatorState, emulator: EmulatorServer,
                                              emulator_http: aiohttp.ClientSession) -> None:
    dhcp = world.add_server(ALICE, "dhcp", nics=[public_dhcp_nic("94.26.101.149")])
    static = world.add_server(ALICE, "static", nics=[public_static_nic("185.12.6.183")], status="stopped")
    world.add_ip(ALICE, "185.12.6.200")
    world.add_server(BOB, "bob-static", nics=[public_static_nic("31.171.1.1")])

    async def ips(detail: bool = False) -> dict[str, Any]:
        r = await call(emulator_http, "GET", emulator.api_url + ("ips/detail/" if detail else "ips/") + "?limit=0",
                       headers=alice_auth())
        assert r.status == 200
        return {o["uuid"]: o for o in r.json["objects"]}

    listed = await ips()
    assert listed["94.26.101.149"]["server"]["uuid"] == dhcp["uuid"]
    assert listed["185.12.6.183"]["server"]["uuid"] == static["uuid"]  # static: attached even when stopped
    assert listed["185.12.6.200"]["server"] is None
    assert "31.171.1.1" not in listed
    assert len(listed) == 45 + 3  # the 45 node-* dhcp leases too
    assert "netmask" in (await ips(detail=True))["185.12.6.200"]

    r = await call(emulator_http, "GET", emulator.api_url + "ips/185.12.6.183/", headers=alice_auth())
    assert r.status == 200
    assert r.json["server"]["uuid"] == static["uuid"]
    r = await call(emulator_http, "GET", emulator.api_url + "ips/31.171.1.1/", headers=alice_auth())
    assert r.status == 403
    assert r.json[0]["error_type"] == "permission"
    r = await call(emulator_http, "GET", emulator.api_url + "ips/1.2.3.4/", headers=alice_auth())
    assert r.status == 404

    world.set_status(dhcp["uuid"], "stopped")  # the DHCP lease goes back to the pool
    assert "94.26.101.149" not in await ips()
    assert world.counters["GET /ips/{ip}/"] == 3


# ------------------------------------------------------------------------------------------- OAuth & bearer


async def _token(http: aiohttp.ClientSession, emu: EmulatorServer, data: dict[str, str],
                 **kw: Any) -> Resp:
    return await call(http, "POST", emu.token_url(), data=data, **kw)


async def test_service_provider_impersonation_flow(
        world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession) -> None:
    http = emulator_http
    r = await _token(http, emulator, {"grant_type": "client_credentials", "client_id": "kube-dc-partner",
                                      "client_secret": "sp-secret"})
    assert r.status == 200, r.text
    sa_token = r.json["access_token"]
    assert r.json["token_type"] == "Bearer"
    assert r.json["expires_in"] == world.token_lifetime

    r = await _token(http, emulator, {"grant_type": UMA, "audience": "service_provider_api"},
                     headers=bearer(sa_token))
    assert r.status == 200, r.text
    rpt = r.json["access_token"]
    assert "service_provider_api" in str(parse_jwt(rpt).claims["aud"])

    body = {"user_email": ALICE, "subject_token": sa_token}
    r = await call(http, "POST", emulator.impersonate_url, json=body, headers=bearer(rpt))
    assert r.status == 200, r.text
    assert r.json["token_type"] == "Bearer"
    assert r.json["expires_in"] == world.token_lifetime
    user_token = r.json["access_token"]
    claims = parse_jwt(user_token).claims
    alice = world.get_user(ALICE)
    assert alice is not None
    assert claims["email"] == claims["preferred_username"] == ALICE
    assert claims["sub"] == alice.uuid
    assert claims["azp"] == "kube-dc-partner"
    assert claims["exp"] > time.time()

    r = await call(http, "GET", emulator.api_url + "servers/?limit=0", headers=bearer(user_token))
    assert r.status == 200
    assert r.json["meta"]["total_count"] == 45
    rec = world.requests[-1]
    assert (rec.user, rec.auth_kind, rec.token_source, rec.token_azp) == (ALICE, "bearer", "emulator",
                                                                         "kube-dc-partner")
    # the same token cannot read bob's server
    r = await call(http, "GET", emulator.api_url + "servers/feaf4d9d-7cdc-4ecc-b2f7-bef11a0c7519/",
                   headers=bearer(user_token))
    assert r.status == 403

    # failures: the client token is not an RPT, garbage RPT, unknown user
    r = await call(http, "POST", emulator.impersonate_url, json=body, headers=bearer(sa_token))
    assert r.status == 401
    r = await call(http, "POST", emulator.impersonate_url, json=body, headers=bearer(rpt[:-4] + "AAAA"))
    assert r.status == 401
    assert r.request_id
    r = await call(http, "POST", emulator.impersonate_url, json={**body, "user_email": "ghost@example.com"},
                   headers=bearer(rpt))
    assert r.status == 404
    assert r.json[0]["error_type"] == "notexist"

    for grant in ("client_credentials", "uma-ticket", "impersonate"):
        assert world.counters[f"token:{grant}"] == 1, grant
    assert world.counters["POST /service_provider/api/v1/user/impersonate"] == 4


async def test_oauth_client_errors(world: EmulatorState, emulator: EmulatorServer,
                                   emulator_http: aiohttp.ClientSession) -> None:
    http = emulator_http
    r = await _token(http, emulator, {"grant_type": "client_credentials", "client_id": "kube-dc-partner",
                                      "client_secret": "wrong"})
    assert r.status == 401
    assert r.json["error"] in ("invalid_client", "unauthorized_client")
    r = await _token(http, emulator, {"grant_type": "client_credentials"},
                     headers=basic("kube-dc-partner", "sp-secret"))
    assert r.status == 200  # client_secret_basic
    world.add_client("plain", "p", may_impersonate=False)
    r = await _token(http, emulator, {"grant_type": "client_credentials", "client_id": "plain", "client_secret": "p"})
    r = await _token(http, emulator, {"grant_type": UMA, "audience": "service_provider_api"},
                     headers=bearer(r.json["access_token"]))
    assert r.status == 403
    assert r.json["error"] == "access_denied"
    r = await _token(http, emulator, {"grant_type": "foo", "client_id": "plain", "client_secret": "p"})
    assert r.status == 400
    assert r.json["error"] == "unsupported_grant_type"
    r = await call(http, "POST", emulator.token_url("nope"), data={"grant_type": "client_credentials"})
    assert r.status == 404

    r = await call(http, "GET", emulator.realm_url() + "/.well-known/openid-configuration")
    assert r.json["token_endpoint"] == emulator.token_url()
    assert r.json["issuer"] == emulator.realm_url()
    r = await call(http, "GET", emulator.jwks_url())
    assert r.json["keys"][0]["kid"] == world.signing_key.kid


async def test_token_exchange(world: EmulatorState, emulator: EmulatorServer,
                              emulator_http: aiohttp.ClientSession) -> None:
    http = emulator_http
    creds = {"client_id": "kube-dc-partner", "client_secret": "sp-secret"}
    form = {"grant_type": EXCHANGE, "requested_subject": ALICE, "requested_token_type": ACCESS_TOKEN_TYPE,
            "audience": "cloudsigma-api", **creds}
    r = await _token(http, emulator, form)
    assert r.status == 200, r.text
    assert r.json["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert "refresh_token" not in r.json
    claims = parse_jwt(r.json["access_token"]).claims
    assert claims["sub"] == uid(world, ALICE)
    assert claims["aud"] == "cloudsigma-api"
    r2 = await call(http, "GET", emulator.api_url + "servers/", headers=bearer(r.json["access_token"]))
    assert r2.status == 200
    assert r2.json["meta"]["total_count"] == 45

    # legacy V1 without requested_token_type also returns a refresh token
    r = await _token(http, emulator, {k: v for k, v in form.items() if k != "requested_token_type"})
    assert r.status == 200
    assert "refresh_token" in r.json
    # by user id works; unknown user and a client without permission look the same
    r = await _token(http, emulator, {**form, "requested_subject": uid(world, BOB)})
    assert r.status == 200
    r = await _token(http, emulator, {**form, "requested_subject": "ghost@example.com"})
    denied = {"error": "access_denied", "error_description": "Client not allowed to exchange"}
    assert (r.status, r.json) == (403, denied)
    world.add_client("nope", "n", may_impersonate=False)
    r = await _token(http, emulator, {**form, "client_id": "nope", "client_secret": "n"})
    assert (r.status, r.json["error"]) == (403, "access_denied")
    # looked up by username, not by email
    world.add_user("carol@example.com", password="c", username="carol")
    r = await _token(http, emulator, {**form, "requested_subject": "carol@example.com"})
    assert r.status == 403
    r = await _token(http, emulator, {**form, "requested_subject": "carol"})
    assert r.status == 200
    # client auth and request errors
    r = await _token(http, emulator, {**form, "client_secret": "bad"})
    assert r.status == 401
    assert r.json["error"] in ("invalid_client", "unauthorized_client")
    r = await _token(http, emulator, {"grant_type": EXCHANGE, **creds})
    assert (r.status, r.json["error"]) == (400, "invalid_request")
    r = await _token(http, emulator, {k: v for k, v in form.items() if k not in creds},
                     headers=basic("kube-dc-partner", "sp-secret"))
    assert r.status == 200
    world.token_exchange_mode = "standard"
    r = await _token(http, emulator, form)
    assert r.status == 400
    assert "not supported for standard token exchange" in r.json["error_description"]

    assert world.counters["token:token-exchange"] == 5
    assert world.counters["keycloak:sessions"] == 5


async def test_bearer_expiry_and_key_rotation(world: EmulatorState, emulator: EmulatorServer,
                                              emulator_http: aiohttp.ClientSession) -> None:
    world.token_lifetime = 60
    r = await _token(emulator_http, emulator, {"grant_type": "password", "username": ALICE, "password": PW,
                                               "client_id": "kube-dc-partner", "client_secret": "sp-secret"})
    token = r.json["access_token"]
    url = emulator.api_url + "servers/"
    assert (await call(emulator_http, "GET", url, headers=bearer(token))).status == 200
    world.advance_time(61)
    r = await call(emulator_http, "GET", url, headers=bearer(token))
    assert r.status == 401
    assert "expired" in r.json[0]["error_message"]
    world.time_offset = 0
    assert (await call(emulator_http, "GET", url, headers=bearer(token))).status == 200
    world.rotate_signing_key()
    assert (await call(emulator_http, "GET", url, headers=bearer(token))).status == 401
    # tokens of another emulator instance are unknown here
    other = EmulatorState()
    other.add_user(ALICE, password=PW)
    foreign = other.signing_key.sign({"email": ALICE, "exp": time.time() + 60})
    assert (await call(emulator_http, "GET", url, headers=bearer(foreign))).status == 401
    ok = world.signing_key.sign({"email": ALICE, "exp": time.time() + 60})
    assert (await call(emulator_http, "GET", url, headers=bearer(ok))).status == 200
    # a token for a client's service account (no email) maps to nobody
    r = await _token(emulator_http, emulator, {"grant_type": "client_credentials", "client_id": "kube-dc-partner",
                                               "client_secret": "sp-secret"})
    assert (await call(emulator_http, "GET", url, headers=bearer(r.json["access_token"]))).status == 401


@pytest.fixture
async def external_idp() -> AsyncIterator[tuple[str, list[SigningKey]]]:
    """A stand-in for a real Keycloak's certs endpoint, serving whatever keys the list holds."""
    keys = [SigningKey.generate()]
    app = web.Application()

    async def certs(_: web.Request) -> web.Response:
        return web.json_response({"keys": [k.public_jwk() for k in keys]})

    app.router.add_get("/realms/ext/protocol/openid-connect/certs", certs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/realms/ext/protocol/openid-connect/certs", keys
    await runner.cleanup()


async def test_external_jwks(world: EmulatorState, emulator: EmulatorServer, emulator_http: aiohttp.ClientSession,
                             external_idp: tuple[str, list[SigningKey]]) -> None:
    world.jwks_url, keys = external_idp
    now = int(time.time())
    claims = {"iss": "https://kc.example/realms/ext", "exp": now + 60, "iat": now, "preferred_username": ALICE,
              "azp": "ccm"}
    url = emulator.api_url + "servers/"
    r = await call(emulator_http, "GET", url, headers=bearer(keys[0].sign(claims)))
    assert r.status == 200
    assert r.json["meta"]["total_count"] == 45
    assert world.requests[-1].token_source == "external"
    # key rotation at the IdP: an unknown kid triggers a refetch
    keys.append(SigningKey.generate())
    r = await call(emulator_http, "GET", url, headers=bearer(keys[1].sign(claims)))
    assert r.status == 200
    assert emulator.app is not None
    assert emulator.app[JWKS_KEY].fetch_count == 2
    # expired, unknown key, and wrong issuer (when one is required)
    r = await call(emulator_http, "GET", url, headers=bearer(keys[0].sign({**claims, "exp": now - 5})))
    assert r.status == 401
    r = await call(emulator_http, "GET", url, headers=bearer(SigningKey.generate().sign(claims)))
    assert r.status == 401
    world.external_issuer = "https://other/realms/x"
    r = await call(emulator_http, "GET", url, headers=bearer(keys[0].sign(claims)))
    assert r.status == 401


# ------------------------------------------------------------------------------------------- faults


async def test_fault_error_statuses_then_recovery(world: EmulatorState, emulator: EmulatorServer,
                                                  emulator_http: aiohttp.ClientSession) -> None:
    url = emulator.api_url + "servers/"
    world.fail_next(1, status=500)
    world.fail_next(1, status=503, path_prefix="/servers/")
    r = await call(emulator_http, "GET", url, headers=alice_auth())
    assert r.status == 500
    assert r.json[0]["error_type"] == "backend"
    assert r.request_id
    r = await call(emulator_http, "GET", url, headers=alice_auth())
    assert r.status == 503
    assert r.json[0]["error_type"] == "concurrency"
    assert (await call(emulator_http, "GET", url, headers=alice_auth())).status == 200

    world.rate_limit_next(2, retry_after=7, path_prefix="/api/2.0/ips/")
    assert (await call(emulator_http, "GET", url, headers=alice_auth())).status == 200  # other path unaffected
    r = await call(emulator_http, "GET", emulator.api_url + "ips/", headers=alice_auth())
    assert r.status == 429
    assert r.headers["Retry-After"] == "7"
    assert world.counters["fault:error"] == 2
    assert world.counters["fault:rate_limit"] == 1
    assert [f.kind for f in world.faults.rules] == ["rate_limit"]
    world.clear_faults()
    assert (await call(emulator_http, "GET", emulator.api_url + "ips/", headers=alice_auth())).status == 200


async def test_fault_hang_malformed_reset(world: EmulatorState, emulator: EmulatorServer,
                                          emulator_http: aiohttp.ClientSession) -> None:
    url = emulator.api_url + "servers/"
    world.hang_next(1)
    t0 = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await call(emulator_http, "GET", url, headers=alice_auth(), timeout=aiohttp.ClientTimeout(total=0.5))
    assert 0.4 < time.monotonic() - t0 < 3

    world.malformed_next(1)
    async with emulator_http.get(url, headers=alice_auth()) as resp:
        assert resp.status == 200
        with pytest.raises(json.JSONDecodeError):
            await resp.json()

    # aiohttp silently retries an idempotent request once when a reused keep-alive connection drops
    world.reset_next(1)
    assert (await call(emulator_http, "GET", url, headers=alice_auth())).status == 200
    world.reset_next(2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(emulator_http, "GET", url, headers=alice_auth())
    assert (await call(emulator_http, "GET", url, headers=alice_auth())).status == 200
    faults = [r.fault for r in world.requests]
    assert faults == ["hang", "malformed", "reset", None, "reset", "reset", None]
    assert world.requests[2].status is None
    assert world.counters["fault:reset"] == 3


async def test_fault_missing_page_and_latency(world: EmulatorState, emulator: EmulatorServer,
                                              emulator_http: aiohttp.ClientSession) -> None:
    url = emulator.api_url + "servers/detail/"
    world.fail_page(20, status=500, path_prefix="/servers/detail/")
    assert (await call(emulator_http, "GET", url + "?offset=0", headers=alice_auth())).status == 200
    r = await call(emulator_http, "GET", url + "?offset=20", headers=alice_auth())
    assert r.status == 500
    assert r.json[0]["error_type"] == "backend"
    assert (await call(emulator_http, "GET", url + "?offset=40", headers=alice_auth())).status == 200
    assert (await call(emulator_http, "GET", url + "?offset=20", headers=alice_auth())).status == 200  # once

    world.set_latency(120)
    t0 = time.monotonic()
    assert (await call(emulator_http, "GET", url + "?limit=1", headers=alice_auth())).status == 200
    assert time.monotonic() - t0 >= 0.11
    t0 = time.monotonic()
    assert (await call(emulator_http, "GET", emulator.control_url + "/stats?requests=0")).status == 200
    assert time.monotonic() - t0 < 0.1  # never on the control plane


async def test_faults_via_control_endpoint(world: EmulatorState, emulator: EmulatorServer,
                                           emulator_http: aiohttp.ClientSession) -> None:
    r = await call(emulator_http, "POST", emulator.control_url + "/faults",
                   json={"faults": [{"kind": "error", "status": 503, "count": 2, "path_prefix": "/servers/"}]})
    assert r.status == 200
    assert len(r.json["faults"]) == 1
    # a fault on everything does not touch /_emulator/*
    r = await call(emulator_http, "POST", emulator.control_url + "/faults", json={"kind": "reset", "count": None,
                                                                                   "path_prefix": "/realms/"})
    assert (await call(emulator_http, "GET", emulator.control_url + "/faults")).status == 200
    statuses = [(await call(emulator_http, "GET", emulator.api_url + "servers/", headers=alice_auth())).status
                for _ in range(3)]
    assert statuses == [503, 503, 200]
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(emulator_http, "GET", emulator.jwks_url())
    r = await call(emulator_http, "POST", emulator.control_url + "/faults", json={"kind": "bogus"})
    assert r.status == 400
    r = await call(emulator_http, "DELETE", emulator.control_url + "/faults")
    assert r.json["faults"] == []


# ------------------------------------------------------------------------------------------- counters


async def test_counters_log_and_stats_endpoint(world: EmulatorState, emulator: EmulatorServer,
                                               emulator_http: aiohttp.ClientSession) -> None:
    some = next(iter(world.servers))
    for _ in range(3):
        await call(emulator_http, "GET", emulator.api_url + "servers/detail/", headers=alice_auth())
    await call(emulator_http, "GET", emulator.api_url + f"servers/{some}/", headers=alice_auth())
    await call(emulator_http, "GET", emulator.api_url + f"servers/{uuid.uuid4()}/", headers=alice_auth())
    assert world.counters["GET /servers/detail/"] == 3
    assert world.counters["GET /servers/{uuid}/"] == 2
    assert [r.status for r in world.requests_to("GET /servers/{uuid}/")] == [200, 404]

    r = await call(emulator_http, "GET", emulator.control_url + "/stats")
    assert r.json["counters"]["GET /servers/detail/"] == 3
    assert len(r.json["requests"]) == 5
    assert r.json["requests"][0]["user"] == ALICE
    assert "GET /_emulator/stats" not in r.json["counters"]
    await call(emulator_http, "DELETE", emulator.control_url + "/stats")
    assert not world.counters
    assert not world.requests


async def test_control_plane_changes_the_world(world: EmulatorState, emulator: EmulatorServer,
                                               emulator_http: aiohttp.ClientSession) -> None:
    bob_server = "feaf4d9d-7cdc-4ecc-b2f7-bef11a0c7519"
    r = await call(emulator_http, "POST", emulator.control_url + f"/servers/{bob_server}/owner",
                   json={"email": ALICE})
    assert r.status == 200
    r = await call(emulator_http, "GET", emulator.api_url + f"servers/{bob_server}/", headers=alice_auth())
    assert r.status == 200
    await call(emulator_http, "POST", emulator.control_url + f"/servers/{bob_server}/status",
               json={"status": "stopped"})
    r = await call(emulator_http, "GET", emulator.api_url + f"servers/{bob_server}/", headers=alice_auth())
    assert r.json["status"] == "stopped"
    assert r.json["runtime"] is None
    await call(emulator_http, "DELETE", emulator.control_url + f"/servers/{bob_server}")
    assert bob_server not in world.servers
    r = await call(emulator_http, "POST", emulator.control_url + "/settings", json={"single_object_errors": True})
    assert r.json["single_object_errors"] is True
    r = await call(emulator_http, "GET", emulator.api_url + "profile/", headers=alice_auth())
    assert r.json["email"] == ALICE


async def test_subprocess_with_seed(tmp_path: Any, emulator_http: aiohttp.ClientSession) -> None:
    seed = {
        "users": [{"email": ALICE, "password": PW}],
        "clients": [{"client_id": "sp", "secret": "s"}],
        "servers": [{"owner": ALICE, "name": "w", "count": 25, "nics": [{"type": "dhcp", "ip": "auto"}]},
                    {"owner": ALICE, "name": "db", "status": "stopped",
                     "nics": [{"type": "static", "ip": "185.1.1.1"}]}],
    }
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed))
    async with EmulatorProcess(seed=path, latency_ms=1) as proc:
        r = await call(emulator_http, "GET", proc.api_url + "servers/detail/?limit=0", headers=alice_auth())
        assert r.status == 200
        assert r.json["meta"]["total_count"] == 26
        assert r.request_id
        ips = {o["name"]: o["runtime"] for o in r.json["objects"]}
        assert ips["db"] is None
        assert ips["w-0"]["nics"][0]["ip_v4"]["uuid"]
        stats = await asyncio.to_thread(proc.control, "GET", "stats")
        assert stats["counters"]["GET /servers/detail/"] == 1
        assert stats["latency_ms"] == 1.0
    assert proc.proc is None


async def test_emulator_process_fixture_seeded_over_http(emulator_process: EmulatorProcess,
                                                         emulator_http: aiohttp.ClientSession) -> None:
    seed = {"users": [{"email": BOB, "password": "b"}], "servers": [{"owner": BOB, "name": "x", "status": "paused"}]}
    assert (await asyncio.to_thread(emulator_process.control, "POST", "seed", seed))["servers"] == 1
    r = await call(emulator_http, "GET", emulator_process.api_url + "servers/", headers=basic(BOB, "b"))
    assert r.status == 200
    assert [o["status"] for o in r.json["objects"]] == ["paused"]
    await asyncio.to_thread(emulator_process.control, "POST", "faults", {"kind": "error", "status": 503})
    r = await call(emulator_http, "GET", emulator_process.api_url + "servers/", headers=basic(BOB, "b"))
    assert r.status == 503
