"""Credentials for the CloudSigma API: a chain of pluggable providers with a token cache.

``build_chain(settings)`` gives a :class:`CredentialChain`; ``await chain.get(user_email, region)``
gives a :class:`Credential`. See :mod:`credentials.base` for the types, :mod:`credentials.registry` for
plugging in providers.
"""

from credentials.base import (
    Credential,
    CredentialError,
    CredentialNotConfigured,
    CredentialProvider,
    CredentialRejected,
    CredentialUnavailable,
    Identity,
    NoCredential,
    ProviderNotInChain,
)
from credentials.cache import CacheKey, TokenCache
from credentials.chain import CredentialChain
from credentials.factory import build_chain, default_chain
from credentials.registry import UnknownCredentialProvider, known_providers

__all__ = [
    "CacheKey",
    "Credential",
    "CredentialChain",
    "CredentialError",
    "CredentialNotConfigured",
    "CredentialProvider",
    "CredentialRejected",
    "CredentialUnavailable",
    "Identity",
    "NoCredential",
    "ProviderNotInChain",
    "TokenCache",
    "UnknownCredentialProvider",
    "build_chain",
    "default_chain",
    "known_providers",
]
