"""Authentication for the emulator: HTTP Basic, and Bearer JWTs (own signing key + optional external JWKS).

The JWT code is deliberately small and self-contained (``cryptography`` only): the emulator signs its own
tokens with RS256 and verifies RS*/PS*/ES* tokens from an external issuer such as a real Keycloak.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

if TYPE_CHECKING:
    from .state import EmulatorState, User

AuthKind = Literal["basic", "bearer"]
TokenSource = Literal["emulator", "external"]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


_SHARED_RSA: rsa.RSAPrivateKey | None = None


class TokenError(Exception):
    """A bearer token was malformed, not signed by a known key, or expired."""


def b64u_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError(f"bad base64url: {exc}") from exc


def _int_to_b64u(value: int) -> str:
    return b64u_encode(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def _b64u_to_int(text: str) -> int:
    return int.from_bytes(b64u_decode(text), "big")


@dataclass
class SigningKey:
    """An RSA key the emulator signs its tokens with (RS256)."""

    kid: str
    private_key: rsa.RSAPrivateKey
    alg: str = "RS256"

    @classmethod
    def generate(cls, kid: str | None = None, bits: int = 2048) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return cls(kid=kid or uuid.uuid4().hex, private_key=key)

    @classmethod
    def shared(cls) -> SigningKey:
        """A new ``kid`` over one RSA key generated once per process (generation costs ~0.1 s). Tokens are
        verified by ``kid``, so tokens of one emulator instance are still unknown to every other one."""
        global _SHARED_RSA
        if _SHARED_RSA is None:
            _SHARED_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid=uuid.uuid4().hex, private_key=_SHARED_RSA)

    def public_jwk(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        return {"kid": self.kid, "kty": "RSA", "alg": self.alg, "use": "sig",
                "n": _int_to_b64u(numbers.n), "e": _int_to_b64u(numbers.e)}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def verification_key(self) -> VerificationKey:
        return VerificationKey(kid=self.kid, alg=self.alg, key=self.private_key.public_key())

    def sign(self, claims: Mapping[str, Any], extra_headers: Mapping[str, Any] | None = None) -> str:
        header: dict[str, Any] = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        if extra_headers:
            header.update(extra_headers)
        signing_input = (b64u_encode(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + b64u_encode(json.dumps(dict(claims), separators=(",", ":")).encode()))
        signature = self.private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64u_encode(signature)


@dataclass(frozen=True)
class VerificationKey:
    kid: str | None
    alg: str | None
    key: PublicKey


def jwk_to_key(jwk: Mapping[str, Any]) -> VerificationKey | None:
    """Turn one JWK (RSA or EC, signature use) into a key; ``None`` for keys we cannot or should not use."""
    if jwk.get("use", "sig") != "sig":
        return None
    kid = jwk.get("kid")
    alg = jwk.get("alg")
    try:
        if jwk.get("kty") == "RSA":
            pub: PublicKey = rsa.RSAPublicNumbers(_b64u_to_int(str(jwk["e"])), _b64u_to_int(str(jwk["n"]))).public_key()
        elif jwk.get("kty") == "EC" and jwk.get("crv") in _CURVES:
            curve = _CURVES[str(jwk["crv"])]()
            pub = ec.EllipticCurvePublicNumbers(_b64u_to_int(str(jwk["x"])), _b64u_to_int(str(jwk["y"])),
                                                curve).public_key()
        else:
            return None
    except (KeyError, ValueError, TokenError):
        return None
    return VerificationKey(kid=str(kid) if kid is not None else None, alg=str(alg) if alg else None, key=pub)


@dataclass(frozen=True)
class ParsedToken:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return str(kid) if kid is not None else None


def parse_jwt(token: str) -> ParsedToken:
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a JWS compact token")
    try:
        header = json.loads(b64u_decode(parts[0]))
        claims = json.loads(b64u_decode(parts[1]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenError(f"undecodable token: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("token header/claims are not objects")
    return ParsedToken(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), b64u_decode(parts[2]))


def _verify_signature(parsed: ParsedToken, key: VerificationKey) -> None:
    alg = str(parsed.header.get("alg", ""))
    if key.alg and key.alg != alg:
        raise TokenError(f"algorithm {alg!r} does not match the key's {key.alg!r}")
    family, bits = alg[:2], alg[2:]
    if bits not in _HASHES:
        raise TokenError(f"unsupported algorithm {alg!r}")
    digest = _HASHES[bits]()
    try:
        if family in ("RS", "PS") and isinstance(key.key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15() if family == "RS"
                else padding.PSS(mgf=padding.MGF1(_HASHES[bits]()), salt_length=padding.PSS.DIGEST_LENGTH))
            key.key.verify(parsed.signature, parsed.signing_input, pad, digest)
        elif family == "ES" and isinstance(key.key, ec.EllipticCurvePublicKey):
            half = len(parsed.signature) // 2
            der = encode_dss_signature(int.from_bytes(parsed.signature[:half], "big"),
                                       int.from_bytes(parsed.signature[half:], "big"))
            key.key.verify(der, parsed.signing_input, ec.ECDSA(digest))
        else:
            raise TokenError(f"algorithm {alg!r} does not fit the key type")
    except InvalidSignature as exc:
        raise TokenError("bad signature") from exc


def check_times(claims: Mapping[str, Any], now: float, leeway: float = 0.0) -> None:
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise TokenError("token has no exp")
    if now > exp + leeway:
        raise TokenError("token expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and now + leeway < nbf:
        raise TokenError("token not yet valid")


def audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [str(a) for a in aud]
    return []


class JwksCache:
    """Keys of an external issuer, fetched from its JWKS URL; refetched when an unknown ``kid`` shows up."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.keys: dict[str | None, VerificationKey] = {}
        self.fetched_at: float | None = None
        self.fetch_count = 0
        self._session: aiohttp.ClientSession | None = None

    async def _fetch(self, url: str) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.fetched_at = time.monotonic()
        self.fetch_count += 1
        async with self._session.get(url) as resp:
            resp.raise_for_status()
            body = await resp.json(content_type=None)
        keys: dict[str | None, VerificationKey] = {}
        for jwk in body.get("keys", []) if isinstance(body, dict) else []:
            if isinstance(jwk, dict) and (key := jwk_to_key(jwk)) is not None:
                keys[key.kid] = key
        self.keys = keys

    async def get(self, url: str, kid: str | None, refetch_interval: float) -> VerificationKey | None:
        if url != self.url:
            self.url, self.keys, self.fetched_at = url, {}, None
        if kid not in self.keys:
            stale = self.fetched_at is None or time.monotonic() - self.fetched_at >= refetch_interval
            if stale:
                try:
                    await self._fetch(url)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    raise TokenError(f"cannot fetch JWKS from {url}: {exc}") from exc
        return self.keys.get(kid)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass
class VerifiedToken:
    claims: dict[str, Any]
    source: TokenSource


async def verify_token(state: EmulatorState, jwks: JwksCache | None, token: str) -> VerifiedToken:
    """Verify a bearer JWT against the emulator's own key, then the external JWKS (if configured)."""
    parsed = parse_jwt(token)
    own = state.signing_key
    source: TokenSource
    if parsed.kid == own.kid:
        key: VerificationKey | None = own.verification_key()
        source = "emulator"
    elif state.jwks_url and jwks is not None:
        key = await jwks.get(state.jwks_url, parsed.kid, state.jwks_refetch_interval)
        source = "external"
        if key is not None and state.external_issuer and parsed.claims.get("iss") != state.external_issuer:
            raise TokenError("unexpected issuer")
    else:
        key = None
        source = "emulator"
    if key is None:
        raise TokenError(f"unknown signing key {parsed.kid!r}")
    _verify_signature(parsed, key)
    check_times(parsed.claims, state.now(), state.clock_leeway)
    return VerifiedToken(parsed.claims, source)


@dataclass
class AuthResult:
    """Who a request is from, as far as the API is concerned."""

    kind: AuthKind | None = None
    user: User | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    token_source: TokenSource | None = None
    error: str | None = None


def parse_basic(header_value: str) -> tuple[str, str] | None:
    try:
        raw = base64.b64decode(header_value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    if ":" not in raw:
        return None
    name, _, password = raw.partition(":")
    return name, password


async def authenticate(state: EmulatorState, jwks: JwksCache | None, authorization: str | None) -> AuthResult:
    """Resolve the ``Authorization`` header to a user. ``result.user is None`` means 401 (see ``error``)."""
    if not authorization:
        return AuthResult(error="Authentication credentials were not provided.")
    scheme, _, value = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        result = AuthResult(kind="basic")
        creds = parse_basic(value)
        user = state.get_user(creds[0]) if creds else None
        if creds is None or user is None or not hmac.compare_digest(user.password.encode(), creds[1].encode()):
            result.error = "Invalid username/password."
            return result
        result.user = user
        return result
    if scheme == "bearer":
        result = AuthResult(kind="bearer")
        try:
            verified = await verify_token(state, jwks, value.strip())
        except TokenError as exc:
            result.error = f"Invalid token: {exc}"
            return result
        result.claims, result.token_source = verified.claims, verified.source
        result.user = state.user_for_claims(verified.claims)
        if result.user is None:
            result.error = "Token does not map to a user."
        return result
    return AuthResult(error="Unsupported authorization scheme.")
