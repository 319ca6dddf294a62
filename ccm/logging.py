"""structlog, configured once: JSON in production, console on a TTY, and redaction of secrets everywhere.

The redaction processor runs last-but-one over every string in the event (including rendered exception
text and URLs): known secret values (client secret, password, the live tokens the chain acquired) are replaced,
and so is anything shaped like a bearer/basic credential, a JWT, or a ``secret=``/``password=``/``token=`` pair.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping
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
    """Removes secrets from log events. Thread-safe; secrets can be added at run time (new tokens).

    Two kinds of secret: *configured* ones (client secret, password, static token: ``add(value)``) are kept for
    the life of the process; *tokens* (``add(value, until=expiry)``) are kept while they can still appear — until
    they expire or are retired (:meth:`retire`, e.g. after a 401) plus ``grace`` — and at most ``max_tokens`` of
    them (least recently added first out). So the set stays as small as the set of live credentials however long
    the process runs, and the per-line cost with it. Adding a secret already held is O(1); only a new one
    rebuilds the longest-first tuple the hot path reads.
    """

    def __init__(self, secrets: Iterable[str] = (), *, max_tokens: int = 256, grace: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._configured: set[str] = set()
        self._tokens: OrderedDict[str, float] = OrderedDict()  # token -> forget after (clock time)
        self._max_tokens = max_tokens
        self._grace = grace
        self._clock = clock
        self._longest_first: tuple[str, ...] = ()
        for secret in secrets:
            self.add(secret)

    def __len__(self) -> int:
        """How many secrets every log string is checked against."""
        return len(self._longest_first)

    def add(self, secret: str | None, *, until: float | None = None) -> None:
        """Redact ``secret`` from now on: for good, or (a token) until ``until`` (clock time) plus the grace."""
        # Very short values would redact ordinary words; they are not credentials worth the noise.
        if not secret or len(secret) < 6:
            return
        if secret in self._configured:
            return
        if until is None:
            with self._lock:
                self._configured.add(secret)
                self._tokens.pop(secret, None)
                self._rebuild()
            return
        forget_at = until + self._grace
        with self._lock:
            if secret in self._tokens:  # the same token handed out again: O(1)
                if forget_at > self._tokens[secret]:
                    self._tokens[secret] = forget_at
                self._tokens.move_to_end(secret)
                return
            self._tokens[secret] = forget_at
            self._prune()
            self._rebuild()

    def retire(self, secret: str | None) -> None:
        """A token was invalidated: it may still show up in the error of a request in flight, not later."""
        if not secret:
            return
        with self._lock:
            if secret in self._tokens:
                self._tokens[secret] = min(self._tokens[secret], self._clock() + self._grace)

    def _prune(self) -> None:
        now = self._clock()
        for token, forget_at in list(self._tokens.items()):
            if forget_at <= now:
                del self._tokens[token]
        while len(self._tokens) > self._max_tokens:
            self._tokens.popitem(last=False)

    def _rebuild(self) -> None:
        self._longest_first = tuple(sorted((*self._configured, *self._tokens), key=len, reverse=True))

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
