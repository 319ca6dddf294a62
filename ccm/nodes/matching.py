"""Which server is this node's? Pure functions over a snapshot.

Order: ``spec.providerID`` when set (authoritative, immutable); otherwise ``status.nodeInfo.systemUUID`` (the VM's
SMBIOS uuid is the server uuid; compared in both byte orders), otherwise the exact server name. A systemUUID that
names no server never falls back to a server of another uuid that merely carries the name
(:attr:`MatchKind.SYSTEM_UUID_MISMATCH`). Two servers with the node's name and nothing to decide between them is
never guessed (seed 001). Whether the snapshot is fresh enough for the match is the caller's question
(:mod:`ccm.nodes.evidence`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from ccm.nodes.evidence import uuid_forms
from ccm.nodes.view import NodeView
from ccm.providerid import ForeignProviderID, parse_provider_id
from cloudsigma.models import Server


class MatchKind(Enum):
    FOUND = "found"
    AMBIGUOUS = "ambiguous"  # several servers carry the node's name
    NOT_IN_SNAPSHOT = "not_in_snapshot"  # providerID uuid not among the user's servers
    NO_MATCH = "no_match"  # no providerID, no server with the name
    FOREIGN_PROVIDER_ID = "foreign_provider_id"
    #: The node reports a systemUUID no listed server has, and a server of another uuid carries its name.
    SYSTEM_UUID_MISMATCH = "system_uuid_mismatch"


@dataclass(frozen=True)
class Match:
    kind: MatchKind
    server: Server | None = None
    via: str = ""
    provider_uuid: str | None = None
    #: Servers carrying the node's name (the candidates, or the diagnosis of a stale providerID).
    name_matches: tuple[Server, ...] = ()
    detail: str = ""


def match_server(
    node: NodeView,
    by_uuid: Mapping[str, Server],
    by_name: Mapping[str, tuple[Server, ...]],
    *,
    use_system_uuid: bool = True,
) -> Match:
    named = by_name.get(node.name, ())
    if node.provider_id:
        try:
            uuid = parse_provider_id(node.provider_id)
        except ForeignProviderID as exc:
            return Match(MatchKind.FOREIGN_PROVIDER_ID, detail=str(exc), name_matches=named)
        server = by_uuid.get(uuid)
        if server is not None:
            return Match(MatchKind.FOUND, server=server, via="providerID", provider_uuid=uuid)
        return Match(MatchKind.NOT_IN_SNAPSHOT, provider_uuid=uuid, name_matches=named)

    forms = uuid_forms(node.system_uuid) if use_system_uuid else ()
    for form in forms:
        if form in by_uuid:
            return Match(MatchKind.FOUND, server=by_uuid[form], via="systemUUID", name_matches=named)
    if forms and named:
        return Match(MatchKind.SYSTEM_UUID_MISMATCH, name_matches=named, detail=describe_candidates(named))
    if len(named) == 1:
        return Match(MatchKind.FOUND, server=named[0], via="name", name_matches=named)
    if len(named) > 1:
        return Match(MatchKind.AMBIGUOUS, name_matches=named, detail=describe_candidates(named))
    return Match(MatchKind.NO_MATCH)


def describe_candidates(servers: tuple[Server, ...]) -> str:
    return ", ".join(f"{s.uuid} (owner {s.owner_uuid or 'unknown'}, {s.status})" for s in servers)
