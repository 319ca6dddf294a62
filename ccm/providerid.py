"""``spec.providerID`` of CloudSigma nodes: ``cloudsigma://<server-uuid>``."""

from __future__ import annotations

import re

SCHEME = "cloudsigma://"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class ForeignProviderID(ValueError):
    """The providerID belongs to another cloud provider (or is malformed)."""


def format_provider_id(server_uuid: str) -> str:
    return SCHEME + server_uuid.lower()


def parse_provider_id(provider_id: str) -> str:
    """Return the server uuid of a ``cloudsigma://`` providerID; raise :class:`ForeignProviderID` otherwise.

    Accepts the ``cloudsigma:///uuid`` form some tools write.
    """
    if not provider_id.startswith(SCHEME):
        raise ForeignProviderID(f"providerID {provider_id!r} is not a CloudSigma one ({SCHEME}<server-uuid>)")
    rest = provider_id[len(SCHEME):].lstrip("/")
    if not _UUID.match(rest):
        raise ForeignProviderID(f"providerID {provider_id!r} does not end in a server uuid")
    return rest.lower()
