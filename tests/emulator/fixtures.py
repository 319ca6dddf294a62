"""Pytest fixtures for the CloudSigma emulator (loaded from ``tests/conftest.py`` via ``pytest_plugins``).

* ``emulator_state``   - a fresh, empty :class:`EmulatorState` (populate it before or after starting).
* ``emulator``         - an :class:`EmulatorServer` over ``emulator_state``, started on a free 127.0.0.1 port.
* ``emulator_http``    - a plain ``aiohttp.ClientSession`` (closed afterwards).
* ``emulator_process`` - ``python -m tests.emulator`` in a subprocess (empty state; drive it via ``.control``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from .server import EmulatorProcess, EmulatorServer
from .state import EmulatorState


@pytest.fixture
def emulator_state() -> EmulatorState:
    return EmulatorState()


@pytest.fixture
async def emulator(emulator_state: EmulatorState) -> AsyncIterator[EmulatorServer]:
    server = EmulatorServer(emulator_state)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def emulator_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def emulator_process() -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess()
    proc.start_sync()
    try:
        yield proc
    finally:
        proc.stop_sync()
