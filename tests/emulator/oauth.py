"""A small Keycloak-like OAuth server plus CloudSigma's service-provider impersonation endpoint.

Routes (``{realm}`` must be in ``state.realms``, default ``cloudsigma``):

* ``GET  /realms/{realm}/.well-known/openid-configuration``
* ``GET  /realms/{realm}/protocol/openid-connect/certs``  (the emulator's JWKS)
* ``POST /realms/{realm}/protocol/openid-connect/token`` grants: ``client_credentials``, ``password``,
  ``refresh_token``, ``urn:ietf:params:oauth:grant-type:uma-ticket`` (RPT for ``service_provider_api``) and
  ``urn:ietf:params:oauth:grant-type:token-exchange`` (legacy V1 "direct naked impersonation").
* ``POST /service_provider/api/v1/user/impersonate`` (bearer = RPT; ``{"user_email", "subject_token"}``).

Each issued token bumps ``state.counters["token:<grant>"]`` (``client_credentials``, ``uma-ticket``,
``token-exchange``, ``password``, ``refresh_token``, ``impersonate``); user sessions ``keycloak:sessions``.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import Any

from aiohttp import web

from .auth import JwksCache, TokenError, audiences, parse_basic, verify_token
from .responses import STATE_KEY, ApiError, OAuthError, ctx, json_response
from .state import Client, EmulatorState, User

JWKS_KEY = web.AppKey("emulator_jwks_cache", JwksCache)

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_PASSWORD = "password"
GRANT_REFRESH = "refresh_token"
GRANT_UMA = "urn:ietf:params:oauth:grant-type:uma-ticket"
GRANT_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_REFRESH = "urn:ietf:params:oauth:token-type:refresh_token"
GRANT_COUNTER = {GRANT_CLIENT_CREDENTIALS: "client_credentials", GRANT_PASSWORD: "password",
                 GRANT_REFRESH: "refresh_token", GRANT_UMA: "uma-ticket", GRANT_EXCHANGE: "token-exchange"}
SCOPE = "profile email"


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def issuer_url(request: web.Request, realm: str) -> str:
    return f"{base_url(request)}/realms/{realm}"


def _realm(request: web.Request) -> str:
    state = request.app[STATE_KEY]
    realm = request.match_info["realm"]
    if realm not in state.realms:
        raise OAuthError(404, "Realm does not exist", f"Realm {realm!r} does not exist")
    return realm


# ------------------------------------------------------------------------------------------- issuing


def _claims(state: EmulatorState, iss: str, lifetime: int, **extra: Any) -> dict[str, Any]:
    now = int(state.now())
    claims: dict[str, Any] = {"exp": now + lifetime, "iat": now, "jti": str(uuid.uuid4()), "iss": iss,
                              "typ": "Bearer"}
    claims.update({k: v for k, v in extra.items() if v is not None})
    return claims


def issue_client_token(state: EmulatorState, client: Client, iss: str) -> tuple[str, dict[str, Any]]:
    """A service account token (client_credentials)."""
    claims = _claims(state, iss, state.token_lifetime, aud="account", sub=client.service_account_uuid,
                     azp=client.client_id, scope=SCOPE, clientId=client.client_id,
                     preferred_username=f"service-account-{client.client_id}",
                     email=client.service_account_email)
    return state.signing_key.sign(claims), claims


def issue_rpt(state: EmulatorState, client: Client, iss: str, audience: str) -> tuple[str, dict[str, Any]]:
    claims = _claims(state, iss, state.token_lifetime, aud=audience, sub=client.service_account_uuid,
                     azp=client.client_id, preferred_username=f"service-account-{client.client_id}",
                     authorization={"permissions": [{"rsname": "impersonate", "scopes": ["impersonate"]}]})
    return state.signing_key.sign(claims), claims


def issue_user_token(state: EmulatorState, user: User, *, iss: str, azp: str, aud: str | list[str],
                     lifetime: int, preferred_username: str | None = None, session: str | None = None,
                     act: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """An access token for ``user``: ``sub`` = user uuid, ``email``, ``preferred_username``, ``azp``."""
    claims = _claims(state, iss, lifetime, aud=aud, sub=user.uuid, azp=azp, email=user.email,
                     email_verified=True, preferred_username=preferred_username or user.username, scope=SCOPE,
                     sid=session, session_state=session, act=act)
    return state.signing_key.sign(claims), claims


def _refresh_token(state: EmulatorState, user: User, *, iss: str, azp: str, session: str) -> str:
    claims = _claims(state, iss, max(state.token_lifetime * 6, 1800), aud=iss, sub=user.uuid, azp=azp,
                     sid=session, session_state=session, scope=SCOPE)
    claims["typ"] = "Refresh"
    return state.signing_key.sign(claims)


def _token_body(state: EmulatorState, token: str, lifetime: int, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"access_token": token, "expires_in": lifetime, "refresh_expires_in": 0,
                            "token_type": "Bearer", "not-before-policy": 0, "scope": SCOPE}
    body.update(extra)
    return body


# ------------------------------------------------------------------------------------------- discovery


async def well_known(request: web.Request) -> web.Response:
    realm = _realm(request)
    iss = issuer_url(request, realm)
    return json_response({
        "issuer": iss,
        "authorization_endpoint": f"{iss}/protocol/openid-connect/auth",
        "token_endpoint": f"{iss}/protocol/openid-connect/token",
        "jwks_uri": f"{iss}/protocol/openid-connect/certs",
        "userinfo_endpoint": f"{iss}/protocol/openid-connect/userinfo",
        "grant_types_supported": [GRANT_CLIENT_CREDENTIALS, GRANT_PASSWORD, GRANT_REFRESH, GRANT_UMA,
                                  GRANT_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "token"],
        "subject_types_supported": ["public"],
    })


async def certs(request: web.Request) -> web.Response:
    _realm(request)
    return json_response(request.app[STATE_KEY].signing_key.jwks())


# ------------------------------------------------------------------------------------------- token endpoint


def _client_from_credentials(state: EmulatorState, request: web.Request, form: dict[str, str]) -> Client:
    header = request.headers.get("Authorization", "")
    client_id: str | None
    secret: str | None
    if header.lower().startswith("basic "):
        creds = parse_basic(header[6:])
        if creds is None:
            raise OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")
        client_id, secret = urllib.parse.unquote_plus(creds[0]), urllib.parse.unquote_plus(creds[1])
    else:
        client_id, secret = form.get("client_id"), form.get("client_secret")
    if not client_id:
        raise OAuthError(401, "invalid_client", "Missing parameter: client_id")
    client = state.clients.get(client_id)
    if client is None:
        raise OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")
    if secret is None or secret != client.secret:
        raise OAuthError(401, "unauthorized_client", "Invalid client or Invalid client credentials")
    return client


async def _client_from_bearer(state: EmulatorState, request: web.Request, token: str) -> Client:
    try:
        verified = await verify_token(state, request.app.get(JWKS_KEY), token)
    except TokenError as exc:
        raise OAuthError(401, "invalid_grant", f"Invalid bearer token: {exc}") from exc
    client = state.clients.get(str(verified.claims.get("azp", "")))
    if client is None:
        raise OAuthError(401, "invalid_client", "Bearer token was not issued to a known client")
    ctx(request).token_claims = verified.claims
    ctx(request).token_source = verified.source
    return client


async def token_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    realm = _realm(request)
    iss = issuer_url(request, realm)
    post = await request.post()
    form = {k: v for k, v in post.items() if isinstance(v, str)}
    grant = form.get("grant_type")
    if not grant:
        raise OAuthError(400, "invalid_request", "Missing form parameter: grant_type")
    if grant == GRANT_CLIENT_CREDENTIALS:
        client = _client_from_credentials(state, request, form)
        ctx(request).client_id = client.client_id
        token, _ = issue_client_token(state, client, iss)
        body = _token_body(state, token, state.token_lifetime)
    elif grant == GRANT_UMA:
        body = await _uma(state, request, form, iss)
    elif grant == GRANT_EXCHANGE:
        body = await _exchange(state, request, form, iss)
    elif grant == GRANT_PASSWORD:
        client = _client_from_credentials(state, request, form)
        user = state.get_user(form.get("username", "")) or state.user_by_username(form.get("username", ""))
        if user is None or user.password != form.get("password"):
            raise OAuthError(401, "invalid_grant", "Invalid user credentials")
        body = _user_token_body(state, user, client, iss, with_refresh=True)
    elif grant == GRANT_REFRESH:
        client = _client_from_credentials(state, request, form)
        body = await _refresh(state, request, form, client, iss)
    else:
        raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type")
    state.count(f"token:{GRANT_COUNTER[grant]}")
    return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _user_token_body(state: EmulatorState, user: User, client: Client, iss: str, *, with_refresh: bool,
                     aud: str | list[str] = "account", act: dict[str, Any] | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    session = str(uuid.uuid4())
    state.count("keycloak:sessions")
    token, _ = issue_user_token(state, user, iss=iss, azp=client.client_id, aud=aud, lifetime=state.token_lifetime,
                                session=session, act=act)
    body = _token_body(state, token, state.token_lifetime, session_state=session, **(extra or {}))
    if with_refresh:
        body["refresh_token"] = _refresh_token(state, user, iss=iss, azp=client.client_id, session=session)
        body["refresh_expires_in"] = max(state.token_lifetime * 6, 1800)
    return body


async def _refresh(state: EmulatorState, request: web.Request, form: dict[str, str], client: Client,
                   iss: str) -> dict[str, Any]:
    try:
        verified = await verify_token(state, None, form.get("refresh_token", ""))
    except TokenError as exc:
        raise OAuthError(400, "invalid_grant", f"Invalid refresh token: {exc}") from exc
    claims = verified.claims
    if claims.get("typ") != "Refresh" or claims.get("azp") != client.client_id:
        raise OAuthError(400, "invalid_grant", "Invalid refresh token")
    user = state.user_by_uuid(str(claims.get("sub")))
    if user is None:
        raise OAuthError(400, "invalid_grant", "User not found")
    token, _ = issue_user_token(state, user, iss=iss, azp=client.client_id, aud="account",
                                lifetime=state.token_lifetime, session=str(claims.get("sid")))
    return _token_body(state, token, state.token_lifetime, refresh_token=form["refresh_token"],
                       refresh_expires_in=max(int(claims["exp"] - state.now()), 0))


async def _uma(state: EmulatorState, request: web.Request, form: dict[str, str], iss: str) -> dict[str, Any]:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        client = await _client_from_bearer(state, request, header[7:].strip())
    else:
        client = _client_from_credentials(state, request, form)
    ctx(request).client_id = client.client_id
    audience = form.get("audience")
    if not audience:
        raise OAuthError(400, "invalid_request", "You must provide the audience")
    if audience not in state.uma_audiences:
        raise OAuthError(400, "invalid_request", f"Audience [{audience}] not found")
    if not client.may_impersonate:
        raise OAuthError(403, "access_denied", "not_authorized")
    token, _ = issue_rpt(state, client, iss, audience)
    return _token_body(state, token, state.token_lifetime, upgraded=False)


async def _exchange(state: EmulatorState, request: web.Request, form: dict[str, str], iss: str) -> dict[str, Any]:
    client = _client_from_credentials(state, request, form)
    ctx(request).client_id = client.client_id
    subject = form.get("requested_subject")
    if state.token_exchange_mode == "standard":
        if subject:
            raise OAuthError(400, "invalid_request",
                             "Parameter 'requested_subject' is not supported for standard token exchange")
        raise OAuthError(400, "invalid_request", "Missing parameter: subject_token")
    if form.get("subject_token"):
        try:
            await verify_token(state, request.app.get(JWKS_KEY), form["subject_token"])
        except TokenError as exc:
            raise OAuthError(400, "invalid_token", f"Invalid token: {exc}") from exc
    elif not subject:
        raise OAuthError(400, "invalid_request", "Parameter 'subject_token' or 'requested_subject' is required")
    requested_type = form.get("requested_token_type")
    if requested_type and requested_type not in (TOKEN_TYPE_ACCESS, TOKEN_TYPE_REFRESH):
        raise OAuthError(400, "invalid_request", f"requested_token_type unsupported: {requested_type}")
    if not subject:
        raise OAuthError(400, "invalid_request", "Only impersonation with requested_subject is emulated")
    # Keycloak looks requested_subject up by username or user id, not by email (deny both cases alike).
    user = state.user_by_username(subject) or state.user_by_uuid(subject)
    if user is None or not client.may_exchange or not client.may_act_for(user.email):
        raise OAuthError(403, "access_denied", "Client not allowed to exchange")
    user = state.get_user(state.impersonation_substitutes.get(user.email.lower(), user.email)) or user
    audience = form.get("audience") or client.client_id
    act = {"sub": client.service_account_uuid, "client_id": client.client_id}
    if requested_type == TOKEN_TYPE_ACCESS:
        return _user_token_body(state, user, client, iss, with_refresh=False, aud=audience, act=act,
                                extra={"issued_token_type": TOKEN_TYPE_ACCESS})
    # Legacy V1 without requested_token_type (or asking for a refresh token) also hands out a refresh token.
    return _user_token_body(state, user, client, iss, with_refresh=True, aud=audience, act=act,
                            extra={"issued_token_type": TOKEN_TYPE_REFRESH})


# ------------------------------------------------------------------------------------------- impersonation


def impersonation_issuer(request: web.Request, state: EmulatorState) -> str:
    realm = "cloudsigma" if "cloudsigma" in state.realms else sorted(state.realms)[0]
    return issuer_url(request, realm)


async def impersonate(request: web.Request) -> web.Response:
    """``POST /service_provider/api/v1/user/impersonate`` — CloudSigma errors (list bodies) on failure."""
    state = request.app[STATE_KEY]
    jwks = request.app.get(JWKS_KEY)
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        raise ApiError(401, "Authentication credentials were not provided.", "permission")
    ctx(request).auth_kind = "bearer"
    try:
        rpt = await verify_token(state, jwks, header[7:].strip())
    except TokenError as exc:
        raise ApiError(401, f"Invalid token: {exc}", "permission") from exc
    ctx(request).token_claims = rpt.claims
    ctx(request).token_source = rpt.source
    if not any(a in state.uma_audiences for a in audiences(rpt.claims)):
        raise ApiError(401, "Token is not an RPT for service_provider_api.", "permission")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Invalid JSON: {exc}", "validation") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Expected a JSON object.", "validation")
    email = body.get("user_email")
    subject_token = body.get("subject_token")
    if not isinstance(email, str) or not email:
        raise ApiError(400, "This field is required.", "validation", error_point="user_email")
    if not isinstance(subject_token, str) or not subject_token:
        raise ApiError(400, "This field is required.", "validation", error_point="subject_token")
    try:
        subject = await verify_token(state, jwks, subject_token)
    except TokenError as exc:
        raise ApiError(401, f"Invalid subject_token: {exc}", "permission") from exc
    azp = str(rpt.claims.get("azp", ""))
    if subject.claims.get("azp") != azp:
        raise ApiError(403, "subject_token and RPT were issued to different clients.", "permission")
    client = state.clients.get(azp)
    if client is None or not client.may_impersonate:
        raise ApiError(403, f"Client {azp} is not allowed to impersonate users.", "permission")
    user = state.get_user(email)
    if user is None:
        raise ApiError(404, f"User with email {email} does not exist.", "notexist")
    if not client.may_act_for(user.email):
        raise ApiError(403, f"Client {azp} may not impersonate user {email}.", "permission")
    user = state.get_user(state.impersonation_substitutes.get(user.email.lower(), user.email)) or user
    lifetime = state.impersonation_lifetime or state.token_lifetime
    token, _ = issue_user_token(state, user, iss=impersonation_issuer(request, state), azp=azp,
                                aud=["cloudsigma-api", "account"], lifetime=lifetime, preferred_username=user.email,
                                session=str(uuid.uuid4()),
                                act={"sub": client.service_account_uuid, "client_id": client.client_id})
    state.count("token:impersonate")
    out: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
    if state.impersonate_include_expires_in:
        out["expires_in"] = lifetime
    return web.Response(text=json.dumps(out), content_type="application/json")
