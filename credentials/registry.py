"""Find credential providers by name.

Providers are discovered through the entry-point group ``cloudsigma_ccm.credential_providers``
(``name = "module:from_settings"``, a factory ``from_settings(settings) -> CredentialProvider``). The
four built-in ones are also known without installed metadata (running from a source tree), and
:func:`register` adds a factory at run time (tests, embedding).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from credentials.base import CredentialProvider
from credentials.config_protocol import CredentialSettings

__all__ = [
    "BUILTIN_PROVIDERS",
    "ENTRY_POINT_GROUP",
    "ProviderFactory",
    "UnknownCredentialProvider",
    "create_provider",
    "known_providers",
    "load_factory",
    "register",
    "unregister",
]

ENTRY_POINT_GROUP = "cloudsigma_ccm.credential_providers"

#: The built-in providers (the same targets pyproject.toml registers).
BUILTIN_PROVIDERS: dict[str, str] = {
    "keycloak-token-exchange": "credentials.providers.keycloak:from_settings",
    "cloudsigma-service-provider": "credentials.providers.service_provider:from_settings",
    "password": "credentials.providers.password:from_settings",
    "static-token": "credentials.providers.static:from_settings",
}

ProviderFactory = Callable[[CredentialSettings], CredentialProvider]

_registered: dict[str, ProviderFactory] = {}


class UnknownCredentialProvider(ValueError):
    """A configured provider name that nothing provides."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown credential provider {name!r}; known providers: {', '.join(known) or 'none'} "
            f"(third-party providers register under the entry-point group {ENTRY_POINT_GROUP!r})")
        self.name = name
        self.known = known


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_providers() -> list[str]:
    """Every provider name that can be used in the credential chain, sorted."""
    return sorted(set(BUILTIN_PROVIDERS) | set(_entry_points()) | set(_registered))


def register(name: str, factory: ProviderFactory) -> None:
    """Make ``name`` available without packaging metadata (overrides an entry point of that name)."""
    _registered[name] = factory


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _load_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def load_factory(name: str) -> ProviderFactory:
    """The factory registered for ``name``; :class:`UnknownCredentialProvider` lists the known ones."""
    if name in _registered:
        return _registered[name]
    eps = _entry_points()
    factory: Any
    if name in eps:
        factory = eps[name].load()
    elif name in BUILTIN_PROVIDERS:
        factory = _load_target(BUILTIN_PROVIDERS[name])
    else:
        raise UnknownCredentialProvider(name, known_providers())
    if not callable(factory):
        raise TypeError(f"credential provider {name!r} does not point at a callable factory")
    return factory  # type: ignore[no-any-return]


def create_provider(name: str, settings: CredentialSettings) -> CredentialProvider:
    """Build provider ``name`` from ``settings``."""
    provider = load_factory(name)(settings)
    if not isinstance(provider, CredentialProvider):
        raise TypeError(f"credential provider {name!r} built a {type(provider).__name__}, which lacks "
                        "name/acquire/aclose")
    return provider
