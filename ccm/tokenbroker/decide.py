"""What a target Secret should become (pure): from the Secret as read, the owner's token — or why there is none —
and the time.

- A Secret without our managed-by label is someone else's: never written (:attr:`Action.LEAVE`, one Event).
- With a usable token (:func:`usable_token`: impersonated, verified as the owner, from the impersonation provider
  itself — never a password, a static token or another provider's): the Secret holds it and the facts beside it
  (created when missing; updated only when something differs).
- Without one, the last valid token stays while it is valid and is for this owner and region; once it has expired
  (or was for another owner) ``access_token`` is emptied. A missing Secret is created without a token, so the
  driver and the operator see why (the ``last-error`` annotation). Nothing else is ever written in its place.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ccm.kube.events import ObjectEvent
from ccm.kube.transport import JSON
from ccm.tokenbroker import secret as s
from ccm.tokenbroker.secret import SecretView, Target
from credentials.base import Credential
from credentials.claims import decode_claims

__all__ = ["EXPIRY_LEAD", "Action", "Facts", "Failure", "Plan", "Token", "decide", "usable_token"]

#: A kept token is emptied this long before it expires, so that with the write's own latency no reader ever gets
#: an expired token from the Secret (a token with seconds left is of no use to a client anyway).
EXPIRY_LEAD = 2.0


@dataclass(frozen=True)
class Facts:
    """What the Secret says beside the token: whose it is, where, for which cluster."""

    owner: str
    region: str
    cluster_name: str


@dataclass(frozen=True)
class Token:
    """A token the broker may hand out. ``value`` never appears in a repr."""

    value: str = field(repr=False)
    expires_at: float
    issued_at: float
    api_url: str


@dataclass(frozen=True)
class Failure:
    """Why there is no new token: a short stable ``reason`` and a message saying what to fix — and the last valid
    token the chain still holds when only its refresh failed."""

    reason: str
    message: str
    last_valid: Token | None = None


class Action(Enum):
    NONE = "none"  # the Secret is as it should be
    CREATE = "create"
    UPDATE = "update"  # with the resourceVersion read
    LEAVE = "leave"  # someone else's Secret: not ours to write


@dataclass(frozen=True)
class Plan:
    action: Action
    #: The object to create or the update's body (with the read resourceVersion); None for NONE/LEAVE.
    body: JSON | None = field(default=None, repr=False)
    #: What the Secret holds once the plan is written: ``current`` (already right), ``written`` (the token),
    #: ``kept`` (the last valid token, while impersonation fails), ``empty`` (no token), ``not-managed``.
    state: str = "current"
    #: Expiry of the token the Secret holds afterwards (None: no token).
    token_expires_at: float | None = None
    #: Said to the operator when the target enters this state (the controller records it once per change).
    event: ObjectEvent | None = None


def usable_token(credential: Credential, *, owner: str, provider: str, region: str,
                 now: float) -> Token | Failure:
    """``credential`` as a :class:`Token`, or why it must not be written: only a bearer token of the impersonation
    provider itself, impersonating ``owner``, whose signature, issuer, expiry and subject the chain verified."""
    identity = credential.identity
    verification = identity.verification
    if identity.provider != provider or not credential.impersonated or credential.scheme != "bearer":
        return Failure("not_impersonated", f"the credential of provider {identity.provider!r} is not an impersonated "
                       f"token of {provider!r}; only that is ever written")
    if verification is None or verification.status != "verified":
        status = verification.status if verification is not None else "not checked"
        return Failure("not_verified", f"the impersonated token could not be verified ({status}): configure the "
                       "token issuer (CLOUDSIGMA_OAUTH_URL or CLOUDSIGMA_TOKEN_ISSUER) so it can be")
    requested = (identity.requested_subject or "").strip().lower()
    if requested != owner.strip().lower():
        return Failure("wrong_subject", f"the token impersonates {requested!r}, not the owner {owner!r}")
    claims = decode_claims(credential.secret.get_secret_value())
    exp = claims.get("exp")
    # The token's own exp wins over the cache's reckoning (the request's start + expires_in: up to a second later,
    # as the issuer floors iat to whole seconds).
    expires_at = min(credential.expires_at or float(exp), float(exp)) if isinstance(exp, int | float) and \
        not isinstance(exp, bool) else credential.expires_at
    if expires_at is None or expires_at <= now + EXPIRY_LEAD:
        return Failure("token_expired", "the impersonated token has no future expiry")
    iat = claims.get("iat")
    issued_at = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else now
    return Token(credential.secret.get_secret_value(), expires_at, issued_at, credential.api_url(region))


def _desired(facts: Facts, token: Token | None) -> tuple[dict[str, str], dict[str, str | None]]:
    data = {s.ACCESS_TOKEN: token.value if token else "", "region": facts.region, "user_email": facts.owner,
            "cluster_name": facts.cluster_name, "expires_at": s.format_time(token.expires_at) if token else "",
            "api_url": token.api_url if token else ""}
    annotations: dict[str, str | None] = {
        s.OWNER: facts.owner, s.REGION: facts.region,
        s.ISSUED_AT: s.format_time(token.issued_at) if token else None,
        s.EXPIRES_AT: s.format_time(token.expires_at) if token else None,
    }
    return data, annotations


def _body(target: Target, current: SecretView | None, data: dict[str, str],
          annotations: dict[str, str | None]) -> JSON:
    obj: dict[str, Any] = copy.deepcopy(dict(current.raw)) if current is not None else {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": target.name, "namespace": target.namespace}}
    meta = obj.setdefault("metadata", {})
    meta.setdefault("labels", {})[s.MANAGED_BY_LABEL] = s.MANAGED_BY
    kept = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in annotations}
    meta["annotations"] = kept | {k: v for k, v in annotations.items() if v is not None}
    meta.pop("managedFields", None)
    obj["data"] = {**(obj.get("data") or {}), **s.encode(data)}
    return obj


def _same(current: SecretView, data: dict[str, str], annotations: dict[str, str | None]) -> bool:
    return (all(current.data.get(k) == v for k, v in data.items())
            and all(current.annotations.get(k) == v for k, v in annotations.items()))


def _refresh_failing(facts: Facts, failure: Failure, expires_at: float) -> ObjectEvent:
    return ObjectEvent.warning(
        "TokenRefreshFailing", f"no new impersonated, verified token for {facts.owner} in {facts.region} "
        f"({failure.reason}): the last valid token stays until it expires at {s.format_time(expires_at)}, then "
        "access_token is emptied; nothing else is ever written in its place")


def decide(target: Target, current: SecretView | None, token: Token | Failure, facts: Facts, now: float) -> Plan:
    """The plan for ``target``: ``current`` as read (None: it does not exist), ``token`` the owner's usable token or
    why there is none, ``facts`` whose it is."""
    if current is not None and not current.managed:
        return Plan(Action.LEAVE, state="not-managed", event=ObjectEvent.warning(
            "TokenSecretNotManaged",
            f"Secret {target.key} lacks the label {s.MANAGED_BY_LABEL}={s.MANAGED_BY}, so the CCM's token broker "
            "never writes it: delete it (the broker creates its own) or add the label to hand it over"))
    if isinstance(token, Token):
        data, annotations = _desired(facts, token)
        annotations[s.LAST_ERROR] = None
        if current is not None and _same(current, data, annotations):
            return Plan(Action.NONE, state="current", token_expires_at=token.expires_at)
        return Plan(Action.CREATE if current is None else Action.UPDATE, _body(target, current, data, annotations),
                    state="written", token_expires_at=token.expires_at)
    error = f"{token.reason}: {token.message}"[:500]
    last = token.last_valid
    if last is not None and last.expires_at - EXPIRY_LEAD > now:
        # Only the refresh failed: the last valid token is (still, or again) what the Secret holds, with the error.
        data, annotations = _desired(facts, last)
        annotations[s.LAST_ERROR] = error
        event = _refresh_failing(facts, token, last.expires_at)
        if current is not None and _same(current, data, annotations):
            return Plan(Action.NONE, state="kept", token_expires_at=last.expires_at, event=event)
        return Plan(Action.CREATE if current is None else Action.UPDATE, _body(target, current, data, annotations),
                    state="kept", token_expires_at=last.expires_at, event=event)
    held = current.token_expires_at if current is not None else None
    if (current is not None and held is not None and held - EXPIRY_LEAD > now
            and current.annotations.get(s.OWNER) == facts.owner and current.annotations.get(s.REGION) == facts.region):
        # Impersonation fails, but the token it holds is still valid and the owner's: it stays until it expires.
        kept_annotations: dict[str, str | None] = {s.LAST_ERROR: error}
        event = _refresh_failing(facts, token, held)
        if _same(current, {}, kept_annotations):
            return Plan(Action.NONE, state="kept", token_expires_at=held, event=event)
        return Plan(Action.UPDATE, _body(target, current, {}, kept_annotations), state="kept", token_expires_at=held,
                    event=event)
    data, annotations = _desired(facts, None)
    annotations[s.LAST_ERROR] = error
    event = ObjectEvent.warning(
        "TokenEmptied", f"access_token is empty: no impersonated, verified token for {facts.owner} in "
        f"{facts.region} ({token.reason}: {token.message})"[:1000])
    if current is not None and _same(current, data, annotations):
        return Plan(Action.NONE, state="empty", event=event)
    return Plan(Action.CREATE if current is None else Action.UPDATE, _body(target, current, data, annotations),
                state="empty", event=event)
