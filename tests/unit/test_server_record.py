"""The server snapshot's records stay compact: slotted, without what no decision reads, repeated strings shared.

The figure itself (bytes per server) is a benchmark (``python -m bench.serverstore``); these check the shape that
gives it, so a change that brings back per-instance dicts or the API's resource URIs fails here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cloudsigma.models import NIC, IPConf, NICRuntime, Ref, RuntimeNIC, Server, ServerRuntime, Tag, parse_server

OWNER = "1842b5d0-336c-4b80-ab04-9cf04838289a"
TAG = "3b0d5c1e-6a2f-4c8d-9e7b-1f2a3b4c5d6e"


def api_server(i: int) -> dict[str, Any]:
    """A server object as ``GET /servers/detail/`` sends it (each string a fresh object, as a JSON decoder makes)."""
    ip = f"185.212.0.{i + 2}"
    mac = f"22:00:00:00:00:{i + 1:02x}"
    return {
        "uuid": f"c7bb6297-07b4-4dbb-a7e0-97a913b5b5{i:02x}", "name": f"node-{i}", "status": "".join("running"),
        "cpu": 2000, "smp": 1, "mem": 2147483648, "meta": {"pool": "".join("workers")},
        "owner": {"resource_uri": f"/api/2.0/user/{OWNER}/", "uuid": "".join(OWNER)},
        "tags": [{"resource_uri": f"/api/2.0/tags/{TAG}/", "uuid": "".join(TAG)}],
        "resource_uri": "/api/2.0/servers/x/", "vnc_password": "not-kept", "drives": [], "hypervisor": "kvm",
        "nics": [{"ip_v4_conf": {"conf": "".join("dhcp"), "ip": None}, "mac": mac, "model": "".join("virtio"),
                  "runtime": {"interface_type": "".join("public"), "io": {"bytes_recv": 0},
                              "ip_v4": {"resource_uri": f"/api/2.0/ips/{ip}/", "uuid": ip}},
                  "vlan": None, "boot_order": None}],
        "runtime": {"active_since": "2026-12-06T02:18:43+00:00",
                    "nics": [{"interface_type": "public", "ip_v4": {"uuid": ip}, "mac": mac, "io": {}}]},
    }


def test_records_have_no_per_instance_dict() -> None:
    server = parse_server(api_server(0))
    records = [server, server.owner, server.tags[0], server.nics[0], server.nics[0].ip_v4_conf,
               server.nics[0].runtime, server.runtime, server.runtime.nics[0] if server.runtime else None]
    for record in records:
        assert record is not None
        assert not hasattr(record, "__dict__"), type(record).__name__


def test_records_keep_only_what_decisions_read() -> None:
    kept = {cls.__name__: {f.name for f in dataclasses.fields(cls)}
            for cls in (Ref, IPConf, NICRuntime, NIC, RuntimeNIC, ServerRuntime, Server, Tag)}
    assert kept["Ref"] == {"uuid"}
    assert kept["Server"] == {"uuid", "name", "status", "cpu", "smp", "mem", "meta", "tags", "owner", "nics",
                              "runtime", "problems"}
    server = parse_server(api_server(0))
    assert isinstance(server.nics, tuple) and isinstance(server.tags, tuple)
    assert server.owner_uuid == OWNER and server.tags[0].uuid == TAG
    assert server.nics[0].runtime is not None and server.nics[0].runtime.ip_v4 == Ref(uuid="185.212.0.2")


def test_strings_that_repeat_across_servers_are_shared() -> None:
    a, b = parse_server(api_server(1)), parse_server(api_server(2))
    assert a.owner is not None and b.owner is not None and a.owner.uuid is b.owner.uuid
    assert a.tags[0].uuid is b.tags[0].uuid
    assert a.status is b.status
    assert a.meta["pool"] is b.meta["pool"] and next(iter(a.meta)) is next(iter(b.meta))
    nic_a, nic_b = a.nics[0], b.nics[0]
    assert nic_a.model is nic_b.model
    assert nic_a.ip_v4_conf is not None and nic_b.ip_v4_conf is not None
    assert nic_a.ip_v4_conf.conf is nic_b.ip_v4_conf.conf
    assert nic_a.runtime is not None and nic_b.runtime is not None
    assert nic_a.runtime.interface_type is nic_b.runtime.interface_type


def test_a_listing_releases_each_decoded_object_as_its_record_is_made() -> None:
    """At thousands of servers the decoded JSON and the records must not be alive together in full."""
    from cloudsigma.client import _parse_servers

    seen: list[int] = []

    class Watched(list[Any]):
        def __getitem__(self, index: Any) -> Any:
            seen.append(sum(1 for item in list.__iter__(self) if item is not None))
            return super().__getitem__(index)

    objects = Watched([api_server(i) for i in range(5)] + ["not an object"])
    servers, invalid = _parse_servers(objects)
    assert len(servers) == 5 and len(invalid) == 1
    assert seen == [6, 5, 4, 3, 2, 1]  # decoded objects still held when each one is taken
    assert list(objects) == [None] * 6
