"""The credential chain: providers in configured order, each through the token cache.

``get(user, region)`` returns the first provider's credential that can be had. When a provider fails the
chain moves on and logs **one** warning per fallback *episode* (per provider, user and region) — not one
per request; the episode ends, with an info line, when that provider succeeds again. Every call still
asks the preferred provider first (the cache's backoff keeps that cheap during an outage), so service
returns to impersonation by itself.

A 403 is not a credential problem (seed 001: the server belongs to somebody else), so by default it is
never retried with another provider's — broader — credentials; ``allow_fallback_on_forbidden`` opts in.

Every impersonated token is checked before it is handed out (:mod:`credentials.verify`): a token for another
subject, or one the configured issuer did not sign, fails its provider like any other error (fallback rules
unchanged) and is never cached or used.

Log events: ``credential_acquired`` (info, token claims and how the token was verified — never the token),
``impersonation_subject_mismatch`` (error: requested user, the token's sub/username/email/azp and the identity
provider's answer), ``token_verification_failed`` (error), ``token_unverifiable`` (warning, once per provider:
an opaque token, or no issuer to check against), ``credential_fallback`` / ``credential_provider_failed``
(warning, once per episode),
``credential_provider_still_failing`` (debug), ``credential_provider_recovered`` (info),
``credential_chain_exhausted`` (error, once per episode), ``credential_invalidated`` (info),
``credential_forbidden_fallback`` (warning), ``credential_forbidden_no_fallback`` (debug),
``credential_acquisition_failed`` (debug, every failed acquisition incl. background refreshes),
``credential_provider_error`` (error: a provider raised something other than a CredentialError).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import structlog
from cachetools import LRUCache
from yarl import URL

from credentials.base import (
    Credential,
    CredentialError,
    CredentialProvider,
    CredentialUnavailable,
    Describable,
    ImpersonationSubjectMismatch,
    NoCredential,
    ProviderNotInChain,
    SecretHolder,
    SecretSink,
)
from credentials.cache import CacheAware, CacheKey, TokenCache
from credentials.status import ProviderStatus
from credentials.verify import TokenVerifier

__all__ = ["CredentialChain", "normalize_email"]

_Key = tuple[str, str, str]  # (provider, email, region)


def normalize_email(email: str | None) -> str:
    """Emails are matched case-insensitively (Keycloak lower-cases usernames too)."""
    return (email or "").strip().lower()


@dataclass
class _Episode:
    started_at: float
    reason: str
    message: str
    failures: int = 1


class CredentialChain:
    def __init__(
        self,
        providers: list[CredentialProvider],
        cache: TokenCache,
        *,
        logger: Any = None,
        allow_fallback_on_forbidden: bool = False,
        clock: Callable[[], float] = time.time,
        verifier: TokenVerifier | None = None,
        on_secret: SecretSink | None = None,
    ) -> None:
        if not providers:
            raise ValueError("a credential chain needs at least one provider")
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ValueError(f"a credential provider is listed twice: {', '.join(names)}")
        self._providers = list(providers)
        self.cache = cache
        #: Optional ``on_event(event, provider)`` hook for metrics; ``fallback:<reason>`` when falling back.
        self.on_event: Callable[[str, str], None] | None = cache.on_event
        self.allow_fallback_on_forbidden = allow_fallback_on_forbidden
        self._log: Any = logger if logger is not None else structlog.get_logger(__name__)
        self._clock = clock
        #: Checks impersonated tokens; without an issuer it can only check whom their claims name.
        self.verifier = verifier if verifier is not None else TokenVerifier(None, None)
        for provider in self._providers:
            if isinstance(provider, CacheAware):
                provider.attach_cache(cache)
            if on_secret is not None and isinstance(provider, SecretHolder):
                provider.attach_secret_sink(on_secret)
        self._status = {p.name: ProviderStatus(p.name) for p in self._providers}
        self._unverifiable_logged: set[tuple[str, str]] = set()
        size = max(cache.maxsize, 16)
        self._episodes: LRUCache[_Key, _Episode] = LRUCache(size)
        self._exhausted: LRUCache[tuple[str, str], float] = LRUCache(size)
        #: Uncached providers (static token, password): the last raw credential and its checked version — or the
        #: error that refused it, so a refused static token is not verified (and logged) again on every call.
        self._uncached_last: LRUCache[_Key, tuple[Credential, Credential | CredentialError]] = LRUCache(size)
        self._last_used: LRUCache[tuple[str, str], str] = LRUCache(size)
        self._active: str | None = None

    # -- diagnostics -------------------------------------------------------------------------------------

    @property
    def providers(self) -> list[str]:
        return [p.name for p in self._providers]

    @property
    def active_provider(self) -> str | None:
        """The provider that served the most recent successful :meth:`get`."""
        return self._active

    def last_used(self, user_email: str, region: str) -> str | None:
        """The provider that last served ``user_email`` in ``region``."""
        return self._last_used.get((normalize_email(user_email), region))

    def diagnostics(self) -> dict[str, Any]:
        """State for ``doctor`` and debug endpoints. Never includes a token or secret."""
        return {
            "providers": self.providers,
            "active_provider": self._active,
            "allow_fallback_on_forbidden": self.allow_fallback_on_forbidden,
            "last_used": [{"user": u, "region": r, "provider": p} for (u, r), p in list(self._last_used.items())],
            "failing": [
                {"provider": p, "user": u, "region": r, "reason": e.reason, "message": e.message,
                 "since": e.started_at, "failures": e.failures}
                for (p, u, r), e in list(self._episodes.items())
            ],
            "cache": self.cache.snapshot(),
        }

    def status(self) -> list[dict[str, Any]]:
        """Per provider, in chain order: configured or not, how the client authenticates, the last success and
        failure (time, reason), and the verified identity and expiry of the newest token. No token, no secret."""
        out: list[dict[str, Any]] = []
        for provider in self._providers:
            entry = self._status[provider.name].snapshot(self._clock())
            if isinstance(provider, Describable):
                try:
                    entry.update(provider.describe())
                except Exception as exc:  # diagnostics must not fail
                    entry["describe_error"] = type(exc).__name__
            out.append(entry)
        return out

    # -- getting a credential ----------------------------------------------------------------------------

    async def get(self, user_email: str, region: str) -> Credential:
        """The first credential the chain can produce for ``user_email`` in ``region``.

        Raises :class:`NoCredential` (with every provider's error in ``failures``) when all fail.
        """
        email = normalize_email(user_email)
        failures: list[CredentialError] = []
        for index, provider in enumerate(self._providers):
            try:
                credential = await self._from(provider, email, region)
            except CredentialError as exc:
                failures.append(exc)
                following = self._providers[index + 1].name if index + 1 < len(self._providers) else None
                self._note_failure(provider.name, email, region, exc, following)
                continue
            self._note_success(provider.name, email, region)
            return credential
        self._note_exhausted(email, region, failures)
        summary = "; ".join(str(f) for f in failures)
        raise NoCredential(f"no credential for {email or '<no user>'!r} in region {region!r}: {summary}",
                           failures=failures, user=email or None)

    async def get_from(self, name: str, user_email: str, region: str, *, settle: bool = False) -> Credential:
        """A credential of provider ``name`` alone — never another provider's — through the same cache as
        :meth:`get` (a fresh cached token costs no request). With ``settle``, a refresh that is in flight (or that
        this call starts) is awaited, so the newest token is returned. Raises the provider's
        :class:`CredentialError`, or :class:`ProviderNotInChain` when ``name`` is not in the chain."""
        provider = next((p for p in self._providers if p.name == name), None)
        if provider is None:
            raise ProviderNotInChain(f"the credential chain has no provider {name!r}: add it to the chain",
                                     provider=name, user=user_email or None)
        email = normalize_email(user_email)
        credential = await self._from(provider, email, region)
        if settle and getattr(provider, "cacheable", True) is not False:
            key = CacheKey.of(email, region, provider.name)
            await self.cache.settle(key)
            newer = self.cache.peek(key)
            if newer is not None and (newer.expires_at or 0.0) > (credential.expires_at or 0.0):
                credential = newer
        return credential

    def refresh_at(self, name: str, user_email: str, region: str) -> float | None:
        """When the cache starts replacing provider ``name``'s token for ``user_email`` in ``region`` (clock
        seconds), or ``None`` when it holds none that expires."""
        return self.cache.refresh_at(CacheKey.of(normalize_email(user_email), region, name))

    def refresh_error(self, name: str, user_email: str, region: str) -> CredentialError | None:
        """Why provider ``name``'s last acquisition for ``user_email`` in ``region`` failed (e.g. the background
        refresh of a token that is still served), or ``None`` when it succeeded."""
        error = self.cache.last_error(CacheKey.of(normalize_email(user_email), region, name))
        return error if isinstance(error, CredentialError) else None

    def invalidate(self, credential: Credential) -> None:
        """Forget a credential the API refused (401), so the next :meth:`get` acquires a new one."""
        dropped = self.cache.invalidate_credential(credential)
        self._log.info("credential_invalidated", dropped=dropped, **credential.identity.log_fields())

    async def fallback_after_forbidden(self, user_email: str, region: str,
                                       failed: Credential) -> Credential | None:
        """A lower-priority credential to retry a 403 with — only with ``allow_fallback_on_forbidden``.

        By default ``None``: a 403 means this user may not see the resource (e.g. a server owned by someone
        else, seed 001); retrying with the service account's or a global account's credentials would hide
        exactly the ownership problem operators need to see.
        """
        email = normalize_email(user_email)
        failed_name = failed.identity.provider
        if not self.allow_fallback_on_forbidden:
            self._log.debug("credential_forbidden_no_fallback", credential_provider=failed_name, cs_user=email,
                            region=region)
            return None
        names = self.providers
        start = names.index(failed_name) + 1 if failed_name in names else 0
        for provider in self._providers[start:]:
            if provider.name == failed_name:
                continue
            try:
                credential = await self._from(provider, email, region)
            except CredentialError as exc:
                self._log.debug("credential_forbidden_fallback_failed", **exc.log_fields(), message=exc.message)
                continue
            if credential is failed:
                continue
            self._log.warning("credential_forbidden_fallback", credential_provider=failed_name,
                              fallback_provider=provider.name, cs_user=email, region=region,
                              impersonated=failed.impersonated)
            return credential
        return None

    async def aclose(self) -> None:
        await self.cache.aclose()
        await self.verifier.aclose()
        for provider in self._providers:
            try:
                await provider.aclose()
            except Exception as exc:  # closing must not fail shutdown
                self._log.debug("credential_provider_close_failed", credential_provider=provider.name,
                                error=type(exc).__name__)

    # -- internals ---------------------------------------------------------------------------------------

    async def _from(self, provider: CredentialProvider, email: str, region: str) -> Credential:
        if getattr(provider, "cacheable", True) is False:
            return await self._acquire(provider, email, region, cached=False)
        key = CacheKey.of(email, region, provider.name)
        return await self.cache.get(key, partial(self._acquire, provider, email, region, cached=True))

    async def _acquire(self, provider: CredentialProvider, email: str, region: str, *, cached: bool) -> Credential:
        try:
            return await self._acquire_checked(provider, email, region, cached=cached)
        except CredentialError as exc:
            self._status[provider.name].failed(self._clock(), exc)
            raise

    async def _acquire_checked(self, provider: CredentialProvider, email: str, region: str, *,
                               cached: bool) -> Credential:
        try:
            credential = await provider.acquire(email, region)
        except CredentialError as exc:
            # Warnings are per episode (in get); this line also covers failed background refreshes.
            self._log.debug("credential_acquisition_failed",
                            **{**exc.log_fields(), "cs_user": email, "region": region, "message": exc.message})
            raise
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f"{frame.filename}:{frame.lineno}" if frame else "?"
            # The exception's text is not logged: it could quote a request or a response.
            self._log.error("credential_provider_error", credential_provider=provider.name, cs_user=email,
                            region=region, error=type(exc).__name__, where=where)
            raise CredentialUnavailable(f"unexpected {type(exc).__name__} while acquiring a credential",
                                        provider=provider.name, user=email or None,
                                        reason="internal_error") from None
        if not isinstance(credential, Credential):
            raise CredentialUnavailable(f"returned a {type(credential).__name__}, not a Credential",
                                        provider=provider.name, user=email or None, reason="internal_error")
        key = (provider.name, email, region)
        if not cached:
            last = self._uncached_last.get(key)
            if last is not None and last[0] is credential:
                if isinstance(last[1], CredentialError):
                    raise last[1].with_traceback(None)
                return last[1]
        try:
            checked = await self._verify(provider.name, credential, email, region)
        except CredentialUnavailable:
            raise  # e.g. the issuer's keys could not be fetched: check again next time
        except CredentialError as exc:
            if not cached:
                self._uncached_last[key] = (credential, exc)
            raise
        if not cached:
            self._uncached_last[key] = (credential, checked)
        self._status[provider.name].acquired(self._clock(), checked, region)
        self._log_acquired(checked, email, region)
        return checked

    async def _verify(self, name: str, credential: Credential, email: str, region: str) -> Credential:
        """``credential`` with its :class:`Verification`, or the typed error that keeps it from being used."""
        if not credential.impersonated or credential.scheme != "bearer":
            return credential
        identity = credential.identity
        requested = identity.requested_subject or email
        try:
            verification = await self.verifier.verify(credential.secret.get_secret_value(), requested_user=requested,
                                                      provider=name, answer=identity.answer)
        except ImpersonationSubjectMismatch as exc:
            self._emit("verify:subject_mismatch", name)
            self._log.error("impersonation_subject_mismatch", **exc.log_fields(), region=region, message=exc.message)
            raise
        except CredentialError as exc:
            self._emit(f"verify:{exc.reason}", name)
            self._log.error("token_verification_failed", **{**identity.log_fields(), **exc.log_fields()},
                            requested_user=requested, region=region, message=exc.message)
            raise
        self._emit(f"verify:{verification.status}", name)
        if verification.status != "verified" and (name, verification.status) not in self._unverifiable_logged:
            self._unverifiable_logged.add((name, verification.status))
            self._log.warning("token_unverifiable", credential_provider=name, token_verified=verification.status,
                              detail=verification.detail, requested_user=requested, note="used as is")
        return replace(credential, identity=replace(identity, verification=verification))

    def _emit(self, event: str, provider: str) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event, provider)
        except Exception:  # a metrics hook must never break credentials
            self._log.debug("credential_event_hook_failed")

    def _log_acquired(self, credential: Credential, email: str, region: str) -> None:
        identity = credential.identity
        fields = identity.log_fields()
        if "email" in identity.claims:
            fields["token_email"] = identity.claims["email"]
        left = credential.seconds_left(self._clock())
        try:
            api_host = URL(credential.api_url(region)).host
        except ValueError:
            api_host = None
        verification = identity.verification
        if verification is not None and verification.status == "verified":
            fields["verify_ms"] = verification.duration_ms
        self._log.info("credential_acquired", region=region, impersonated=credential.impersonated,
                       expires_in=None if left is None else round(left), api_host=api_host, **fields)

    def _note_failure(self, name: str, email: str, region: str, exc: CredentialError, following: str | None) -> None:
        if following is not None:
            self._emit(f"fallback:{exc.reason}", name)  # every fallback counts; the log says it once
        key = (name, email, region)
        episode = self._episodes.get(key)
        fields = {"credential_provider": name, "reason": exc.reason, "message": exc.message,
                  "error": type(exc).__name__, "cs_user": email, "region": region}
        if exc.request_id:
            fields["request_id"] = exc.request_id
        if episode is not None:
            episode.failures += 1
            self._log.debug("credential_provider_still_failing", failures=episode.failures, **fields)
            return
        self._episodes[key] = _Episode(started_at=self._clock(), reason=exc.reason, message=exc.message)
        if following is not None:
            self._log.warning("credential_fallback", next_provider=following, **fields)
        else:
            self._log.warning("credential_provider_failed", **fields)

    def _note_success(self, name: str, email: str, region: str) -> None:
        episode = self._episodes.pop((name, email, region), None)
        if episode is not None:
            self._log.info("credential_provider_recovered", credential_provider=name, cs_user=email, region=region,
                           failures=episode.failures,
                           outage_seconds=round(max(0.0, self._clock() - episode.started_at), 1))
        self._exhausted.pop((email, region), None)
        if self._active != name:
            self._emit("active", name)
        self._active = name
        self._last_used[(email, region)] = name

    def _note_exhausted(self, email: str, region: str, failures: list[CredentialError]) -> None:
        if (email, region) in self._exhausted:
            return
        self._exhausted[(email, region)] = self._clock()
        self._log.error("credential_chain_exhausted", cs_user=email, region=region,
                        failures=[{"credential_provider": f.provider, "reason": f.reason, "message": f.message}
                                  for f in failures])
