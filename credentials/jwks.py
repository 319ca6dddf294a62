"""The signing keys of one token issuer: found through its OIDC metadata, cached, refetched for an unknown key.

``{issuer}/.well-known/openid-configuration`` names the ``jwks_uri`` (and must name the same ``issuer``: a
Keycloak reached under another hostname than the one it puts into its tokens is a misconfiguration worth a
clear error). The key set is kept for ``ttl`` seconds. A token signed by a key the cached set lacks makes the
set be fetched again — once: Keycloak publishes a new key before signing with it, so a rotation costs one
fetch, and a token whose key is still unknown after that fetch was not signed by this issuer. Fetches are
single-flight and at most one per ``min_refresh_interval`` for unknown keys, so a stream of foreign tokens
cannot hammer the identity provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from yarl import URL

from credentials.base import CredentialError, CredentialRejected, CredentialUnavailable
from credentials.http import HttpClient, safe_url

__all__ = ["IssuerKeys", "KeyLookup"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class KeyLookup:
    """The key set to verify a token with, and whether it was fetched for this token."""

    keys: KeySet
    refreshed: bool


class IssuerKeys:
    """The cached JWKS of ``issuer``."""

    def __init__(self, issuer: str, http: HttpClient, *, ttl: float = 3600.0, min_refresh_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer.rstrip("/")
        self.ttl = ttl
        self.min_refresh_interval = min_refresh_interval
        self._http = http
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")
        #: Fetches of the key set so far (first, expired, unknown key).
        self.fetches = 0
        self.jwks_uri: str | None = None

    @property
    def kids(self) -> frozenset[str]:
        return self._kids

    async def aclose(self) -> None:
        await self._http.aclose()

    async def lookup(self, kid: str | None, *, provider: str, user: str | None = None) -> KeyLookup:
        """The key set holding ``kid``, fetching it when missing, expired, or lacking ``kid``.

        Raises :class:`CredentialUnavailable` when the keys cannot be fetched (and none are cached that hold
        ``kid``), :class:`CredentialRejected` when the issuer's metadata is wrong. Errors name ``provider``:
        the provider whose token could not be checked.
        """
        async with self._lock:
            now = self._clock()
            known = self._keys is not None and (kid is None or kid in self._kids)
            fresh = now - self._fetched_at < self.ttl
            if known and fresh:
                assert self._keys is not None
                return KeyLookup(self._keys, refreshed=False)
            if self._keys is not None and not known and fresh and now - self._fetched_at < self.min_refresh_interval:
                return KeyLookup(self._keys, refreshed=False)  # just fetched: the key is unknown, not new
            reason = "first" if self._keys is None else "expired" if known else "unknown_kid"
            try:
                await self._fetch(provider=provider, user=user)
            except CredentialUnavailable:
                if known and self._keys is not None:
                    log.warning("jwks_refresh_failed", issuer=self.issuer, keeping="cached keys")
                    return KeyLookup(self._keys, refreshed=False)
                raise
            log.info("jwks_fetched", issuer=self.issuer, jwks_uri=self.jwks_uri, reason=reason,
                     kids=sorted(self._kids), fetches=self.fetches)
            assert self._keys is not None
            return KeyLookup(self._keys, refreshed=True)

    async def _fetch(self, *, provider: str, user: str | None) -> None:
        self.fetches += 1
        metadata = await self._get(f"{self.issuer}/.well-known/openid-configuration", "OIDC discovery",
                                   provider=provider, user=user)
        named = metadata.get("issuer")
        if isinstance(named, str) and named.rstrip("/") != self.issuer:
            raise CredentialRejected(
                f"the OIDC metadata at {safe_url(self.issuer)}/.well-known/openid-configuration names issuer "
                f"{named!r}, not the configured {self.issuer!r}: tokens carry the issuer Keycloak is configured with "
                "(its hostname): set CLOUDSIGMA_TOKEN_ISSUER to it, or CLOUDSIGMA_OAUTH_URL to that address",
                provider=provider, user=user, reason="issuer_metadata_mismatch")
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _absolute_http(jwks_uri):
            raise CredentialRejected(f"the OIDC metadata of {self.issuer!r} names no usable jwks_uri "
                                     f"({str(jwks_uri)[:100]!r})", provider=provider, user=user,
                                     reason="jwks_uri_missing")
        body = await self._get(jwks_uri, "JWKS", provider=provider, user=user)
        keys = _signing_keys(body)
        try:
            key_set = KeySet.import_key_set({"keys": keys})
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise CredentialUnavailable(f"the JWKS at {safe_url(jwks_uri)} holds no usable signing key "
                                        f"({type(exc).__name__})", provider=provider, user=user,
                                        reason="jwks_invalid") from None
        self._keys, self.jwks_uri = key_set, jwks_uri
        self._kids = frozenset(k.kid for k in key_set if k.kid)
        self._fetched_at = self._clock()

    async def _get(self, url: str, what: str, *, provider: str, user: str | None) -> dict[str, Any]:
        try:
            return await self._http.get_json(url, what=what, user=user)
        except CredentialRejected as exc:
            raise CredentialRejected(f"cannot check the token's signature: {exc.message}", provider=provider,
                                     user=user, reason=f"jwks_{exc.reason}", request_id=exc.request_id) from None
        except CredentialError as exc:
            raise CredentialUnavailable(f"cannot check the token's signature: {exc.message}", provider=provider,
                                        user=user, reason="jwks_unavailable", request_id=exc.request_id) from None


def _signing_keys(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The signature keys of a JWKS document (Keycloak also publishes an encryption key)."""
    keys = body.get("keys")
    if not isinstance(keys, list):
        return []
    return [k for k in keys if isinstance(k, dict) and k.get("use", "sig") == "sig"
            and k.get("kty") in ("RSA", "EC", "OKP")]


def _absolute_http(url: str) -> bool:
    try:
        parsed = URL(url)
    except ValueError:
        return False
    return parsed.is_absolute() and parsed.scheme in ("http", "https")
