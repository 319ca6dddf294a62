"""Async client for CloudSigma API 2.0: the few calls the CCM needs, done carefully.

- One aiohttp session, reused; a timeout on every call; a ``User-Agent`` naming the project.
- The endpoint comes from the credential (password → ``{region}.cloudsigma.com``, impersonated token →
  ``direct.{region}.cloudsigma.com``), so a fallback never sends a token to the wrong host.
- Lists are paginated properly (``limit=0`` or page until ``total_count``), never the API's default of 20.
- Transient failures (connection errors, timeouts, 429 honouring ``Retry-After``, 5xx, ``concurrency``) are
  retried with bounded exponential backoff and jitter; 400/401/403/404 never are (a 401 once re-acquires
  the credential, since tokens expire).
- Every call is observable: a debug log line and an ``on_request`` hook for metrics; failures log the
  ``X-REQUEST-ID``. Credentials never appear in logs or errors.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import aiohttp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from cloudsigma.errors import (
    BadRequest,
    CallContext,
    CloudSigmaError,
    InvalidResponse,
    NotFound,
    PaymentRequired,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    ServerError,
    ServerNotFound,
    TransportError,
    UnattributedNotFound,
    Unauthorized,
    is_notexist_proof,
    parse_error_body,
)
from cloudsigma.models import InvalidObject, Server, Tag, parse_server, parse_tag
from credentials.base import Credential

__all__ = ["CloudSigmaClient", "CredentialSource", "IpList", "RequestRecord", "RetryPolicy", "ServerList", "TagList"]

USER_AGENT = "cloudsigma-ccm/0.1 (+kubernetes cloud controller manager)"
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_IP_SEGMENT_RE = re.compile(r"/ips/(?!detail/)[^/]+/")  # an address, never the detail listing
_RETRYABLE_ERROR_TYPES = {"concurrency", "backend", "database"}

log = structlog.get_logger(__name__)


class CredentialSource(Protocol):
    """What the client needs from the credential chain."""

    async def get(self, user_email: str, region: str) -> Credential: ...

    def invalidate(self, credential: Credential) -> None: ...


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP exchange with CloudSigma, for metrics hooks."""

    method: str
    endpoint: str  # path with uuids replaced by {uuid}: bounded cardinality
    status: int | None  # None when no HTTP answer came
    duration: float
    request_id: str | None
    provider: str | None
    outcome: str  # "ok" or an error class name


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries for transient failures."""

    attempts: int = 4
    initial_backoff: float = 0.5
    max_backoff: float = 10.0
    #: Longest ``Retry-After`` we honour inside one call; longer waits are left to the caller's queue.
    max_retry_after: float = 30.0


@dataclass(frozen=True)
class ServerList:
    """A complete server listing. ``complete`` is False when some objects could not be parsed."""

    servers: tuple[Server, ...]
    total_count: int
    request_ids: tuple[str, ...]
    fetched_at: float
    invalid: tuple[str, ...] = ()
    provider: str | None = None
    #: The subject (user uuid) of the credential that listed, when the credential names one.
    token_subject: str | None = None

    @property
    def complete(self) -> bool:
        return not self.invalid and len(self.servers) == self.total_count


@dataclass(frozen=True)
class TagList:
    """Every tag the user may see (all pages); ``invalid`` names the objects that could not be parsed."""

    tags: tuple[Tag, ...]
    total_count: int
    request_ids: tuple[str, ...]
    invalid: tuple[str, ...] = ()


@dataclass(frozen=True)
class IpList:
    """Every IP of ``GET /ips/detail/`` (all pages) as the API's JSON, and when the listing was fetched."""

    objects: tuple[dict[str, Any], ...]
    total_count: int
    request_ids: tuple[str, ...]
    #: ``time.monotonic()`` after the last page arrived: a claim written before it is visible in it.
    fetched_at: float
    #: The credential provider that listed (a fallback credential may be another account).
    provider: str | None = None


_PARSE_INLINE_MAX = 200


def _parse_servers(objects: list[Any]) -> tuple[list[Server], list[str]]:
    """Parse a listing's objects. Each decoded object is released from ``objects`` as its record is made, so a
    listing of thousands of servers never holds all of its decoded JSON and all of its records at once."""
    servers: list[Server] = []
    invalid: list[str] = []
    for index in range(len(objects)):
        raw, objects[index] = objects[index], None
        try:
            servers.append(parse_server(raw))
        except InvalidObject as exc:
            invalid.append(f"#{index} {exc.uuid or '?'}: {exc}")
    return servers, invalid


def endpoint_of(path: str) -> str:
    """Normalise a path for metrics: ``servers/<uuid>/`` → ``/servers/{uuid}/``."""
    norm = "/" + path.lstrip("/")
    norm = _UUID_RE.sub("{uuid}", norm)
    return _IP_SEGMENT_RE.sub("/ips/{ip}/", norm)


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: rare for APIs; fall back to our own backoff


@dataclass
class _Attempt:
    credential: Credential | None = None
    unauthorized: int = 0
    #: A lower-priority credential to retry a 403 with (only with the opt-in setting).
    override: Credential | None = None


class CloudSigmaClient:
    """Client for one CloudSigma user in one region (one CCM serves one tenant)."""

    def __init__(
        self,
        credentials: CredentialSource,
        *,
        user_email: str,
        region: str,
        timeout: float = 15.0,
        retry: RetryPolicy | None = None,
        page_size: int = 0,
        session: aiohttp.ClientSession | None = None,
        on_request: Callable[[RequestRecord], None] | None = None,
        user_agent: str = USER_AGENT,
        throttle: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        if page_size < 0:
            raise ValueError("page_size must be >= 0 (0 asks for every object in one response)")
        self._credentials = credentials
        self.user_email = user_email
        self.region = region
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry = retry or RetryPolicy()
        self._page_size = page_size
        self._session = session
        self._own_session = session is None
        self._on_request = on_request
        self._user_agent = user_agent
        #: Awaited (with the HTTP method) before every request, retries included: a request budget shared with
        #: other clients (the fleet's per-region budget) makes the call wait its turn there.
        self._throttle = throttle

    async def __aenter__(self) -> CloudSigmaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self._user_agent, "Accept": "application/json"},
                raise_for_status=False,
            )
            self._own_session = True
        return self._session

    # ---- public calls -------------------------------------------------------------------------

    async def get_server(self, uuid: str) -> Server:
        """GET ``/servers/{uuid}/``. CloudSigma's 404 ``notexist`` → :class:`ServerNotFound`, any other 404 →
        :class:`UnattributedNotFound`, 403 → :class:`PermissionDenied`."""
        payload, ctx = await self._call("GET", f"servers/{uuid}/", resource=uuid)
        try:
            return parse_server(payload)
        except InvalidObject as exc:
            raise InvalidResponse(str(exc), status=200, context=ctx, resource=uuid) from None

    async def list_servers(self, *, name: str | None = None, detail: bool = True) -> ServerList:
        """Every server of the user (full objects with ``detail``), following pagination to the end.

        Raises on any failed page: a partial listing is never returned as if it were complete.
        """
        params: dict[str, str] = {}
        if name is not None:
            params["name"] = name
        path = "servers/detail/" if detail else "servers/"
        objects, total, request_ids, ctx = await self._list_all(path, params)
        if len(objects) > _PARSE_INLINE_MAX:
            # Thousands of objects take a noticeable time to validate: keep the event loop responsive.
            servers, invalid = await asyncio.to_thread(_parse_servers, objects)
        else:
            servers, invalid = _parse_servers(objects)
        if invalid:
            log.warning("cloudsigma_invalid_objects", path="/" + path, count=len(invalid), first=invalid[0])
        return ServerList(
            servers=tuple(servers),
            total_count=total,
            request_ids=tuple(request_ids),
            fetched_at=time.time(),
            invalid=tuple(invalid),
            provider=ctx.provider if ctx else None,
            token_subject=ctx.token_subject if ctx else None,
        )

    async def list_tags(self) -> TagList:
        """GET ``/tags/``, every page: the names behind the tag references of server objects."""
        objects, total, request_ids, _ = await self._list_all("tags/", {})
        tags: list[Tag] = []
        invalid: list[str] = []
        for index, raw in enumerate(objects):
            try:
                tags.append(parse_tag(raw))
            except InvalidObject as exc:
                invalid.append(f"#{index} {exc.uuid or '?'}: {exc}")
        if invalid:
            log.warning("cloudsigma_invalid_objects", path="/tags/", count=len(invalid), first=invalid[0])
        return TagList(tags=tuple(tags), total_count=total, request_ids=tuple(request_ids), invalid=tuple(invalid))

    async def list_ips(self) -> IpList:
        """GET ``/ips/detail/``, every page: the owner's subscribed IPs and the dynamic ones in use, with
        ``subscription``, ``server``, ``meta`` and ``tags``. Objects that are not JSON objects are dropped."""
        objects, total, request_ids, ctx = await self._list_all("ips/detail/", {})
        return IpList(objects=tuple(o for o in objects if isinstance(o, dict)), total_count=total,
                      request_ids=tuple(request_ids), fetched_at=time.monotonic(),
                      provider=ctx.provider if ctx else None)

    async def update_ip_meta(self, address: str, meta: Mapping[str, str]) -> dict[str, Any]:
        """PUT ``/ips/{address}/`` with a new ``meta`` (the whole map: an update replaces it). Answers the IP."""
        payload, ctx = await self._call("PUT", f"ips/{address}/", resource=address, body={"meta": dict(meta)})
        if not isinstance(payload, dict):
            raise InvalidResponse("IP update answered no object", status=200, context=ctx, resource=address)
        return payload

    async def get_server_definition(self, uuid: str) -> dict[str, Any]:
        """GET ``/servers/{uuid}/`` as the API's JSON (every field, for a full-object PUT)."""
        payload, ctx = await self._call("GET", f"servers/{uuid}/", resource=uuid)
        if not isinstance(payload, dict):
            raise InvalidResponse("server is not an object", status=200, context=ctx, resource=uuid)
        return payload

    async def update_server(self, uuid: str, definition: Mapping[str, Any]) -> dict[str, Any]:
        """PUT ``/servers/{uuid}/`` with a whole server definition. Answers the server as the API now has it."""
        payload, ctx = await self._call("PUT", f"servers/{uuid}/", resource=uuid, body=dict(definition))
        if not isinstance(payload, dict):
            raise InvalidResponse("server update answered no object", status=200, context=ctx, resource=uuid)
        return payload

    async def server_availability_groups(self) -> tuple[tuple[str, ...], ...]:
        """GET ``/servers/availability_groups/``: groups of uuids of running servers sharing a physical host.

        The answer is a bare array of arrays (no envelope, no pages); any other shape is an
        :class:`InvalidResponse` — a group read in part could put two hosts' servers under one name.
        """
        payload, ctx = await self._call("GET", "servers/availability_groups/")
        if not isinstance(payload, list):
            raise InvalidResponse("availability groups are not an array", status=200, context=ctx)
        groups: list[tuple[str, ...]] = []
        for item in payload:
            if not isinstance(item, list) or not all(isinstance(u, str) and _UUID_RE.fullmatch(u) for u in item):
                raise InvalidResponse("an availability group is not an array of server uuids", status=200,
                                      context=ctx)
            groups.append(tuple(u.lower() for u in item))
        return tuple(groups)

    # ---- pagination ---------------------------------------------------------------------------

    async def _list_all(
        self, path: str, params: Mapping[str, str]
    ) -> tuple[list[Any], int, list[str], CallContext | None]:
        objects: list[Any] = []
        request_ids: list[str] = []
        offset = 0
        total: int | None = None
        last: CallContext | None = None
        mixed = False
        limit = self._page_size
        while True:
            query = dict(params, limit=str(limit), offset=str(offset))
            payload, ctx = await self._call("GET", path, params=query)
            if ctx.request_id:
                request_ids.append(ctx.request_id)
            if last is not None and (last.provider, last.token_subject) != (ctx.provider, ctx.token_subject):
                mixed = True
            last = ctx
            page, page_total = self._envelope(payload, ctx)
            if total is None:
                total = page_total
            elif page_total != total:
                # The collection changed between pages: start over rather than return a torn listing.
                raise InvalidResponse(
                    f"total_count changed during pagination ({total} -> {page_total})", status=200, context=ctx
                )
            objects.extend(page)
            if limit == 0 or not page or len(objects) >= total:
                break
            offset += len(page)
        if total is not None and len(objects) < total and limit != 0:
            raise InvalidResponse(
                f"pagination ended early: {len(objects)} of {total} objects", status=200,
                context=CallContext(method="GET", path="/" + path),
            )
        if mixed and last is not None:
            # A credential fallback between pages: the listing is no one credential's view of one account.
            last = replace(last, provider=None, token_subject=None)
        return objects, (total if total is not None else len(objects)), request_ids, last

    @staticmethod
    def _envelope(payload: Any, ctx: CallContext) -> tuple[list[Any], int]:
        if not isinstance(payload, dict) or not isinstance(payload.get("objects"), list):
            raise InvalidResponse("list response without an 'objects' array", status=200, context=ctx)
        objects: list[Any] = payload["objects"]
        meta = payload.get("meta")
        total = meta.get("total_count") if isinstance(meta, dict) else None
        if not isinstance(total, int) or isinstance(total, bool):
            total = len(objects)
        return objects, total

    # ---- one call, with retries ---------------------------------------------------------------

    async def _call(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, resource: str | None = None,
        body: Any = None,
    ) -> tuple[Any, CallContext]:
        state = _Attempt()

        def wait(retry_state: RetryCallState) -> float:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            if isinstance(exc, RateLimited) and exc.retry_after is not None:
                return min(exc.retry_after, self._retry.max_retry_after)
            if isinstance(exc, Unauthorized):
                return 0.0
            backoff = wait_random_exponential(multiplier=self._retry.initial_backoff, max=self._retry.max_backoff)
            return float(backoff(retry_state))

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, Unauthorized):
                # One fresh credential per call: tokens expire, a second 401 is real.
                return state.unauthorized == 1
            if isinstance(exc, RateLimited) and exc.retry_after is not None:
                return exc.retry_after <= self._retry.max_retry_after
            return isinstance(exc, CloudSigmaError) and exc.transient

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.attempts),
            wait=wait,
            retry=retry_if_exception(retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        return await self._send(method, path, params or {}, resource, state, body)
                    except Unauthorized:
                        state.unauthorized += 1
                        if state.credential is not None and state.unauthorized == 1:
                            self._credentials.invalidate(state.credential)
                        raise
        except PermissionDenied:
            alternative = await self._forbidden_fallback(state)
            if alternative is None:
                raise
            # Opt-in only (--allow-fallback-on-forbidden): the 403 above is already logged with its request id.
            state.override = alternative
            return await self._send(method, path, params or {}, resource, state, body)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _forbidden_fallback(self, state: _Attempt) -> Credential | None:
        fallback = getattr(self._credentials, "fallback_after_forbidden", None)
        failed = state.credential
        if fallback is None or failed is None or state.override is not None or not failed.impersonated:
            return None
        alternative: Credential | None = await fallback(self.user_email, self.region, failed)
        return alternative

    async def _send(
        self, method: str, path: str, params: Mapping[str, str], resource: str | None, state: _Attempt,
        body: Any = None,
    ) -> tuple[Any, CallContext]:
        credential = state.override or await self._credentials.get(self.user_email, self.region)
        state.credential = credential
        identity = credential.identity
        url = credential.api_url(self.region) + path.lstrip("/")
        endpoint = endpoint_of(path)
        ctx = CallContext(
            method=method, path=endpoint if resource is None else "/" + path.lstrip("/"),
            user=identity.user, provider=identity.provider, token_subject=identity.subject,
        )
        if self._throttle is not None:
            await self._throttle(method)
        started = time.monotonic()
        status: int | None = None
        request_id: str | None = None
        try:
            async with self._http().request(
                method, url, params=params, timeout=self._timeout, json=body,
                headers={"Authorization": credential.authorization_header()},
            ) as resp:
                status = resp.status
                request_id = resp.headers.get("X-REQUEST-ID") or resp.headers.get("X-Request-Id")
                ctx = replace(ctx, request_id=request_id)
                raw = await resp.read()
                retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
        except TimeoutError:
            self._record(method, endpoint, None, started, None, identity.provider, "RequestTimeout")
            err: CloudSigmaError = RequestTimeout(
                f"no answer within {self._timeout.total:g}s", context=ctx, resource=resource
            )
            self._log_failure(err, started)
            raise err from None
        except aiohttp.ClientError as exc:
            self._record(method, endpoint, None, started, None, identity.provider, "TransportError")
            err = TransportError(f"connection failed: {type(exc).__name__}", context=ctx, resource=resource)
            self._log_failure(err, started)
            raise err from None

        if 200 <= status < 300:
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                err = InvalidResponse("response body is not JSON", status=status, context=ctx, resource=resource)
                self._record(method, endpoint, status, started, request_id, identity.provider, "InvalidResponse")
                self._log_failure(err, started)
                raise err from None
            self._record(method, endpoint, status, started, request_id, identity.provider, "ok")
            log.debug(
                "cloudsigma_call", method=method, path=ctx.path, status=status,
                duration_ms=round((time.monotonic() - started) * 1000, 1), request_id=request_id,
                credential_provider=identity.provider,
            )
            return payload, ctx

        err = self._error_for(status, raw, ctx, resource, retry_after)
        self._record(method, endpoint, status, started, request_id, identity.provider, type(err).__name__)
        self._log_failure(err, started)
        raise err

    @staticmethod
    def _error_for(
        status: int, body: bytes, ctx: CallContext, resource: str | None, retry_after: float | None
    ) -> CloudSigmaError:
        try:
            parsed = parse_error_body(json.loads(body)) if body else parse_error_body(None)
        except ValueError:
            parsed = parse_error_body(None)
        kw: dict[str, Any] = {
            "status": status, "error_type": parsed.error_type, "error_message": parsed.error_message,
            "context": ctx, "resource": resource,
        }
        etype = (parsed.error_type or "").lower()
        text = parsed.error_message or f"HTTP {status}"
        # The HTTP status decides first (a 401 body may say error_type "permission"); the type breaks ties.
        if status == 401:
            return Unauthorized(f"unauthorized: {text}", **kw)
        if status == 404 and not is_notexist_proof(status, parsed, ctx.request_id):
            # Not provably CloudSigma's answer (an HTML page of a proxy, no request id): proves nothing.
            return UnattributedNotFound(f"404 without CloudSigma's notexist answer: {text}", **kw)
        if status == 404 or (status == 400 and etype == "notexist"):
            proven = status == 404 and ctx.path.startswith("/servers/") and bool(resource)
            cls = ServerNotFound if proven else NotFound
            return cls(f"not found: {text}", **kw)
        if status == 403:
            return PermissionDenied(f"permission denied: {text}", **kw)
        if status == 429:
            return RateLimited(f"rate limited: {text}", retry_after=retry_after, **kw)
        if status == 402 or etype in {"billing", "payment"}:
            return PaymentRequired(f"payment required: {text}", **kw)
        if status >= 500 or etype in _RETRYABLE_ERROR_TYPES:
            return ServerError(f"server error: {text}", **kw)
        return BadRequest(f"request rejected: {text}", **kw)

    def _record(
        self, method: str, endpoint: str, status: int | None, started: float, request_id: str | None,
        provider: str | None, outcome: str,
    ) -> None:
        if self._on_request is None:
            return
        try:
            self._on_request(RequestRecord(
                method=method, endpoint=endpoint, status=status, duration=time.monotonic() - started,
                request_id=request_id, provider=provider, outcome=outcome,
            ))
        except Exception:  # a metrics hook must never break a call
            log.exception("cloudsigma_request_hook_failed")

    @staticmethod
    def _log_failure(err: CloudSigmaError, started: float) -> None:
        log.warning(
            "cloudsigma_call_failed", message=err.message,
            duration_ms=round((time.monotonic() - started) * 1000, 1), **err.log_fields(),
        )

