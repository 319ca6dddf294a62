"""The CloudSigma API 2.0 emulator as an aiohttp application: ``create_app(state)``.

API (``/api/2.0/``, Basic or Bearer auth): ``servers/``, ``servers/detail/``, ``servers/{uuid}/``,
``servers/availability_groups/[{uuid}/]``, ``tags/``, ``tags/detail/``, ``tags/{uuid}/[servers/]``, ``ips/``,
``ips/detail/``, ``ips/{ip}/`` (GET; PUT edits ``meta``), ``PUT servers/{uuid}/`` (the running-server rule of
servers.rst, see ``EmulatorState.running_server_changes``), ``profile/``, ``locations/`` (no auth).
OAuth and impersonation: see
:mod:`tests.emulator.oauth`. Control plane (never faulted, logged or counted): ``/_emulator/...``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .auth import JwksCache, authenticate
from .faults import HANG_RELEASE_KEY, ConnectionAbortedByFault, control_faults, faults_middleware, is_control_path
from .oauth import JWKS_KEY, base_url, certs, impersonate, token_endpoint, well_known
from .responses import CTX_KEY, STATE_KEY, ApiError, OAuthError, RequestContext, api_error, ctx, json_response
from .state import (
    API_PREFIX,
    NOT_FROM_CLOUDSIGMA,
    EmulatorState,
    IpRecord,
    RequestRecord,
    User,
    normalise_path,
    server_ref,
)

log = logging.getLogger("tests.emulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SHORT_SERVER_FIELDS = ("name", "owner", "resource_uri", "runtime", "status", "uuid")
SETTINGS = ("single_object_errors", "token_lifetime", "impersonation_lifetime", "default_limit", "user_claims",
            "jwks_url", "external_issuer", "dhcp_ips_in_ip_list", "token_exchange_mode", "clock_leeway",
            "impersonate_include_expires_in", "ipv6_runtime_as_string", "jwks_refetch_interval", "location_id",
            "availability_groups_per_server", "running_server_changes")


# ------------------------------------------------------------------------------------------- middleware


def _convert_http_exception(state: EmulatorState, exc: web.HTTPException) -> web.StreamResponse:
    if exc.status == 404:
        return api_error(state, 404, "notexist", "The requested resource does not exist.")
    if exc.status == 405:
        return api_error(state, 405, "validation", "Method not allowed.",
                         headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    if exc.status < 400:
        return exc
    return api_error(state, exc.status, None, exc.reason)


def _fill_record(rec: RequestRecord, context: RequestContext) -> None:
    auth = context.auth
    claims: dict[str, Any] = {}
    if auth is not None:
        rec.auth_kind = auth.kind
        rec.user = auth.user.email if auth.user else None
        rec.token_source = auth.token_source
        claims = auth.claims
    else:
        rec.auth_kind = context.auth_kind
        claims = context.token_claims
        rec.token_source = context.token_source
    if claims:
        rec.token_azp = str(claims["azp"]) if "azp" in claims else None
        rec.token_sub = str(claims["sub"]) if "sub" in claims else None
    elif context.client_id:
        rec.token_azp = context.client_id
    rec.fault = context.fault


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id on every response, CloudSigma-style error bodies, request log and per-endpoint counters."""
    state = request.app[STATE_KEY]
    rid = str(uuid.uuid4())
    context = RequestContext(request_id=rid)
    request[CTX_KEY] = context
    control = is_control_path(request.path)
    rec = RequestRecord(method=request.method, path=request.path, query=request.query_string,
                        endpoint=f"{request.method} {normalise_path(request.path)}", request_id=rid,
                        started_at=time.time())
    if not control:
        state.count(rec.endpoint)
        state.record(rec)
    started = time.monotonic()
    resp: web.StreamResponse | None = None
    try:
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = exc.response(state)
        except OAuthError as exc:
            resp = exc.response()
        except web.HTTPException as exc:
            resp = _convert_http_exception(state, exc)
        except ConnectionAbortedByFault:
            resp = web.Response(status=499)  # never reaches the client: the transport is gone
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            log.exception("emulator handler failed")
            resp = api_error(state, 500, "backend", f"Emulator internal error: {exc!r}")
    finally:
        if not control:
            _fill_record(rec, context)
            rec.status = None if resp is None or rec.fault == "reset" else resp.status
            rec.duration_ms = (time.monotonic() - started) * 1000.0
    if context.fault not in NOT_FROM_CLOUDSIGMA:
        resp.headers["X-REQUEST-ID"] = rid
    return resp


# ------------------------------------------------------------------------------------------- helpers


async def _user(request: web.Request) -> User:
    state = request.app[STATE_KEY]
    result = await authenticate(state, request.app.get(JWKS_KEY), request.headers.get("Authorization"))
    ctx(request).auth = result
    if result.user is None:
        raise ApiError(401, result.error or "Invalid credentials.", "permission",
                       headers={"WWW-Authenticate": 'Basic realm="users"'})
    return result.user


def split_values(raw: str) -> list[str]:
    """Split a filter value on commas; ``\\,`` is a literal comma and ``\\\\`` a literal backslash."""
    values: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw) and raw[i + 1] in ",\\":
            cur.append(raw[i + 1])
            i += 2
            continue
        if ch == ",":
            values.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    values.append("".join(cur))
    return values


Matcher = Callable[[Any, str], bool]


def _filter(request: web.Request, items: list[Any], matchers: dict[str, Matcher]) -> list[Any]:
    """Separate parameters (and repeated ones) AND; comma-separated values within one parameter OR."""
    for param, matcher in matchers.items():
        for raw in request.query.getall(param, []):
            values = split_values(raw)
            items = [item for item in items if any(matcher(item, v) for v in values)]
    return items


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid {name} '{raw}' provided. Please provide a positive integer.", "validation",
                       error_point=name) from None
    if value < 0:
        raise ApiError(400, f"Invalid {name} '{raw}' provided. Please provide a positive integer >= 0.",
                       "validation", error_point=name)
    return value


def _page(request: web.Request, items: list[Any]) -> tuple[list[Any], dict[str, int]]:
    state = request.app[STATE_KEY]
    limit = _int_param(request, "limit", state.default_limit)
    offset = _int_param(request, "offset", 0)
    page = items[offset:offset + limit] if limit else items[offset:]
    return page, {"limit": limit, "offset": offset, "total_count": len(items)}


def _permission_error(user: User, resource: str) -> ApiError:
    return ApiError(403, f"User {user.uuid} does not have all of the permissions [LIST] in order to complete the "
                         f"operation on resources [{resource}]", "permission")


# ------------------------------------------------------------------------------------------- servers


def _server_tag_match(srv: dict[str, Any], value: str, tags: dict[str, str]) -> bool:
    return any(t.get("uuid") == value or tags.get(str(t.get("uuid"))) == value for t in srv.get("tags", []))


def _server_matchers(state: EmulatorState) -> dict[str, Matcher]:
    return {
        "name": lambda s, v: s["name"] == v,
        "name__contains": lambda s, v: v.lower() in s["name"].lower(),
        "uuid": lambda s, v: s["uuid"] == v,
        "tag": lambda s, v: _server_tag_match(s, v, state.tags),
    }


async def _list_servers(request: web.Request, detail: bool) -> web.Response:
    state = request.app[STATE_KEY]
    user = await _user(request)
    items = [s for s in state.servers.values() if s["owner"]["uuid"] == user.uuid]
    items = _filter(request, items, _server_matchers(state))
    page, meta = _page(request, items)
    objects = page if detail else [{k: s[k] for k in SHORT_SERVER_FIELDS} for s in page]
    return json_response({"meta": meta, "objects": objects})


async def list_servers(request: web.Request) -> web.Response:
    return await _list_servers(request, detail=False)


async def list_servers_detail(request: web.Request) -> web.Response:
    return await _list_servers(request, detail=True)


def _own_server(state: EmulatorState, user: User, srv_uuid: str) -> dict[str, Any]:
    """The server ``srv_uuid`` if it is the user's: 404 if there is none, 403 if it is someone else's."""
    srv = state.servers.get(srv_uuid)
    if srv is None:
        raise ApiError(404, f"Server {srv_uuid} does not exist.", "notexist")
    if srv["owner"]["uuid"] != user.uuid:
        raise _permission_error(user, srv_uuid)
    return srv


async def get_server(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    user = await _user(request)
    return json_response(_own_server(state, user, request.match_info["uuid"]))


async def _api_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "Request body is not valid JSON.", "validation") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Expected a JSON object.", "validation")
    return body


async def put_server(request: web.Request) -> web.Response:
    """``PUT /servers/{uuid}/``: edit a server (on a running one only ``name``, ``meta`` and ``tags`` change)."""
    state = request.app[STATE_KEY]
    user = await _user(request)
    srv_uuid = request.match_info["uuid"]
    _own_server(state, user, srv_uuid)
    body = await _api_body(request)
    try:
        return json_response(state.update_server(srv_uuid, body))
    except (ValueError, TypeError) as exc:
        raise ApiError(400, str(exc), "validation") from None


# ------------------------------------------------------------------------------------------- availability groups


async def server_availability_groups(request: web.Request) -> web.Response:
    """An array of arrays of the user's running servers that share a physical host (no envelope, no paging)."""
    state = request.app[STATE_KEY]
    user = await _user(request)
    return json_response(state.availability_groups(user.uuid))


async def server_availability_group(request: web.Request) -> web.Response:
    """The servers sharing the given server's host, itself included; empty when it is not running."""
    state = request.app[STATE_KEY]
    user = await _user(request)
    srv_uuid = request.match_info["uuid"]
    _own_server(state, user, srv_uuid)
    return json_response(state.availability_group_of(srv_uuid))


# ------------------------------------------------------------------------------------------- tags


def _render_tag(state: EmulatorState, tag_uuid: str, user: User) -> dict[str, Any]:
    owner = state.tag_owners.get(tag_uuid)
    return {"meta": {}, "name": state.tags[tag_uuid],
            "owner": {"resource_uri": f"{API_PREFIX}/user/{owner}/", "uuid": owner} if owner else None,
            "resource_uri": f"{API_PREFIX}/tags/{tag_uuid}/",
            "resources": state.tag_resources(tag_uuid, user.uuid), "uuid": tag_uuid}


async def list_tags(request: web.Request) -> web.Response:
    """``GET /tags/`` and ``/tags/detail/``: the tags the user has access to, with their resources (paginated)."""
    state = request.app[STATE_KEY]
    user = await _user(request)
    items = _filter(request, state.tags_visible_to(user.uuid), {
        "name": lambda t, v: state.tags[t] == v,
        "name__contains": lambda t, v: v.lower() in state.tags[t].lower(),
        "uuid": lambda t, v: t == v,
    })
    page, meta = _page(request, items)
    return json_response({"meta": meta, "objects": [_render_tag(state, t, user) for t in page]})


def _visible_tag(state: EmulatorState, user: User, tag_uuid: str) -> str:
    if tag_uuid not in state.tags:
        raise ApiError(404, f"Tag {tag_uuid} does not exist.", "notexist")
    if state.tag_owners.get(tag_uuid) not in (None, user.uuid):
        raise _permission_error(user, tag_uuid)
    return tag_uuid


async def get_tag(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    user = await _user(request)
    return json_response(_render_tag(state, _visible_tag(state, user, request.match_info["uuid"]), user))


async def list_tag_servers(request: web.Request) -> web.Response:
    """``GET /tags/{uuid}/servers/``: the user's servers carrying the tag (full objects, paginated)."""
    state = request.app[STATE_KEY]
    user = await _user(request)
    tag_uuid = _visible_tag(state, user, request.match_info["uuid"])
    items = [s for s in state.servers.values() if s["owner"]["uuid"] == user.uuid
             and any(t.get("uuid") == tag_uuid for t in s.get("tags", []))]
    page, meta = _page(request, items)
    return json_response({"meta": meta, "objects": page})


# ------------------------------------------------------------------------------------------- IPs


def _render_ip(rec: IpRecord, server: str | None, detail: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"owner": {"resource_uri": f"{API_PREFIX}/user/{rec.owner_uuid}/", "uuid": rec.owner_uuid},
                           "resource_uri": f"{API_PREFIX}/ips/{rec.uuid}/",
                           "server": server_ref(server) if server else None, "uuid": rec.uuid}
    if detail:
        out.update({"gateway": rec.gateway, "grantees": [], "meta": rec.meta, "nameservers": rec.nameservers,
                    "netmask": rec.netmask, "permissions": [], "subscription": None if rec.dynamic else {
                        "id": abs(hash(rec.uuid)) % 100000, "resource_uri": "/api/2.0/subscriptions/"},
                    "tags": rec.tags})
    return out


async def _list_ips(request: web.Request, detail: bool) -> web.Response:
    state = request.app[STATE_KEY]
    user = await _user(request)
    items = _filter(request, state.visible_ips(user.uuid), {"uuid": lambda pair, v: pair[0].uuid == v})
    page, meta = _page(request, items)
    return json_response({"meta": meta, "objects": [_render_ip(rec, srv, detail) for rec, srv in page]})


async def list_ips(request: web.Request) -> web.Response:
    return await _list_ips(request, detail=False)


async def list_ips_detail(request: web.Request) -> web.Response:
    return await _list_ips(request, detail=True)


def _own_ip(state: EmulatorState, user: User, addr: str) -> tuple[IpRecord, dict[str, str]]:
    """The user's IP ``addr`` and what is attached now: 404 if there is none (a DHCP lease no running server
    holds is not listed either), 403 if it is someone else's."""
    rec = state.ips.get(addr)
    attached = state.ip_attachments()
    if rec is None or (rec.dynamic and rec.uuid not in attached):
        raise ApiError(404, f"IP {addr} does not exist.", "notexist")
    if rec.owner_uuid != user.uuid:
        raise _permission_error(user, addr)
    return rec, attached


async def get_ip(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    user = await _user(request)
    addr = request.match_info["ip"]
    rec, attached = _own_ip(state, user, addr)
    return json_response(_render_ip(rec, attached.get(rec.uuid), detail=True))


async def put_ip(request: web.Request) -> web.Response:
    """``PUT /ips/{uuid}/``: networking.rst — "Currently only IP ``meta`` field can be edited" (the map is
    replaced); other fields of the body are ignored."""
    state = request.app[STATE_KEY]
    user = await _user(request)
    addr = request.match_info["ip"]
    rec, attached = _own_ip(state, user, addr)
    body = await _api_body(request)
    if "meta" in body:
        try:
            state.set_ip_meta(addr, body["meta"] or {})
        except ValueError as exc:
            raise ApiError(400, str(exc), "validation", error_point="meta") from None
    return json_response(_render_ip(rec, attached.get(rec.uuid), detail=True))


# ------------------------------------------------------------------------------------------- misc API


async def profile(request: web.Request) -> web.Response:
    user = await _user(request)
    return json_response({"email": user.email, "uuid": user.uuid, "first_name": "", "last_name": "", "meta": {},
                          "resource_uri": f"{API_PREFIX}/profile/", "state": "REGULAR"})


async def locations(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    objects = [{"api_endpoint": f"{base_url(request)}{API_PREFIX}/", "country_code": "CH",
                "display_name": "Emulator", "id": state.location_id}]
    return json_response({"meta": {"limit": 0, "offset": 0, "total_count": 1}, "objects": objects})


# ------------------------------------------------------------------------------------------- control plane


async def control_stats(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if request.method in ("DELETE", "POST"):
        state.reset_stats()
    stats = state.stats()
    if request.query.get("requests") in ("0", "false"):
        stats.pop("requests")
    return json_response(stats)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="expected a JSON object")
    return body


async def control_seed(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        state.load_seed(await _json_body(request))
    except (KeyError, ValueError, TypeError) as exc:
        return json_response({"error": repr(exc)}, status=400)
    return json_response({"users": len(state.users), "servers": len(state.servers), "clients": len(state.clients)})


async def control_settings(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if request.method == "POST":
        body = await _json_body(request)
        unknown = set(body) - set(SETTINGS) - {"realms", "token_clock_advance"}
        if unknown:
            return json_response({"error": f"unknown settings {sorted(unknown)}"}, status=400)
        for key, value in body.items():
            if key == "realms":
                state.realms = set(value)
            elif key == "token_clock_advance":
                state.advance_time(float(value))
            else:
                setattr(state, key, value)
    out = {k: getattr(state, k) for k in SETTINGS}
    out["realms"] = sorted(state.realms)
    out["time_offset"] = state.time_offset
    return json_response(out)


async def control_server(request: web.Request) -> web.Response:
    """``DELETE /_emulator/servers/{uuid}``; ``POST .../status {"status"}``; ``POST .../ip {"ip", "nic_index",
    "version"}``; ``POST .../owner {"email"}``."""
    state = request.app[STATE_KEY]
    srv_uuid = request.match_info["uuid"]
    if srv_uuid not in state.servers:
        return json_response({"error": "no such server"}, status=404)
    action = request.match_info.get("action", "")
    try:
        if request.method == "DELETE" and not action:
            state.remove_server(srv_uuid)
            return json_response({"deleted": srv_uuid})
        if request.method == "GET" and not action:
            return json_response(state.servers[srv_uuid])
        body = await _json_body(request)
        if action == "status":
            return json_response(state.set_status(srv_uuid, str(body["status"])))
        if action == "ip":
            return json_response(state.set_server_ip(srv_uuid, body.get("ip"), nic_index=int(body.get("nic_index", 0)),
                                                     version=6 if int(body.get("version", 4)) == 6 else 4))
        if action == "owner":
            return json_response(state.transfer_server(srv_uuid, str(body["email"])))
    except (KeyError, ValueError, IndexError) as exc:
        return json_response({"error": repr(exc)}, status=400)
    return json_response({"error": "unknown action"}, status=404)


async def control_server_labels(request: web.Request) -> web.Response:
    """``POST /_emulator/servers/{uuid}/meta {"meta": {...}}`` (replaces the map); ``.../tags {"tags": [uuid]}``;
    ``.../host {"host": "h2"}`` (moves the server to another physical host)."""
    state = request.app[STATE_KEY]
    srv_uuid = request.match_info["uuid"]
    if srv_uuid not in state.servers:
        return json_response({"error": "no such server"}, status=404)
    body = await _json_body(request)
    action = request.match_info["action"]
    try:
        if action == "meta":
            return json_response(state.set_server_meta(srv_uuid, body["meta"]))
        if action == "tags":
            return json_response(state.set_server_tags(srv_uuid, list(body["tags"])))
        return json_response(state.move_server(srv_uuid, str(body["host"])))
    except (KeyError, ValueError, TypeError) as exc:
        return json_response({"error": repr(exc)}, status=400)


async def control_ip(request: web.Request) -> web.Response:
    """``POST /_emulator/ips/{ip}/tags {"tags": [uuid]}``: the tags an IP is under (as ``/tags/`` sets them)."""
    state = request.app[STATE_KEY]
    addr = request.match_info["ip"]
    if addr not in state.ips:
        return json_response({"error": "no such IP"}, status=404)
    body = await _json_body(request)
    try:
        rec = state.set_ip_tags(addr, list(body["tags"]))
    except (KeyError, ValueError, TypeError) as exc:
        return json_response({"error": repr(exc)}, status=400)
    return json_response({"uuid": rec.uuid, "tags": rec.tags})


async def control_tags(request: web.Request) -> web.Response:
    """``POST /_emulator/tags {"name", "owner"?, "uuid"?}`` creates a tag; answers ``{"uuid"}``."""
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    try:
        tag_uuid = state.add_tag(str(body["name"]), uuid=body.get("uuid"), owner=body.get("owner"))
    except KeyError as exc:
        return json_response({"error": repr(exc)}, status=400)
    return json_response({"uuid": tag_uuid})


async def control_state(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return json_response({
        "users": [{"email": u.email, "uuid": u.uuid, "username": u.username} for u in state.users.values()],
        "clients": [{"client_id": c.client_id, "may_impersonate": c.may_impersonate, "may_exchange": c.may_exchange}
                    for c in state.clients.values()],
        "servers": [{k: s[k] for k in ("uuid", "name", "status")} | {"owner": s["owner"]["uuid"]}
                    for s in state.servers.values()],
        "ips": [{"uuid": r.uuid, "owner": r.owner_uuid, "dynamic": r.dynamic} for r in state.ips.values()],
    })


async def control_rotate_key(request: web.Request) -> web.Response:
    key = request.app[STATE_KEY].rotate_signing_key()
    return json_response({"kid": key.kid})


async def control_health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


# ------------------------------------------------------------------------------------------- factory


async def _release_hangs(app: web.Application) -> None:
    app[HANG_RELEASE_KEY].set()


async def _close_jwks(app: web.Application) -> None:
    await app[JWKS_KEY].close()


def create_app(state: EmulatorState | None = None, *, jwks_url: str | None = None) -> web.Application:
    """The emulator application over ``state`` (a fresh empty one if not given)."""
    state = state if state is not None else EmulatorState()
    if jwks_url:
        state.jwks_url = jwks_url
    app = web.Application(middlewares=[request_middleware, faults_middleware])
    app[STATE_KEY] = state
    app[JWKS_KEY] = JwksCache()
    app[HANG_RELEASE_KEY] = asyncio.Event()
    app.on_shutdown.append(_release_hangs)
    app.on_cleanup.append(_close_jwks)

    r = app.router
    api = API_PREFIX
    r.add_get(f"{api}/servers/", list_servers)
    r.add_get(f"{api}/servers/detail/", list_servers_detail)
    r.add_get(f"{api}/servers/availability_groups/", server_availability_groups)
    r.add_get(f"{api}/servers/availability_groups/{{uuid}}/", server_availability_group)
    r.add_get(f"{api}/tags/", list_tags)
    r.add_get(f"{api}/tags/detail/", list_tags)
    r.add_get(f"{api}/tags/{{uuid}}/", get_tag)
    r.add_get(f"{api}/tags/{{uuid}}/servers/", list_tag_servers)
    r.add_get(f"{api}/servers/{{uuid}}/", get_server)
    r.add_get(f"{api}/ips/", list_ips)
    r.add_get(f"{api}/ips/detail/", list_ips_detail)
    r.add_get(f"{api}/ips/{{ip}}/", get_ip)
    r.add_put(f"{api}/ips/{{ip}}/", put_ip)
    r.add_put(f"{api}/servers/{{uuid}}/", put_server)
    r.add_get(f"{api}/profile/", profile)
    r.add_get(f"{api}/locations/", locations)

    r.add_get("/realms/{realm}/.well-known/openid-configuration", well_known)
    r.add_get("/realms/{realm}/protocol/openid-connect/certs", certs)
    r.add_post("/realms/{realm}/protocol/openid-connect/token", token_endpoint)
    r.add_post("/service_provider/api/v1/user/impersonate", impersonate)
    r.add_post("/service_provider/api/v1/user/impersonate/", impersonate)

    r.add_route("*", "/_emulator/stats", control_stats)
    r.add_post("/_emulator/stats/reset", control_stats)
    r.add_route("*", "/_emulator/faults", control_faults)
    r.add_post("/_emulator/seed", control_seed)
    r.add_route("*", "/_emulator/settings", control_settings)
    r.add_get("/_emulator/state", control_state)
    r.add_post("/_emulator/servers/{uuid}/{action:meta|tags|host}", control_server_labels)
    r.add_post("/_emulator/tags", control_tags)
    r.add_post("/_emulator/ips/{ip}/tags", control_ip)
    r.add_route("*", "/_emulator/servers/{uuid}", control_server)
    r.add_post("/_emulator/servers/{uuid}/{action}", control_server)
    r.add_post("/_emulator/rotate-key", control_rotate_key)
    r.add_get("/_emulator/health", control_health)
    return app
