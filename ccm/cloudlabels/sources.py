"""Tag names and host groups for one server snapshot: one ``GET /tags/`` (all pages) and at most one
``GET /servers/availability_groups/`` per snapshot refresh — never per node — and only what the policy needs.

A failure leaves that source unknown for the snapshot (the labels it feeds are not changed that round) and
never fails the server listing. It is logged once when it starts and once when it ends, not on every refresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import structlog

from ccm.cloudlabels.decide import LabelPolicy
from ccm.cloudlabels.hostgroups import host_group_ids
from ccm.servercache import SnapshotExtras
from cloudsigma.client import CloudSigmaClient
from cloudsigma.errors import CloudSigmaError
from credentials.base import CredentialError

log = structlog.get_logger(__name__)

T = TypeVar("T")


class LabelSources:
    """``await sources()`` → :class:`SnapshotExtras` for one snapshot (the cache's ``extras`` hook)."""

    def __init__(self, client: CloudSigmaClient, policy: LabelPolicy) -> None:
        self._client = client
        self._policy = policy
        self._failing: set[str] = set()

    @property
    def needed(self) -> bool:
        """Whether any extra call is needed at all."""
        return self._policy.wants_tags or self._policy.host_group

    async def __call__(self) -> SnapshotExtras:
        tags_call = self._guarded("tags", self._tag_names) if self._policy.wants_tags else _none()
        groups_call = self._guarded("host_groups", self._host_groups) if self._policy.host_group else _none()
        tag_names, host_groups = await asyncio.gather(tags_call, groups_call)
        return SnapshotExtras(tag_names=tag_names, host_groups=host_groups)

    async def _tag_names(self) -> Mapping[str, str]:
        listing = await self._client.list_tags()
        # A tag object we could not parse is missing here: servers referring to it get "unknown" tag labels.
        return {tag.uuid: tag.name for tag in listing.tags}

    async def _host_groups(self) -> Mapping[str, str]:
        return host_group_ids(await self._client.server_availability_groups())

    async def _guarded(self, source: str, fetch: Callable[[], Awaitable[T]]) -> T | None:
        try:
            value = await fetch()
        except (CloudSigmaError, CredentialError) as exc:
            if source not in self._failing:
                self._failing.add(source)
                log.warning("cloud_label_source_failed", source=source, message=str(exc),
                            note="labels from this source are left as they are until it answers",
                            **exc.log_fields())
            return None
        if source in self._failing:
            self._failing.discard(source)
            log.info("cloud_label_source_recovered", source=source)
        return value


async def _none() -> None:
    return None
