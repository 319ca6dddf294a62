"""Fault injection middleware: latency, error statuses, 429, hangs, malformed bodies, connection resets.

Rules live in ``state.faults`` (see :class:`tests.emulator.state.Fault`) and are switched at run time from
Python or through ``POST /_emulator/faults``. Nothing here applies to ``/_emulator/*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .responses import STATE_KEY, api_error, ctx, default_error_type, json_response
from .state import API_PREFIX, Fault, normalise_path

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HANG_RELEASE_KEY = web.AppKey("emulator_hang_release", asyncio.Event)
MALFORMED_BODY = b'{"meta": {"limit": 20, "offset": 0, "total_count": 2}, "objects": [{"uuid": "3ca429cc-b4f4-'


_REASONS = {404: "Not Found", 502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}


class ConnectionAbortedByFault(Exception):
    """The connection was reset on purpose; the outer middleware records it and gives up the request."""


def is_control_path(path: str) -> bool:
    return path.startswith("/_emulator")


def _is_list_path(path: str) -> bool:
    return path.startswith(API_PREFIX + "/") and "{" not in normalise_path(path)


def abort_connection(request: web.Request) -> None:
    """Reset the TCP connection (RST, not FIN) without sending anything."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")  # an asyncio TransportSocket wrapper
    if sock is not None and hasattr(sock, "setsockopt"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _hang(request: web.Request, max_seconds: float) -> web.StreamResponse:
    release = request.app.get(HANG_RELEASE_KEY)
    try:
        if release is None:
            await asyncio.sleep(max_seconds)
        else:
            await asyncio.wait_for(release.wait(), timeout=max_seconds)
    except TimeoutError:
        pass
    state = request.app[STATE_KEY]
    return api_error(state, 504, "backend", "Injected hang released.")


def fault_response(request: web.Request, fault: Fault) -> Awaitable[web.StreamResponse] | web.StreamResponse:
    state = request.app[STATE_KEY]
    if fault.kind == "hang":
        return _hang(request, state.faults.hang_max_seconds)
    if fault.kind == "reset":
        abort_connection(request)
        raise ConnectionAbortedByFault
    if fault.kind == "malformed":
        return web.Response(status=200, body=MALFORMED_BODY, content_type="application/json")
    if fault.kind == "proxy_html":
        title = f"{fault.status} {_REASONS.get(fault.status, 'Error')}"
        return web.Response(status=fault.status, content_type="text/html",
                            text=f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center>"
                                 "<hr><center>nginx</center></body></html>\n")
    if fault.kind == "rate_limit":
        return api_error(state, 429, fault.error_type or "ratelimit",
                         fault.error_message
                         or f"Request was throttled. Expected available in {fault.retry_after} seconds.",
                         headers={"Retry-After": str(fault.retry_after)})
    status = fault.status
    etype = fault.error_type or default_error_type(status)
    default_msg = ("There was a concurrency error caused by two simultaneous conflicting operations."
                   if etype == "concurrency" else "There was a problem completing the request on the backend.")
    return api_error(state, status, etype, fault.error_message or default_msg)


@web.middleware
async def faults_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if is_control_path(request.path):
        return await handler(request)
    state = request.app[STATE_KEY]
    if state.faults.latency_ms > 0:
        await asyncio.sleep(state.faults.latency_ms / 1000.0)
    if not state.faults.rules:
        return await handler(request)
    chosen = state.faults.take(request.method, request.path, request.query, is_list=_is_list_path(request.path))
    answering: Fault | None = None
    for fault in chosen:
        if fault.kind == "delay":
            state.count("fault:delay")
            await asyncio.sleep(fault.delay_ms / 1000.0)
        else:
            answering = fault
    if answering is None:
        return await handler(request)
    ctx(request).fault = answering.kind
    state.count(f"fault:{answering.kind}")
    result = fault_response(request, answering)
    if isinstance(result, web.StreamResponse):
        return result
    return await result


def parse_fault(data: dict[str, Any]) -> Fault:
    """A :class:`Fault` from the JSON accepted by ``POST /_emulator/faults``."""
    allowed = {"kind", "count", "path_prefix", "method", "status", "error_type", "error_message", "retry_after",
               "offset", "delay_ms"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown fault fields {sorted(unknown)}")
    if "kind" not in data:
        raise ValueError("a fault needs a 'kind'")
    fault = Fault(**data)
    if fault.kind == "rate_limit":
        fault.status = 429
    return fault


async def control_faults(request: web.Request) -> web.Response:
    """``POST /_emulator/faults``: ``{"clear": bool, "latency_ms": float, "hang_max_seconds": float,
    "faults": [fault, ...]}`` or a single fault object (with ``kind``). ``GET`` lists, ``DELETE`` clears."""
    state = request.app[STATE_KEY]
    if request.method == "DELETE":
        state.clear_faults()
    elif request.method == "POST":
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            if "kind" in body:
                state.add_fault(parse_fault(body))
            else:
                if body.get("clear"):
                    state.clear_faults()
                if "latency_ms" in body:
                    state.faults.latency_ms = float(body["latency_ms"])
                if "hang_max_seconds" in body:
                    state.faults.hang_max_seconds = float(body["hang_max_seconds"])
                for item in body.get("faults", []):
                    state.add_fault(parse_fault(item))
        except (ValueError, TypeError) as exc:
            return json_response({"error": str(exc)}, status=400)
    return json_response({"latency_ms": state.faults.latency_ms,
                          "hang_max_seconds": state.faults.hang_max_seconds,
                          "faults": [f.to_json() for f in state.faults.rules]})
