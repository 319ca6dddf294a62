"""Build the credential chain from settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from credentials.cache import EventHook, TokenCache
from credentials.chain import CredentialChain
from credentials.config_protocol import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_REFRESH_MARGIN,
    CredentialSettings,
    path_setting,
    secret_setting,
    setting,
    str_setting,
)
from credentials.registry import create_provider

__all__ = ["build_chain", "default_chain"]


def default_chain(settings: CredentialSettings) -> list[str]:
    """The chain used when none is configured: impersonation, static token, password — each if configured."""
    names: list[str] = []
    if setting(settings, "impersonation_enabled", False):
        names.append(setting(settings, "impersonation_strategy", "keycloak-token-exchange"))
    if secret_setting(settings, "static_token") is not None or path_setting(settings, "static_token_file"):
        names.append("static-token")
    if str_setting(settings, "username") and secret_setting(settings, "password") is not None:
        names.append("password")
    return names


def build_chain(settings: CredentialSettings, *, on_event: EventHook | None = None, logger: Any = None,
                clock: Callable[[], float] = time.time) -> CredentialChain:
    """Providers named by ``settings.credential_chain`` (or :func:`default_chain`), in that order, via the
    registry, sharing one :class:`TokenCache`. Raises ``ValueError`` (incl. ``UnknownCredentialProvider``)."""
    configured: list[str] = list(setting(settings, "credential_chain", []) or [])
    names = list(dict.fromkeys(configured or default_chain(settings)))
    if not names:
        raise ValueError("no credential providers configured: enable impersonation (CLOUDSIGMA_OAUTH_URL, "
                         "CLOUDSIGMA_CLIENT_ID, CLOUDSIGMA_CLIENT_SECRET, CLOUDSIGMA_USER_EMAIL) or set "
                         "CLOUDSIGMA_USERNAME/CLOUDSIGMA_PASSWORD or CLOUDSIGMA_STATIC_TOKEN(_FILE)")
    cache = TokenCache(
        maxsize=int(setting(settings, "token_cache_size", DEFAULT_CACHE_SIZE)),
        refresh_margin=float(setting(settings, "token_refresh_margin", DEFAULT_REFRESH_MARGIN)),
        clock=clock,
        on_event=on_event,
    )
    providers = [create_provider(name, settings) for name in names]
    log = logger if logger is not None else structlog.get_logger("credentials.chain")
    chain = CredentialChain(providers, cache, logger=log, clock=clock,
                            allow_fallback_on_forbidden=bool(setting(settings, "allow_fallback_on_forbidden", False)))
    log.info("credential_chain_built", providers=names,
             allow_fallback_on_forbidden=chain.allow_fallback_on_forbidden)
    return chain
