"""Fixtures shared by the integration tests (helpers live in harness.py)."""

from __future__ import annotations

import pytest

from tests.emulator import EmulatorState
from tests.integration.harness import two_users


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    """The emulator with two users (alice, bob) and nothing else; a test module may override it."""
    two_users(emulator_state)
    return emulator_state
