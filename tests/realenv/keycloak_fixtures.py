"""The ``keycloak`` fixture: one real Keycloak (tests/realenv/keycloak.py) for the whole test session.

It is started on first use (``scripts/fetch-keycloak.sh`` downloads and builds Keycloak if the cache lacks it) with
the realm ``cloudsigma``, the impersonating client ``cloudsigma-ccm``, the audience client ``cloudsigma-api`` and
the users below (username == email), and stopped at the end of the session. Tests may ``stop()`` and ``start()``
it again (same port, same configuration) but must leave it running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.realenv.keycloak import Keycloak

__all__ = ["ALICE", "ALICE_PASSWORD", "BOB", "BOB_PASSWORD", "keycloak"]

ALICE = "alice@example.com"
ALICE_PASSWORD = "alice-password-1"
BOB = "bob@example.com"
BOB_PASSWORD = "bob-password-1"


@pytest.fixture(scope="session")
async def keycloak(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keycloak]:
    work_dir: Path = tmp_path_factory.mktemp("keycloak")
    server = Keycloak(work_dir)
    try:
        await server.start()
        await server.add_user(ALICE, ALICE_PASSWORD, first_name="Alice", last_name="Example")
        await server.add_user(BOB, BOB_PASSWORD, first_name="Bob", last_name="Example")
        yield server
    finally:
        await server.stop()
