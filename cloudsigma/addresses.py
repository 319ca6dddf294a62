"""Where a server's IP addresses are, as far as the CloudSigma API knows them. Pure functions.

- ``static`` public NIC: ``ip_v4_conf.ip.uuid`` (an IP's uuid *is* its address).
- ``dhcp`` public NIC: the NIC's ``runtime.ip_v4.uuid``, or the server-level ``runtime.nics[]`` entry with the
  same MAC (``interface_type == "public"``). Gone while the server is stopped; may change on reboot.
- ``manual`` public NIC: the API does not know the address.
- private VLAN NIC: the API never reports an IP; the guest assigns it (the kubelet's InternalIP is the source).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cloudsigma.models import NIC, IPConf, Ref, RuntimeNIC, Server


@dataclass(frozen=True)
class ServerAddresses:
    """The addresses of one server known to the API, in NIC order, validated and de-duplicated."""

    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    #: MACs of private VLAN NICs (their IPs are only known to the guest).
    private_nics: tuple[str, ...] = ()
    #: Public NICs whose address the API cannot tell (``manual``, or dhcp on a stopped server).
    unknown_public_nics: int = 0
    #: Strings that looked like addresses but were not valid IPs (bad data from the API).
    invalid: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.ipv4 + self.ipv6

    @property
    def problems(self) -> tuple[str, ...]:
        """The unusable address data, in words: ``ip "not-an-ip" ignored``."""
        return tuple(f'ip "{raw}" ignored' for raw in self.invalid)


def _ip_of(ref: Ref | None) -> str | None:
    return ref.uuid if ref is not None else None


def _runtime_entry(server: Server, nic: NIC) -> RuntimeNIC | None:
    if server.runtime is None:
        return None
    public = [n for n in server.runtime.nics if (n.interface_type or "public") == "public"]
    if nic.mac:
        for entry in public:
            if entry.mac and entry.mac.lower() == nic.mac.lower():
                return entry
    # Without a MAC to match, a single public runtime NIC on a server with a single public NIC is unambiguous.
    public_nics = [n for n in server.nics if n.vlan is None and (n.ip_v4_conf or n.ip_v6_conf)]
    if len(public) == 1 and len(public_nics) == 1 and not public[0].mac:
        return public[0]
    return None


def _nic_address(server: Server, nic: NIC, conf: IPConf | None, family: int) -> str | None:
    if conf is None:
        return None
    nic_runtime_ip = None
    if nic.runtime is not None:
        nic_runtime_ip = _ip_of(nic.runtime.ip_v4 if family == 4 else nic.runtime.ip_v6)
    mode = (conf.conf or "").lower()
    if mode == "static":
        return _ip_of(conf.ip) or nic_runtime_ip
    if mode == "dhcp":
        if nic_runtime_ip:
            return nic_runtime_ip
        entry = _runtime_entry(server, nic)
        if entry is not None:
            return _ip_of(entry.ip_v4 if family == 4 else entry.ip_v6)
        return None
    # manual (or unknown): the API does not know the address; a live runtime value is still a fact.
    return nic_runtime_ip


def server_addresses(server: Server) -> ServerAddresses:
    """Extract every address the API knows for ``server``. Never raises on odd data."""
    v4: list[str] = []
    v6: list[str] = []
    private: list[str] = []
    invalid: list[str] = []
    unknown = 0

    def add(raw: str | None, family: int) -> bool:
        if not raw:
            return False
        try:
            # A zone id ("fe80::1%eth0") is not an address another host can use, and Go's ParseIP rejects it.
            if "%" in raw:
                raise ValueError(raw)
            ip = ipaddress.ip_address(raw.strip())
        except ValueError:
            invalid.append(raw)
            return False
        text = ip.compressed
        target = v4 if ip.version == 4 else v6
        if text not in target:
            target.append(text)
        return True

    for nic in server.nics:
        if nic.vlan is not None:
            private.append(nic.mac or "")
            continue
        if nic.ip_v4_conf is None and nic.ip_v6_conf is None:
            continue
        got4 = add(_nic_address(server, nic, nic.ip_v4_conf, 4), 4)
        got6 = add(_nic_address(server, nic, nic.ip_v6_conf, 6), 6)
        if not got4 and not got6:
            unknown += 1

    return ServerAddresses(
        ipv4=tuple(v4),
        ipv6=tuple(v6),
        private_nics=tuple(private),
        unknown_public_nics=unknown,
        invalid=tuple(invalid),
    )
