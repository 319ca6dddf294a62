"""Address extraction from every NIC shape the API documents."""

from __future__ import annotations

import pytest

from cloudsigma.addresses import server_addresses
from cloudsigma.models import parse_server
from tests.unit.factories import dhcp_nic, manual_nic, server, static_nic, vlan_nic


@pytest.mark.parametrize(
    ("nics", "runtime_nics", "v4", "v6", "private", "unknown"),
    [
        ([static_nic("185.12.5.5")], [], ("185.12.5.5",), (), (), 0),
        ([dhcp_nic("94.26.101.149")], [], ("94.26.101.149",), (), (), 0),
        # dhcp: address only in the server-level runtime.nics entry (matched by MAC)
        ([dhcp_nic(None, mac="aa:bb")], [{"interface_type": "public", "mac": "AA:BB", "ip_v4": {"uuid": "5.5.5.5"}}],
         ("5.5.5.5",), (), (), 0),
        ([dhcp_nic(None)], [], (), (), (), 1),  # stopped server: dhcp IP unknown
        ([manual_nic()], [], (), (), (), 1),
        ([vlan_nic()], [], (), (), ("22:aa:00:00:00:04",), 0),
        ([dhcp_nic("94.26.101.149", ipv6="2a03:b0c0::1")], [], ("94.26.101.149",), ("2a03:b0c0::1",), (), 0),
        ([static_nic("185.12.5.5"), vlan_nic(), dhcp_nic("94.26.101.149", mac="m2")], [],
         ("185.12.5.5", "94.26.101.149"), (), ("22:aa:00:00:00:04",), 0),
        ([static_nic("not-an-ip")], [], (), (), (), 1),
        ([static_nic("185.12.5.5"), static_nic("185.12.5.5", mac="x")], [], ("185.12.5.5",), (), (), 0),
    ],
)
def test_nic_shapes(nics, runtime_nics, v4, v6, private, unknown) -> None:  # type: ignore[no-untyped-def]
    srv = server(nics=nics, runtime={"nics": runtime_nics})
    got = server_addresses(srv)
    assert got.ipv4 == v4
    assert got.ipv6 == v6
    assert got.private_nics == private
    assert got.unknown_public_nics == unknown


def test_invalid_ip_reported() -> None:
    got = server_addresses(server(nics=[static_nic("999.1.1.1")]))
    assert got.invalid == ("999.1.1.1",)
    assert got.ipv4 == ()


def test_tolerant_parsing_of_odd_objects() -> None:
    srv = parse_server({"uuid": "33333333-3333-4333-8333-333333333333",
                        "nics": [None, 3, {"vlan": "v"}, {"ip_v4_conf": "dhcp"}], "owner": 7,
                        "cpu": "abc", "smp": True, "mem": 1.5, "meta": {"a": 1}, "runtime": {"nics": "x"},
                        "unknown_field": {"nested": 1}})
    assert srv.cpu is None and srv.smp is None
    assert srv.meta == {"a": "1"}
    assert srv.owner is None
    assert server_addresses(srv).private_nics == ("",)
