"""The CSR controller's own rules: when an unknown IP SAN is worth a fresh listing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from ccm.csr.controller import _predates
from ccm.csr.request import CSRView, csr_view
from ccm.servercache import ServerSnapshot
from tests.unit.csr_factories import csr_object, request_pem


def view_created(ago: float | None) -> CSRView:
    obj = csr_object(request_pem())
    if ago is not None:
        stamp = datetime.now(UTC) - timedelta(seconds=ago)
        obj["metadata"]["creationTimestamp"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return csr_view(obj)


def snapshot(age: float) -> ServerSnapshot:
    return ServerSnapshot(servers=(), fetched_at=time.monotonic() - age, complete=True)


def test_a_snapshot_older_than_the_csr_is_refreshed_once() -> None:
    assert _predates(snapshot(age=30), view_created(ago=2))
    assert _predates(snapshot(age=0), view_created(ago=0))  # same second: may predate


def test_a_snapshot_taken_after_the_csr_is_not() -> None:
    # A flood of CSRs with wrong IPs costs no listing each once a snapshot newer than them exists.
    assert not _predates(snapshot(age=1), view_created(ago=30))


def test_without_creation_time_refresh() -> None:
    assert _predates(snapshot(age=1), view_created(ago=None))
