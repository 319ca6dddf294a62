"""A bearer token given as is: a value, or a mounted file re-read when it changes.

For tokens minted outside the CCM (by an operator, a sidecar, a CI job). The file is checked on every
call (a ``stat``; the content is re-read when inode, size or mtime change, and at least every
``recheck_interval`` seconds), so the provider is not cached by the chain (``cacheable = False``) and a
rotated Secret takes effect at once. A JWT's ``exp`` is honoured: an expired token is refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from credentials.base import Credential, CredentialNotConfigured, CredentialRejected, CredentialUnavailable, Identity
from credentials.claims import decode_claims, loggable_claims
from credentials.config_protocol import (
    DEFAULT_API_URL,
    DEFAULT_IMPERSONATION_API_URL,
    CredentialSettings,
    path_setting,
    secret_setting,
    setting,
)

__all__ = ["StaticTokenProvider", "from_settings"]

_Signature = tuple[int, int, int, int]


class StaticTokenProvider:
    name = "static-token"
    #: The chain calls :meth:`acquire` every time instead of caching: it is cheap and sees rotations.
    cacheable = False

    def __init__(
        self,
        *,
        token: SecretStr | None = None,
        token_file: Path | None = None,
        impersonated: bool = False,
        api_url_template: str = DEFAULT_API_URL,
        recheck_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._token = token if token is not None and token.get_secret_value().strip() else None
        self.token_file = token_file
        self.impersonated = impersonated
        self.api_url_template = api_url_template
        self.recheck_interval = recheck_interval
        self._clock = clock
        self._signature: _Signature | None = None
        self._read_at = 0.0
        self._file_token: str | None = None
        self._credential: Credential | None = None

    def __repr__(self) -> str:
        source = f"file={str(self.token_file)!r}" if self.token_file else "value=**********"
        return f"StaticTokenProvider({source}, impersonated={self.impersonated})"

    async def aclose(self) -> None:
        return None

    async def acquire(self, user_email: str, region: str) -> Credential:
        token = self._current_token(user_email)
        cached = self._credential
        subject = (user_email or None) if self.impersonated else None
        if cached is None or cached.secret.get_secret_value() != token or (
                cached.identity.requested_subject != subject):
            cached = self._credential = self._build(token, user_email)
        if cached.expires_at is not None and cached.expires_at <= self._clock():
            where = f"file {self.token_file}" if self.token_file else "CLOUDSIGMA_STATIC_TOKEN"
            raise CredentialRejected(f"the static token from {where} expired (exp {cached.expires_at:.0f}): "
                                     "rotate it", provider=self.name, user=cached.identity.user, reason="expired")
        return cached

    def _build(self, token: str, user_email: str) -> Credential:
        raw = decode_claims(token)
        claims = loggable_claims(raw)
        exp = claims.get("exp")
        user = claims.get("email") or claims.get("preferred_username") or (user_email if self.impersonated else None)
        return Credential(
            scheme="bearer",
            secret=SecretStr(token),
            api_url_template=self.api_url_template,
            identity=Identity(provider=self.name, user=str(user) if user else None, claims=claims,
                              requested_subject=(user_email or None) if self.impersonated else None),
            expires_at=float(exp) if isinstance(exp, int | float) else None,
            impersonated=self.impersonated,
        )

    def _current_token(self, user_email: str) -> str:
        if self.token_file is None:
            if self._token is None:
                raise CredentialNotConfigured("not configured: set CLOUDSIGMA_STATIC_TOKEN or "
                                              "CLOUDSIGMA_STATIC_TOKEN_FILE", provider=self.name,
                                              user=user_email or None, reason="not_configured")
            return self._token.get_secret_value().strip()
        return self._read_file(user_email)

    def _read_file(self, user_email: str) -> str:
        path = self.token_file
        assert path is not None
        now = self._clock()
        try:
            st = os.stat(path)
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            stale = now - self._read_at >= self.recheck_interval or now < self._read_at
            if self._file_token is None or signature != self._signature or stale:
                text = path.read_text(encoding="utf-8").strip()
                self._signature, self._read_at = signature, now
                self._file_token = text or None
        except (OSError, UnicodeDecodeError) as exc:
            self._file_token, self._signature = None, None
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise CredentialUnavailable(f"cannot read the static token file {path}: {detail}", provider=self.name,
                                        user=user_email or None, reason="file_unreadable") from None
        if self._file_token is None:
            raise CredentialUnavailable(f"the static token file {path} is empty", provider=self.name,
                                        user=user_email or None, reason="file_empty")
        return self._file_token


def from_settings(settings: CredentialSettings) -> StaticTokenProvider:
    impersonated = bool(setting(settings, "static_token_impersonated", False))
    # An impersonated token acts as the user only on the direct. host; anything else uses api_url.
    template = (setting(settings, "impersonation_api_url", DEFAULT_IMPERSONATION_API_URL) if impersonated
                else setting(settings, "api_url", DEFAULT_API_URL))
    return StaticTokenProvider(
        token=secret_setting(settings, "static_token"),
        token_file=path_setting(settings, "static_token_file"),
        impersonated=impersonated,
        api_url_template=template,
    )
