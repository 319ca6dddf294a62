"""A CloudSigma API 2.0 emulator (aiohttp) for integration tests, benchmarks and demos.

Quick use::

    from tests.emulator import EmulatorServer, EmulatorState, public_dhcp_nic

    state = EmulatorState()
    state.add_user("alice@example.com", password="pw")
    state.add_server("alice@example.com", "node-1", nics=[public_dhcp_nic("94.26.101.149")])
    async with EmulatorServer(state) as emu:
        ...  # emu.api_url == "http://127.0.0.1:<port>/api/2.0/"
"""

from .app import create_app
from .server import EmulatorProcess, EmulatorServer
from .state import (
    Client,
    EmulatorState,
    Fault,
    IpRecord,
    NicSpec,
    RequestRecord,
    User,
    private_vlan_nic,
    public_dhcp_nic,
    public_ipv6_nic,
    public_manual_nic,
    public_static_nic,
)

__all__ = [
    "Client",
    "EmulatorProcess",
    "EmulatorServer",
    "EmulatorState",
    "Fault",
    "IpRecord",
    "NicSpec",
    "RequestRecord",
    "User",
    "create_app",
    "private_vlan_nic",
    "public_dhcp_nic",
    "public_ipv6_nic",
    "public_manual_nic",
    "public_static_nic",
]
