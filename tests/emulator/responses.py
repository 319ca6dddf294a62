"""Response helpers shared by the emulator's handlers and middlewares."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .auth import AuthResult
from .state import EmulatorState

STATE_KEY = web.AppKey("emulator_state", EmulatorState)


@dataclass
class RequestContext:
    """Per-request facts collected for the request log."""

    request_id: str
    auth: AuthResult | None = None
    auth_kind: str | None = None
    token_claims: dict[str, Any] = field(default_factory=dict)
    token_source: str | None = None
    client_id: str | None = None
    fault: str | None = None


CTX_KEY = web.RequestKey("emulator_ctx", RequestContext)


def ctx(request: web.Request) -> RequestContext:
    """The request's context (created by the outer middleware; a throwaway one outside it)."""
    found = request.get(CTX_KEY)
    if isinstance(found, RequestContext):
        return found
    fresh = RequestContext(request_id="")
    request[CTX_KEY] = fresh
    return fresh

_DEFAULT_TYPES = {400: "validation", 401: "permission", 403: "permission", 404: "notexist", 405: "validation",
                  406: "validation", 429: "ratelimit", 500: "backend", 502: "backend", 503: "concurrency",
                  504: "backend"}


def default_error_type(status: int) -> str:
    return _DEFAULT_TYPES.get(status, "backend" if status >= 500 else "validation")


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json",
                        headers=dict(headers or {}))


def api_error(state: EmulatorState, status: int, error_type: str | None, message: str, *,
              error_point: str | None = None, headers: Mapping[str, str] | None = None) -> web.Response:
    """A CloudSigma error: ``[{"error_type", "error_message", "error_point"}]`` (or one object, see
    ``state.single_object_errors``)."""
    etype = error_type or default_error_type(status)
    body: Any
    if state.single_object_errors:
        body = {"error_type": etype, "error_message": message}
    else:
        body = [{"error_type": etype, "error_message": message, "error_point": error_point}]
    return json_response(body, status=status, headers=headers)


class ApiError(Exception):
    """Raised by handlers; the outer middleware turns it into :func:`api_error`."""

    def __init__(self, status: int, message: str, error_type: str | None = None, *, error_point: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.error_point = error_point
        self.headers = dict(headers or {})

    def response(self, state: EmulatorState) -> web.Response:
        return api_error(state, self.status, self.error_type, self.message, error_point=self.error_point,
                         headers=self.headers)


class OAuthError(Exception):
    """Raised by the OAuth handlers; answered Keycloak-style ``{"error", "error_description"}``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def response(self) -> web.Response:
        return json_response({"error": self.error, "error_description": self.description}, status=self.status,
                             headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
