"""How the CCM's OAuth client proves who it is to the token endpoint.

Three methods, each adding its fields to a token request through authlib's client-authentication pieces
(:class:`authlib.oauth2.auth.ClientAuth` and the RFC 7523 ``PrivateKeyJWT``):

* ``client_secret`` — ``client_id`` + ``client_secret`` in the form (``client_secret_post``);
* ``client_assertion`` — *secretless*: the pod's projected Kubernetes service-account token, read from a file
  the kubelet rotates, sent as an RFC 7523 client assertion
  (``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``). Keycloak verifies it
  against the cluster issuer's keys (a "Kubernetes" identity provider and a client whose authenticator is
  *Signed JWT - Federated*);
* ``private_key_jwt`` — a key pair instead of a shared secret: a short-lived assertion signed with a private key
  read from a file, whose public key is registered with the client (Keycloak: *Signed JWT*).

Secrets and keys come from :class:`credentials.secrets.SecretSource`, so rotated files are used by the next
request without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from authlib.common.urls import add_params_to_qs, url_decode, url_encode
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jwk
from joserfc.errors import JoseError
from pydantic import SecretStr

from credentials.base import CredentialRejected, CredentialUnavailable, SecretSink
from credentials.claims import parse_jws
from credentials.config_protocol import DEFAULT_REALM, issuer_url, path_setting, secret_setting, setting, str_setting
from credentials.secrets import SecretSource

__all__ = [
    "ASSERTION_TYPE",
    "ClientAssertionFile",
    "ClientAuthentication",
    "ClientSecret",
    "PrivateKeyJwt",
    "client_authentication",
    "client_authentication_from",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Lifetime of a private_key_jwt assertion: one request, with room for clock skew.
PRIVATE_KEY_JWT_LIFETIME = 60


class ClientAuthentication(Protocol):
    """One way of authenticating the OAuth client at the token endpoint."""

    #: ``client_secret``, ``client_assertion`` or ``private_key_jwt``.
    method: str

    def missing(self) -> list[str]:
        """Settings that must be set before a request can be made (empty when configured)."""
        ...

    def apply(self, form: Mapping[str, str], *, token_endpoint: str, provider: str,
              user: str | None = None) -> dict[str, str]:
        """``form`` plus the client-authentication fields. Raises :class:`credentials.base.CredentialError`."""
        ...

    def describe(self) -> dict[str, Any]:
        """How the client authenticates, for diagnostics; never a secret."""
        ...

    def attach_secret_sink(self, sink: SecretSink) -> None: ...


def _prepared(auth: ClientAuth, form: Mapping[str, str], token_endpoint: str) -> dict[str, str]:
    _, _, body = auth.prepare("POST", token_endpoint, {}, url_encode(list(form.items())))
    return dict(url_decode(body))


class ClientSecret:
    """``client_secret_post``: the client id and secret in the form."""

    method = "client_secret"

    def __init__(self, client_id: str | None, secret: SecretSource) -> None:
        self.client_id = client_id
        self.secret = secret

    def missing(self) -> list[str]:
        missing = [] if self.client_id else ["CLOUDSIGMA_CLIENT_ID"]
        if not self.secret.configured:
            missing.append(f"{self.secret.setting_names} (or CLOUDSIGMA_CLIENT_ASSERTION_FILE for secretless "
                           "authentication)")
        return missing

    def apply(self, form: Mapping[str, str], *, token_endpoint: str, provider: str,
              user: str | None = None) -> dict[str, str]:
        secret = self.secret.get(provider=provider, user=user).get_secret_value()
        return _prepared(ClientAuth(self.client_id, secret, "client_secret_post"), form, token_endpoint)

    def describe(self) -> dict[str, Any]:
        return {"client_auth": self.method, "client_auth_source": self.secret.source}

    def attach_secret_sink(self, sink: SecretSink) -> None:
        self.secret.attach_sink(sink)


class ClientAssertionFile:
    """RFC 7523 client assertion from a file: the pod's projected service-account token.

    Before sending it, the token is checked for what Keycloak will refuse without saying why: it must be a JWT,
    not expired, with exactly one audience equal to ``audience`` (Keycloak's realm issuer, unless configured).
    """

    method = "client_assertion"

    def __init__(self, client_id: str | None, token: SecretSource, *, audience: str | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client_id = client_id
        self.token = token
        self.audience = audience
        self._clock = clock

    def missing(self) -> list[str]:
        return [] if self.token.configured else ["CLOUDSIGMA_CLIENT_ASSERTION_FILE"]

    def apply(self, form: Mapping[str, str], *, token_endpoint: str, provider: str,
              user: str | None = None) -> dict[str, str]:
        assertion = self.token.get(provider=provider, user=user).get_secret_value()
        self._check(assertion, provider=provider, user=user)

        def jwt_bearer(auth: ClientAuth, method: str, uri: str, headers: dict[str, str],
                       body: str) -> tuple[str, dict[str, str], str]:
            params = [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", assertion)]
            if auth.client_id:
                params.insert(0, ("client_id", auth.client_id))
            return uri, headers, add_params_to_qs(body or "", params)

        return _prepared(ClientAuth(self.client_id, None, jwt_bearer), form, token_endpoint)

    def _check(self, assertion: str, *, provider: str, user: str | None) -> None:
        where = f"the client assertion file {self.token.path}"
        parsed = parse_jws(assertion)
        if parsed is None:
            raise CredentialRejected(f"{where} does not hold a JWT: mount a projected service-account token "
                                     "there (serviceAccountToken in a projected volume)", provider=provider,
                                     user=user, reason="client_assertion_invalid")
        claims = parsed[1]
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool) and exp <= self._clock():
            raise CredentialUnavailable(f"{where} holds a token that expired at {exp:.0f}: the kubelet has not "
                                        "rotated it (is the projected volume still mounted?)", provider=provider,
                                        user=user, reason="client_assertion_expired")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else [str(a) for a in aud] if isinstance(aud, list) else []
        if self.audience and audiences != [self.audience]:
            raise CredentialRejected(
                f"{where} holds a token for audience {audiences}, but Keycloak accepts exactly one audience, "
                f"{self.audience!r} (the realm issuer): set serviceAccountToken.audience to it in the Deployment, "
                "or CLOUDSIGMA_CLIENT_ASSERTION_AUDIENCE to what the identity provider expects",
                provider=provider, user=user, reason="client_assertion_audience")

    def describe(self) -> dict[str, Any]:
        return {"client_auth": self.method, "client_auth_source": self.token.source,
                "client_assertion_audience": self.audience}

    def attach_secret_sink(self, sink: SecretSink) -> None:
        self.token.attach_sink(sink)


class PrivateKeyJwt:
    """``private_key_jwt``: a one-minute assertion signed with the client's private key (RSA or EC, PEM file).

    The assertion's ``kid`` is the key's RFC 7638 thumbprint; register the public key (``describe()`` shows its
    thumbprint) with the client.
    """

    method = "private_key_jwt"

    def __init__(self, client_id: str | None, key_file: SecretSource, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.client_id = client_id
        self.key_file = key_file
        self._clock = clock
        self._loaded: tuple[str, jwk.RSAKey | jwk.ECKey, str] | None = None

    def missing(self) -> list[str]:
        missing = [] if self.client_id else ["CLOUDSIGMA_CLIENT_ID"]
        return missing + ([] if self.key_file.configured else ["CLOUDSIGMA_CLIENT_PRIVATE_KEY_FILE"])

    def _key(self, *, provider: str, user: str | None) -> tuple[jwk.RSAKey | jwk.ECKey, str]:
        pem = self.key_file.get(provider=provider, user=user).get_secret_value()
        if self._loaded is not None and self._loaded[0] == pem:
            return self._loaded[1], self._loaded[2]
        key = _import_private_key(pem)
        if key is None:
            raise CredentialRejected(f"the private key file {self.key_file.path} holds no RSA or EC private key "
                                     "in PEM form", provider=provider, user=user, reason="private_key_invalid")
        alg = "RS256" if isinstance(key, jwk.RSAKey) else {"P-256": "ES256", "P-384": "ES384",
                                                            "P-521": "ES512"}.get(str(key.curve_name), "ES256")
        key.ensure_kid()
        self._loaded = (pem, key, alg)
        return key, alg

    def apply(self, form: Mapping[str, str], *, token_endpoint: str, provider: str,
              user: str | None = None) -> dict[str, str]:
        key, alg = self._key(provider=provider, user=user)
        now = int(self._clock())
        method = PrivateKeyJWT(token_endpoint, claims={"iat": now, "exp": now + PRIVATE_KEY_JWT_LIFETIME},
                               headers={"kid": key.kid}, alg=alg)
        form = {**form, "client_id": self.client_id or ""}
        return _prepared(ClientAuth(self.client_id, key, method), form, token_endpoint)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"client_auth": self.method, "client_auth_source": self.key_file.source}
        if self._loaded is not None:
            out["public_key_thumbprint"] = self._loaded[1].kid
            out["signing_alg"] = self._loaded[2]
        return out

    def attach_secret_sink(self, sink: SecretSink) -> None:
        self.key_file.attach_sink(sink)


def _import_private_key(pem: str) -> jwk.RSAKey | jwk.ECKey | None:
    for key_type in (jwk.RSAKey, jwk.ECKey):
        try:
            key = key_type.import_key(pem)
        except (JoseError, ValueError, TypeError):
            continue
        if key.is_private:
            return key
    return None


def client_authentication(*, client_id: str | None, client_secret: SecretStr | None = None,
                          client_secret_file: Path | None = None, client_assertion_file: Path | None = None,
                          client_assertion_audience: str | None = None, private_key_file: Path | None = None,
                          clock: Callable[[], float] = time.time) -> ClientAuthentication:
    """The configured method: an assertion file, else a private key, else the client secret."""
    if client_assertion_file is not None:
        token = SecretSource(what="client assertion (projected service-account token)",
                             env="CLOUDSIGMA_CLIENT_ASSERTION", file_env="CLOUDSIGMA_CLIENT_ASSERTION_FILE",
                             file=client_assertion_file)
        return ClientAssertionFile(client_id, token, audience=client_assertion_audience, clock=clock)
    if private_key_file is not None:
        key = SecretSource(what="client private key", env="CLOUDSIGMA_CLIENT_PRIVATE_KEY",
                           file_env="CLOUDSIGMA_CLIENT_PRIVATE_KEY_FILE", file=private_key_file)
        return PrivateKeyJwt(client_id, key, clock=clock)
    secret = SecretSource(what="client secret", env="CLOUDSIGMA_CLIENT_SECRET", value=client_secret,
                          file=client_secret_file)
    return ClientSecret(client_id, secret)


def client_authentication_from(settings: object) -> ClientAuthentication:
    """The client authentication the settings configure (see :func:`client_authentication`)."""
    oauth_url = str_setting(settings, "oauth_url")
    audience = str_setting(settings, "client_assertion_audience")
    if audience is None and oauth_url:
        audience = issuer_url(oauth_url, setting(settings, "oauth_realm", DEFAULT_REALM))
    return client_authentication(
        client_id=str_setting(settings, "client_id"),
        client_secret=secret_setting(settings, "client_secret"),
        client_secret_file=path_setting(settings, "client_secret_file"),
        client_assertion_file=path_setting(settings, "client_assertion_file"),
        client_assertion_audience=audience,
        private_key_file=path_setting(settings, "client_private_key_file"),
    )
