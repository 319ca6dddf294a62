"""HTTP basic authentication with a CloudSigma username (email) and password — the legacy fallback.

The calls act as that account, not as the cluster owner, and go to the ordinary API host. The password comes
from ``CLOUDSIGMA_PASSWORD`` or from ``CLOUDSIGMA_PASSWORD_FILE``, re-read when the file changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from credentials.base import Credential, Identity, SecretSink
from credentials.config_protocol import (
    DEFAULT_API_URL,
    CredentialSettings,
    path_setting,
    secret_setting,
    setting,
    str_setting,
)
from credentials.providers._common import require, require_secret
from credentials.secrets import SecretSource

__all__ = ["PasswordProvider", "from_settings"]


class PasswordProvider:
    name = "password"
    #: Not kept in the token cache (the credential never expires): each call reads the current password, which
    #: costs at most one ``stat`` a second, so a rotated file is used by the very next request.
    cacheable = False

    def __init__(self, *, username: str | None, password: SecretStr | None = None,
                 api_url_template: str = DEFAULT_API_URL, password_file: Path | None = None) -> None:
        self.username = username or None
        self.password = SecretSource(what="password", env="CLOUDSIGMA_PASSWORD", value=require_secret(password),
                                     file=password_file)
        self.api_url_template = api_url_template
        self._credential: Credential | None = None

    def __repr__(self) -> str:
        return f"PasswordProvider(username={self.username!r}, api_url_template={self.api_url_template!r})"

    async def acquire(self, user_email: str, region: str) -> Credential:
        require(self.name, self.username, {
            "CLOUDSIGMA_USERNAME": self.username,
            "CLOUDSIGMA_PASSWORD (or CLOUDSIGMA_PASSWORD_FILE)": self.password if self.password.configured else None,
        })
        secret = self.password.get(provider=self.name, user=self.username)
        cached = self._credential
        if cached is not None and cached.secret.get_secret_value() == secret.get_secret_value():
            return cached
        self._credential = Credential(
            scheme="basic",
            secret=secret,
            api_url_template=self.api_url_template,
            identity=Identity(provider=self.name, user=self.username),
            username=self.username,
        )
        return self._credential

    def describe(self) -> dict[str, Any]:
        missing = [] if self.username else ["CLOUDSIGMA_USERNAME"]
        missing += [] if self.password.configured else [self.password.setting_names]
        return {"configured": not missing, "missing": missing, "username": self.username,
                "password_source": self.password.source}

    def attach_secret_sink(self, sink: SecretSink) -> None:
        self.password.attach_sink(sink)

    async def aclose(self) -> None:
        return None


def from_settings(settings: CredentialSettings) -> PasswordProvider:
    return PasswordProvider(
        username=str_setting(settings, "username"),
        password=secret_setting(settings, "password"),
        password_file=path_setting(settings, "password_file"),
        api_url_template=setting(settings, "api_url", DEFAULT_API_URL),
    )
