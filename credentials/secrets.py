"""A secret given as a value (env var or flag) or as a mounted file that is re-read when it changes.

Files are read through :class:`credentials.files.WatchedFile`, so a rotated Kubernetes Secret (a swapped
``..data`` symlink) or a kubelet-rotated projected token is picked up by the next token exchange without a
restart; ``WatchedFile`` logs ``watched_file_reloaded`` naming the file (never its content). Every value
loaded — the first and each rotated one — goes to the attached sink (the daemon's log redactor).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from credentials.base import CredentialNotConfigured, CredentialUnavailable, SecretSink
from credentials.files import WatchedFile

__all__ = ["SecretSource"]


class SecretSource:
    """One secret setting: ``value`` (from ``env``) wins over ``file`` (from ``file_env``) when both are set."""

    def __init__(self, *, what: str, env: str, file_env: str | None = None, value: SecretStr | None = None,
                 file: Path | None = None, check_interval: float = 1.0) -> None:
        self.what = what
        self.env = env
        self.file_env = file_env or f"{env}_FILE"
        self._value = value if value is not None and value.get_secret_value().strip() else None
        self._file = WatchedFile(file, what=what, check_interval=check_interval) if file is not None else None
        self._sink: SecretSink | None = None
        self._reported_version = -1

    @property
    def configured(self) -> bool:
        return self._value is not None or self._file is not None

    @property
    def path(self) -> Path | None:
        return self._file.path if self._file is not None else None

    @property
    def source(self) -> str:
        """Where the secret comes from, for diagnostics: ``env CLOUDSIGMA_X`` or ``file /path``."""
        if self._value is not None:
            return f"env {self.env}"
        if self._file is not None:
            return f"file {self._file.path}"
        return "unset"

    @property
    def setting_names(self) -> str:
        return f"{self.env} or {self.file_env}"

    def attach_sink(self, sink: SecretSink) -> None:
        """Report every loaded value to ``sink`` (now for a value already known, later for each reload)."""
        self._sink = sink
        self._reported_version = -1
        if self._value is not None:
            sink(self._value.get_secret_value())
        elif self._file is not None and self._file.version > 0:
            self._report(self._file.read_text())

    def get(self, *, provider: str, user: str | None = None) -> SecretStr:
        """The current value; raises :class:`CredentialNotConfigured` or :class:`CredentialUnavailable`."""
        if self._value is not None:
            return self._value
        if self._file is None:
            raise CredentialNotConfigured(f"not configured: set {self.setting_names}", provider=provider,
                                          user=user, reason="not_configured")
        try:
            text = self._file.read_text()
        except OSError as exc:
            detail = exc.strerror or type(exc).__name__
            raise CredentialUnavailable(f"cannot read the {self.what} file {self._file.path}: {detail}",
                                        provider=provider, user=user, reason="file_unreadable") from None
        except UnicodeDecodeError:
            raise CredentialUnavailable(f"the {self.what} file {self._file.path} is not UTF-8 text",
                                        provider=provider, user=user, reason="file_unreadable") from None
        if not text:
            raise CredentialUnavailable(f"the {self.what} file {self._file.path} is empty", provider=provider,
                                        user=user, reason="file_empty")
        self._report(text)
        return SecretStr(text)

    def _report(self, text: str) -> None:
        assert self._file is not None
        if self._sink is not None and text and self._file.version != self._reported_version:
            self._reported_version = self._file.version
            self._sink(text)

    def __repr__(self) -> str:
        return f"SecretSource({self.what!r}, {self.source})"
