"""A bearer token given as is: a value, or a mounted file re-read when it changes.

For tokens minted outside the CCM (by an operator, a sidecar, a CI job). The file is read through
:class:`credentials.files.WatchedFile` (a ``stat`` at most once a second; re-read when inode, size or mtime
change, e.g. a swapped Secret volume), so the provider is not cached by the chain (``cacheable = False``) and a
rotated token takes effect at once. A JWT's ``exp`` is honoured: an expired token is refused. An impersonated
static token is verified by the chain like any impersonated token (:mod:`credentials.verify`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from credentials.base import Credential, CredentialRejected, Identity, SecretSink
from credentials.claims import decode_claims, loggable_claims
from credentials.config_protocol import (
    DEFAULT_API_URL,
    DEFAULT_IMPERSONATION_API_URL,
    CredentialSettings,
    path_setting,
    secret_setting,
    setting,
)
from credentials.secrets import SecretSource

__all__ = ["StaticTokenProvider", "from_settings"]


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
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A file, when given, wins over a value (it is the one that can be rotated).
        value = token if token is not None and token.get_secret_value().strip() and token_file is None else None
        self.token = SecretSource(what="static token", env="CLOUDSIGMA_STATIC_TOKEN",
                                  value=SecretStr(value.get_secret_value().strip()) if value is not None else None,
                                  file=token_file, check_interval=check_interval)
        self.token_file = token_file
        self.impersonated = impersonated
        self.api_url_template = api_url_template
        self._clock = clock
        self._credential: Credential | None = None

    def __repr__(self) -> str:
        source = f"file={str(self.token_file)!r}" if self.token_file else "value=**********"
        return f"StaticTokenProvider({source}, impersonated={self.impersonated})"

    async def aclose(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        missing = [] if self.token.configured else [self.token.setting_names]
        return {"configured": not missing, "missing": missing, "token_source": self.token.source,
                "impersonated": self.impersonated}

    def attach_secret_sink(self, sink: SecretSink) -> None:
        self.token.attach_sink(sink)

    async def acquire(self, user_email: str, region: str) -> Credential:
        token = self.token.get(provider=self.name, user=user_email or None).get_secret_value()
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
