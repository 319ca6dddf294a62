"""Files that change under a running process: mounted Secrets, kubeconfigs, projected service-account tokens.

Kubernetes updates a Secret or projected volume by writing a new timestamped directory and swapping the
``..data`` symlink, so the path we hold keeps its name but resolves to a new inode; the kubelet rotates a
projected token the same way. :class:`WatchedFile` notices either (inode, size or mtime of the resolved file
changed) on the next read, at most once per ``check_interval``, and re-reads the file. A read that fails
after a good one keeps serving the last good content (a half-written file must not take the daemon down) and
logs a warning once; the content itself is never logged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

__all__ = ["WatchedFile"]

log = structlog.get_logger(__name__)

_Signature = tuple[int, int, int, int]


def _signature(path: Path) -> _Signature:
    st = os.stat(path)  # follows the ..data symlink of Secret volumes
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class WatchedFile:
    """The current content of ``path`` (stripped), re-read when the file is replaced or rewritten."""

    def __init__(self, path: Path | str, *, what: str = "file", check_interval: float = 1.0,
                 on_reload: Callable[[WatchedFile], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        #: What the file holds, for log lines ("client secret", "tenant kubeconfig"); never its content.
        self.what = what
        self.check_interval = check_interval
        self._on_reload = on_reload
        self._clock = clock
        self._content: str | None = None
        self._signature: _Signature | None = None
        self._checked_at = float("-inf")
        self._failing = False
        #: Incremented on every successful (re)load: callers compare it to rebuild what they derived.
        self.version = 0

    def read_text(self) -> str:
        """The content, re-read if the file changed since the last check. Raises ``OSError`` only when the
        file has never been read successfully."""
        now = self._clock()
        if self._content is not None and now - self._checked_at < self.check_interval:
            return self._content
        self._checked_at = now
        try:
            signature = _signature(self.path)
            if self._content is not None and signature == self._signature:
                return self._content
            content = self.path.read_text().strip()
        except OSError as exc:
            if self._content is None:
                raise
            if not self._failing:
                self._failing = True
                log.warning("watched_file_unreadable", path=str(self.path), what=self.what,
                            error=exc.strerror or type(exc).__name__, keeping="last good content")
            return self._content
        first = self._content is None
        changed = content != self._content
        self._content, self._signature, self._failing = content, signature, False
        if changed:
            self.version += 1
            if not first:
                log.info("watched_file_reloaded", path=str(self.path), what=self.what, version=self.version)
                if self._on_reload is not None:
                    self._on_reload(self)
        return content

    def changed(self) -> bool:
        """True when the next :meth:`read_text` would return new content (cheap: one ``stat``)."""
        try:
            return _signature(self.path) != self._signature
        except OSError:
            return False
