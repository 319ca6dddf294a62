"""Typed CloudSigma API errors.

Handlers branch on these types, never on message text. Every error carries what an operator needs to
find the call in CloudSigma's own logs: HTTP status, ``error_type``/``error_message`` from the body,
the ``X-REQUEST-ID`` response header, method and path, and the identity the call was made as.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CallContext:
    """Where an error happened: enough to look the request up on CloudSigma's side."""

    method: str = ""
    path: str = ""
    request_id: str | None = None
    #: Who the call was made as (email / token subject / provider name) — never a secret.
    user: str | None = None
    provider: str | None = None
    token_subject: str | None = None


class CloudSigmaError(Exception):
    """Base of every error raised by :mod:`cloudsigma`."""

    #: True when the same request may succeed if simply sent again later.
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        context: CallContext | None = None,
        resource: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.error_message = error_message
        self.context = context or CallContext()
        self.resource = resource

    @property
    def request_id(self) -> str | None:
        return self.context.request_id

    def log_fields(self) -> dict[str, Any]:
        """Structured fields for a log line or an event; contains no secret by construction."""
        fields: dict[str, Any] = {
            "error": type(self).__name__,
            "status": self.status,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "request_id": self.context.request_id,
            "method": self.context.method,
            "path": self.context.path,
        }
        if self.context.user:
            fields["cs_user"] = self.context.user
        if self.context.provider:
            fields["credential_provider"] = self.context.provider
        if self.context.token_subject:
            fields["token_sub"] = self.context.token_subject
        if self.resource:
            fields["resource"] = self.resource
        return {k: v for k, v in fields.items() if v is not None}

    def event_text(self) -> str:
        """What happened, without per-attempt values (request id, identity): the same failure reads the same
        every time, so an Event about it is updated instead of repeated. The log line has the rest."""
        parts = [self.message]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.error_type:
            parts.append(f"error_type={self.error_type}")
        if self.context.method:
            parts.append(f"call={self.context.method} {self.context.path}")
        return " ".join(parts)

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.error_type:
            parts.append(f"error_type={self.error_type}")
        if self.error_message and self.error_message != self.message:
            parts.append(f"error_message={self.error_message!r}")
        if self.context.method:
            parts.append(f"call={self.context.method} {self.context.path}")
        if self.context.request_id:
            parts.append(f"request_id={self.context.request_id}")
        if self.context.user:
            parts.append(f"user={self.context.user}")
        return " ".join(parts)


class NotFound(CloudSigmaError):
    """``notexist`` from CloudSigma: the resource does not exist for this identity in this location.

    Only raised for answers that are provably CloudSigma's own (see :func:`is_notexist_proof`); a 404 of
    another shape is an :class:`UnattributedNotFound`.
    """


class ServerNotFound(NotFound):
    """A proven 404 ``notexist`` on ``/servers/{uuid}/``: the only answer that can prove a server is gone
    (and then only for the account the call was made as — the caller checks that)."""


class UnattributedNotFound(CloudSigmaError):
    """A 404 that CloudSigma cannot be shown to have sent: no ``notexist`` error body or no ``X-REQUEST-ID``
    (an edge proxy's HTML page, a wrong API URL). Proves nothing about the resource."""


class PermissionDenied(CloudSigmaError):
    """403 / ``permission``: the resource may exist but this identity may not LIST it. Never "gone"."""


class Unauthorized(CloudSigmaError):
    """401: the credential was not accepted (expired, wrong password, token for another audience)."""


class BadRequest(CloudSigmaError):
    """400/405/406 and other non-retryable client errors (``validation`` ...)."""


class PaymentRequired(CloudSigmaError):
    """402 / ``billing`` / ``payment``."""


class RateLimited(CloudSigmaError):
    """429: slow down; ``retry_after`` seconds from the ``Retry-After`` header when given."""

    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(CloudSigmaError):
    """5xx, or a ``concurrency``/``backend``/``database`` error that documentation says to retry."""

    transient = True


class TransportError(CloudSigmaError):
    """No HTTP answer: connection refused/reset, DNS, or a timeout."""

    transient = True


class RequestTimeout(TransportError):
    """The request did not complete within its timeout."""


class InvalidResponse(CloudSigmaError):
    """The answer could not be understood (malformed JSON, wrong envelope, wrong field types)."""

    transient = True


@dataclass(frozen=True)
class ErrorBody:
    """A parsed CloudSigma error body (the API sends a list; the incident report shows a single object)."""

    error_type: str | None = None
    error_message: str | None = None
    error_point: str | None = None
    extra: list[dict[str, Any]] = field(default_factory=list)


def is_notexist_proof(status: int, body: ErrorBody, request_id: str | None) -> bool:
    """Whether an error answer is CloudSigma's own "this does not exist": HTTP 404, a CloudSigma error body
    (list or single-object shape) of type ``notexist``, and an ``X-REQUEST-ID``. The one place that decides."""
    return status == 404 and (body.error_type or "").lower() == "notexist" and bool(request_id)


def parse_error_body(payload: Any) -> ErrorBody:
    """Accept ``[{"error_type":..}]``, ``{"error_type":..}`` or anything else (→ empty body)."""
    items: list[Any]
    if isinstance(payload, list):
        items = payload
    elif isinstance(payload, dict):
        items = [payload]
    else:
        return ErrorBody()
    dicts = [i for i in items if isinstance(i, dict)]
    if not dicts:
        return ErrorBody()
    first = dicts[0]

    def _s(value: Any) -> str | None:
        return value if isinstance(value, str) else (None if value is None else str(value))

    return ErrorBody(
        error_type=_s(first.get("error_type")),
        error_message=_s(first.get("error_message")),
        error_point=_s(first.get("error_point")),
        extra=dicts[1:],
    )
