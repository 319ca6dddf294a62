"""Table-driven tests of the Node address decision (upstream contract and our improvements)."""

from __future__ import annotations

import pytest

from ccm.nodes.addresses import AddressError, decide_addresses, is_private, same_addresses
from ccm.nodes.view import Address
from cloudsigma.addresses import ServerAddresses

E, INT, H = "ExternalIP", "InternalIP", "Hostname"


def addrs(*pairs: tuple[str, str]) -> tuple[Address, ...]:
    return tuple(Address(t, a) for t, a in pairs)


@pytest.mark.parametrize(
    ("ip", "private"),
    [("10.1.2.3", True), ("172.16.0.1", True), ("172.31.255.255", True), ("172.32.0.1", False),
     ("172.15.0.1", False), ("192.168.1.1", True), ("100.64.0.1", True), ("100.127.255.255", True),
     ("100.128.0.1", False), ("94.26.101.149", False), ("fd00::1", True), ("fc00::1", True), ("2a03::1", False)],
)
def test_private_ranges_exact(ip: str, private: bool) -> None:
    import ipaddress

    assert is_private(ipaddress.ip_address(ip)) is private


@pytest.mark.parametrize(
    ("server", "current", "provided", "expected"),
    [
        # public dhcp address, kubelet reported nothing → ExternalIP + Hostname from the node name
        (ServerAddresses(ipv4=("94.26.101.149",)), (), None, addrs((E, "94.26.101.149"), (H, "n1"))),
        # a 172.32 address is public, a 172.20 one private
        (ServerAddresses(ipv4=("172.32.1.1", "172.20.1.1")), (), None,
         addrs((E, "172.32.1.1"), (INT, "172.20.1.1"), (H, "n1"))),
        # IPv6
        (ServerAddresses(ipv4=("94.26.101.149",), ipv6=("2a03:b0c0::1",)), (), None,
         addrs((E, "94.26.101.149"), (E, "2a03:b0c0::1"), (H, "n1"))),
        # private VLAN NIC: the kubelet's InternalIP is kept (API knows none), kubelet Hostname kept
        (ServerAddresses(ipv4=("94.26.101.149",), private_nics=("mac",)), addrs((INT, "10.0.0.5"), (H, "host-a")),
         None, addrs((E, "94.26.101.149"), (INT, "10.0.0.5"), (H, "host-a"))),
        # without a private NIC a kubelet InternalIP the cloud does not know is dropped
        (ServerAddresses(ipv4=("94.26.101.149",)), addrs((INT, "10.0.0.5")), None,
         addrs((E, "94.26.101.149"), (H, "n1"))),
        # provided-node-ip on the private NIC: listed first, other InternalIPs dropped, ExternalIP kept
        (ServerAddresses(ipv4=("94.26.101.149",), private_nics=("mac",)),
         addrs((INT, "10.0.0.5"), (INT, "10.0.0.6")), "10.0.0.6",
         addrs((INT, "10.0.0.6"), (E, "94.26.101.149"), (H, "n1"))),
        # provided-node-ip = the public address: it comes first, other ExternalIPs dropped
        (ServerAddresses(ipv4=("94.26.101.149", "185.1.1.1")), (), "185.1.1.1",
         addrs((E, "185.1.1.1"), (H, "n1"))),
        # dual stack: one per family first; same type+family dropped, other family kept
        (ServerAddresses(ipv4=("94.26.101.149", "185.1.1.1"), ipv6=("2a03::1", "2a03::2")), (), "185.1.1.1,2a03::2",
         addrs((E, "185.1.1.1"), (E, "2a03::2"), (H, "n1"))),
    ],
)
def test_decide_addresses(server: ServerAddresses, current: tuple[Address, ...], provided: str | None,
                          expected: tuple[Address, ...]) -> None:
    got = decide_addresses("n1", server, current, provided_node_ip=provided)
    assert got.addresses == expected


@pytest.mark.parametrize("provided", ["", "not-an-ip", "10.0.0.1,10.0.0.2", "1.2.3.4", "0.0.0.0", "10.0.0.5,"])
def test_invalid_or_unknown_provided_node_ip(provided: str) -> None:
    with pytest.raises(AddressError) as exc:
        decide_addresses("n1", ServerAddresses(ipv4=("94.26.101.149",), private_nics=("m",)),
                         addrs((INT, "10.0.0.5")), provided_node_ip=provided)
    assert "provided-node-ip" in str(exc.value)


def test_ipv6_can_be_disabled() -> None:
    got = decide_addresses("n1", ServerAddresses(ipv4=("94.26.101.149",), ipv6=("2a03::1",)), (), ipv6=False)
    assert all(":" not in a.address for a in got.addresses)


def test_set_comparison_ignores_order() -> None:
    a = addrs((E, "1.1.1.1"), (E, "2a03::1"))
    assert same_addresses(a, tuple(reversed(a)))
    assert not same_addresses(a, addrs((E, "1.1.1.1")))
