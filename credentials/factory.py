"""Build the credential chain from settings."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from credentials.base import SecretSink
from credentials.cache import EventHook, TokenCache
from credentials.chain import CredentialChain
from credentials.config_protocol import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_REALM,
    DEFAULT_REFRESH_MARGIN,
    CredentialSettings,
    issuer_url,
    path_setting,
    secret_setting,
    setting,
    str_setting,
)
from credentials.http import HttpClient
from credentials.jwks import IssuerKeys
from credentials.registry import create_provider
from credentials.verify import DEFAULT_SUBJECT_CLAIMS, TokenVerifier

__all__ = ["build_chain", "build_verifier", "default_chain", "expected_issuer"]


def expected_issuer(settings: CredentialSettings) -> str | None:
    """The issuer impersonated tokens must come from: ``token_issuer``, else the realm of ``oauth_url``."""
    explicit = str_setting(settings, "token_issuer")
    if explicit:
        return explicit.rstrip("/")
    oauth_url = str_setting(settings, "oauth_url")
    return issuer_url(oauth_url, setting(settings, "oauth_realm", DEFAULT_REALM)) if oauth_url else None


def build_verifier(settings: CredentialSettings) -> TokenVerifier | None:
    """A verifier for impersonated tokens, or ``None`` when no issuer is configured."""
    issuer = expected_issuer(settings)
    if issuer is None:
        return None
    http = HttpClient(provider="token-verifier", timeout=float(setting(settings, "http_timeout", DEFAULT_HTTP_TIMEOUT)))
    claims = list(setting(settings, "impersonation_subject_claims", []) or []) or list(DEFAULT_SUBJECT_CLAIMS)
    return TokenVerifier(issuer, IssuerKeys(issuer, http), subject_claims=claims)


def default_chain(settings: CredentialSettings) -> list[str]:
    """The chain used when none is configured: impersonation, static token, password — each if configured."""
    names: list[str] = []
    if setting(settings, "impersonation_enabled", False):
        names.append(setting(settings, "impersonation_strategy", "keycloak-token-exchange"))
    if secret_setting(settings, "static_token") is not None or path_setting(settings, "static_token_file"):
        names.append("static-token")
    if str_setting(settings, "username") and (secret_setting(settings, "password") is not None
                                               or path_setting(settings, "password_file")):
        names.append("password")
    return names


def build_chain(settings: CredentialSettings, *, on_event: EventHook | None = None, logger: Any = None,
                clock: Callable[[], float] = time.time, on_secret: SecretSink | None = None) -> CredentialChain:
    """Providers named by ``settings.credential_chain`` (or :func:`default_chain`), in that order, via the
    registry, sharing one :class:`TokenCache`, with a :class:`TokenVerifier` for impersonated tokens when an
    issuer is known. ``on_secret`` receives every secret the providers load (for the log redactor).
    Raises ``ValueError`` (incl. ``UnknownCredentialProvider``)."""
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
    verifier = build_verifier(settings)
    chain = CredentialChain(providers, cache, logger=log, clock=clock, verifier=verifier, on_secret=on_secret,
                            allow_fallback_on_forbidden=bool(setting(settings, "allow_fallback_on_forbidden", False)))
    log.info("credential_chain_built", providers=names,
             allow_fallback_on_forbidden=chain.allow_fallback_on_forbidden,
             token_issuer=verifier.issuer if verifier is not None else None,
             impersonation_subject_claims=list(verifier.subject_claims) if verifier is not None else None)
    return chain
