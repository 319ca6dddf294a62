"""The settings the credential providers read, as a structural type.

``ccm.config.Settings`` satisfies it; so does any object with these attributes (tests use a namespace).
Providers read each attribute with :func:`setting`, i.e. ``getattr`` with a default, so an object that
lacks some of them still works. Secrets may be given as :class:`SecretStr` or as plain strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

from pydantic import SecretStr

DEFAULT_API_URL = "https://{region}.cloudsigma.com/api/2.0/"
DEFAULT_IMPERSONATION_API_URL = "https://direct.{region}.cloudsigma.com/api/2.0/"
DEFAULT_SERVICE_PROVIDER_URL = "https://direct.{region}.cloudsigma.com/service_provider/api/v1/"
DEFAULT_REALM = "cloudsigma"
DEFAULT_UMA_AUDIENCE = "service_provider_api"
DEFAULT_HTTP_TIMEOUT = 15.0
DEFAULT_REFRESH_MARGIN = 120.0
DEFAULT_CACHE_SIZE = 256

T = TypeVar("T")


class CredentialSettings(Protocol):
    """Read-only view of the settings used by :mod:`credentials` (all optional at run time)."""

    @property
    def impersonation_enabled(self) -> bool: ...
    @property
    def impersonation_strategy(self) -> str: ...
    @property
    def oauth_url(self) -> str | None: ...
    @property
    def oauth_realm(self) -> str: ...
    @property
    def client_id(self) -> str | None: ...
    @property
    def client_secret(self) -> SecretStr | None: ...
    @property
    def client_secret_file(self) -> Path | None: ...
    @property
    def client_assertion_file(self) -> Path | None: ...
    @property
    def client_assertion_audience(self) -> str | None: ...
    @property
    def client_private_key_file(self) -> Path | None: ...
    @property
    def token_issuer(self) -> str | None: ...
    @property
    def impersonation_subject_claims(self) -> list[str]: ...
    @property
    def token_audience(self) -> str | None: ...
    @property
    def uma_audience(self) -> str: ...
    @property
    def user_email(self) -> str | None: ...
    @property
    def region(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> SecretStr | None: ...
    @property
    def password_file(self) -> Path | None: ...
    @property
    def api_url(self) -> str: ...
    @property
    def impersonation_api_url(self) -> str: ...
    @property
    def service_provider_url(self) -> str: ...
    @property
    def static_token(self) -> SecretStr | None: ...
    @property
    def static_token_file(self) -> Path | None: ...
    @property
    def static_token_impersonated(self) -> bool: ...
    @property
    def http_timeout(self) -> float: ...
    @property
    def token_refresh_margin(self) -> float: ...
    @property
    def token_cache_size(self) -> int: ...
    @property
    def credential_chain(self) -> list[str]: ...
    @property
    def allow_fallback_on_forbidden(self) -> bool: ...


@overload
def setting(settings: object, name: str, default: T) -> T: ...
@overload
def setting(settings: object, name: str, default: None = None) -> Any: ...
def setting(settings: object, name: str, default: Any = None) -> Any:
    """``settings.name``, or ``default`` when missing or ``None``."""
    value = getattr(settings, name, None)
    return default if value is None else value


def secret_setting(settings: object, name: str) -> SecretStr | None:
    """A secret setting as :class:`SecretStr` (plain strings are wrapped); empty → ``None``."""
    value = getattr(settings, name, None)
    if value is None:
        return None
    secret = value if isinstance(value, SecretStr) else SecretStr(str(value))
    return secret if secret.get_secret_value() else None


def str_setting(settings: object, name: str) -> str | None:
    """An optional string setting, stripped; empty → ``None``."""
    value = getattr(settings, name, None)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def path_setting(settings: object, name: str) -> Path | None:
    value = getattr(settings, name, None)
    if value is None or value == "":
        return None
    return value if isinstance(value, Path) else Path(str(value))


def issuer_url(oauth_url: str, realm: str = DEFAULT_REALM) -> str:
    """The realm's issuer: ``oauth_url`` itself if it names a realm, else ``{oauth_url}/realms/{realm}``."""
    base = oauth_url.strip().rstrip("/")
    for tail in ("/protocol/openid-connect", "/.well-known/"):  # a pasted token or discovery URL
        if "/realms/" in base and tail in base:
            base = base.split(tail, 1)[0].rstrip("/")
    if "/realms/" in base:
        return base
    return f"{base}/realms/{realm or DEFAULT_REALM}"
