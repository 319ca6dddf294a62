"""HTTP basic authentication with a CloudSigma username (email) and password — the legacy fallback.

The calls act as that account, not as the cluster owner, and go to the ordinary API host.
"""

from __future__ import annotations

from pydantic import SecretStr

from credentials.base import Credential, Identity
from credentials.config_protocol import DEFAULT_API_URL, CredentialSettings, secret_setting, setting, str_setting
from credentials.providers._common import require, require_secret

__all__ = ["PasswordProvider", "from_settings"]


class PasswordProvider:
    name = "password"

    def __init__(self, *, username: str | None, password: SecretStr | None,
                 api_url_template: str = DEFAULT_API_URL) -> None:
        self.username = username or None
        self._password = require_secret(password)
        self.api_url_template = api_url_template

    def __repr__(self) -> str:
        return f"PasswordProvider(username={self.username!r}, api_url_template={self.api_url_template!r})"

    async def acquire(self, user_email: str, region: str) -> Credential:
        require(self.name, self.username, {
            "CLOUDSIGMA_USERNAME": self.username,
            "CLOUDSIGMA_PASSWORD (or CLOUDSIGMA_PASSWORD_FILE)": self._password,
        })
        assert self._password is not None
        return Credential(
            scheme="basic",
            secret=self._password,
            api_url_template=self.api_url_template,
            identity=Identity(provider=self.name, user=self.username),
            username=self.username,
        )

    async def aclose(self) -> None:
        return None


def from_settings(settings: CredentialSettings) -> PasswordProvider:
    return PasswordProvider(
        username=str_setting(settings, "username"),
        password=secret_setting(settings, "password"),
        api_url_template=setting(settings, "api_url", DEFAULT_API_URL),
    )
