"""structlog, configured once: JSON in production, console on a TTY, and redaction of secrets everywhere.

The redaction processor runs last-but-one over every string in the event (including rendered exception
text and URLs): known secret values (client secret, password, every token the chain acquired) are replaced,
and so is anything shaped like a bearer/basic credential, a JWT, or a ``secret=``/``password=``/``token=`` pair.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"
_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    re.compile(r"(?i)((?:client_secret|password|passwd|access_token|refresh_token|subject_token|token|secret)"
               r"[\"']?\s*[=:]\s*[\"']?)([^\s\"'&,}]+)"),
    re.compile(r"(?i)(https?://[^/\s:@]+:)([^@\s/]+)(@)"),
)


_HINTS = ("bearer", "basic", "eyj", "secret", "password", "passwd", "token", "://")


def _may_hold_secret(text: str) -> bool:
    """Cheap pre-check so the regular expressions only run on strings that could match one of them."""
    lowered = text.lower()
    return any(hint in lowered for hint in _HINTS)


class Redactor:
    """Removes secrets from log events. Thread-safe; secrets can be added at run time (new tokens)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._longest_first: tuple[str, ...] = ()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        # Very short values would redact ordinary words; they are not credentials worth the noise.
        if secret and len(secret) >= 6:
            with self._lock:
                self._secrets.add(secret)
                self._longest_first = tuple(sorted(self._secrets, key=len, reverse=True))

    def redact_text(self, text: str) -> str:
        for secret in self._longest_first:  # a tuple swapped whole on add(): safe to read without the lock
            if secret in text:
                text = text.replace(secret, REDACTED)
        if not _may_hold_secret(text):
            return text  # the hot path: most log strings are names, uuids and numbers
        for pattern in _PATTERNS:
            if pattern.groups >= 2:
                text = pattern.sub(lambda m: m.group(1) + REDACTED + (m.group(3) if m.lastindex == 3 else ""), text)
            else:
                text = pattern.sub(REDACTED, text)
        return text

    def redact(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {k: self.redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.redact(v) for v in value)
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.redact_text(str(value))

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return {k: self.redact(v) for k, v in event_dict.items()}


def configure_logging(*, level: str = "info", fmt: str = "auto", redactor: Redactor | None = None,
                      stream: Any = None) -> Redactor:
    """Configure structlog (and stdlib logging of libraries) once for the process."""
    redactor = redactor or Redactor()
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not (hasattr(out, "isatty") and out.isatty()))
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    numeric = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiohttp, kubernetes-asyncio) log through stdlib: route warnings+ through the same redaction.
    handler = logging.StreamHandler(out)
    handler.addFilter(_StdlibRedactFilter(redactor))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    return redactor


class _StdlibRedactFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redactor.redact_text(record.getMessage())
        record.args = ()
        return True
