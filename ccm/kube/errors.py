"""Typed Kubernetes API errors, so callers branch on types (conflict, gone, forbidden), not on text."""

from __future__ import annotations

from typing import Any


class KubeError(Exception):
    """An error answer (or no answer) from the Kubernetes API server."""

    transient: bool = False

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None,
                 method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason
        self.method = method
        self.path = path

    def log_fields(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "k8s_status": self.status, "k8s_reason": self.reason,
                "k8s_call": f"{self.method} {self.path}", "k8s_message": self.message}

    def __str__(self) -> str:
        return f"{self.method} {self.path}: {self.status} {self.reason}: {self.message}"


class Conflict(KubeError):
    """409: the object changed since we read it (resourceVersion / uid precondition)."""

    transient = True


class KubeNotFound(KubeError):
    """404: the object is gone."""


class Gone(KubeError):
    """410: a watch's resourceVersion is too old; relist."""


class Forbidden(KubeError):
    """403: RBAC does not allow this; the fix is in the ClusterRole."""


class Invalid(KubeError):
    """422: the API server rejected the object (e.g. a providerID change)."""


class KubeUnavailable(KubeError):
    """5xx, 429, timeouts or connection errors: try again later."""

    transient = True


def error_for(status: int, body: Any, *, method: str, path: str) -> KubeError:
    reason = None
    message = f"HTTP {status}"
    if isinstance(body, dict):
        reason = body.get("reason") if isinstance(body.get("reason"), str) else None
        if isinstance(body.get("message"), str):
            message = body["message"]
    kwargs: dict[str, Any] = {"status": status, "reason": reason, "method": method, "path": path}
    if status == 409:
        return Conflict(message, **kwargs)
    if status == 404:
        return KubeNotFound(message, **kwargs)
    if status == 410:
        return Gone(message, **kwargs)
    if status in (401, 403):
        return Forbidden(message, **kwargs)
    if status == 422:
        return Invalid(message, **kwargs)
    if status == 429 or status >= 500:
        return KubeUnavailable(message, **kwargs)
    return KubeError(message, **kwargs)
