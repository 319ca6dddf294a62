"""Fixtures of the reliability suite, and the plugin that writes docs/reliability.md from its run.

* ``emulator`` (overrides the shared one): the same in-process emulator, with a tap that hands every credential
  a client presented (bearer tokens, basic-auth values and the passwords inside them) to the secrets check.
* ``world``: the emulator's users alice and bob and the OAuth client of the harness.

The plugin records each test's outcome. The report is written only on request (``make reliability-doc``, which sets
``CCM_WRITE_RELIABILITY_DOC=1``) at the end of a session that ran the whole suite (every
``tests/reliability/test_*.py`` and ``tests/unit/test_properties.py``, nothing deselected); in every other run
``tests/unit/test_reliability_page.py`` (moved to the end) checks that the committed page is still current.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

import tests.emulator.server as emulator_server
from tests.emulator import EmulatorServer, EmulatorState, create_app
from tests.integration.harness import ALICE_PW, BOB_PW, CLIENT_ID, CLIENT_SECRET, two_users
from tests.reliability import registry

HERE = Path(__file__).resolve().parent
PROPERTIES = HERE.parent / "unit" / "test_properties.py"


# ------------------------------------------------------------------------------------------- plugin


class ReliabilityReport:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.items: list[str] = []
        self.files: set[Path] = set()
        self.deselected = 0

    @staticmethod
    def _ours(path: Path) -> bool:
        return path == PROPERTIES or (path.parent == HERE and path.name.startswith("test_"))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += sum(1 for item in items if self._ours(item.path))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid in self.items:
            registry.set_outcome(report.nodeid, report.outcome, report.duration)

    def complete(self) -> bool:
        wanted = {PROPERTIES, *HERE.glob("test_*.py")}
        ran = set(registry.STORE.outcomes)
        return self.files == wanted and not self.deselected and all(i in ran for i in self.items)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if self._ours(item.path):
                self.items.append(item.nodeid)
                self.files.add(item.path)
        # The check of the committed page reads what every case recorded: it runs after all of them.
        checks = [item for item in items if item.nodeid.endswith(registry.PAGE_CHECK)]
        for item in checks:
            items.remove(item)
            items.append(item)

    def render(self) -> str:
        return registry.render_markdown(self.items, total_seconds=time.monotonic() - self.started,
                                        command=registry.REGENERATE)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Running the tests never writes a tracked file: the page is rewritten only on request
        # (`make reliability-doc`); otherwise tests/unit/test_reliability_page.py checks it is current.
        if not self.items or not os.environ.get(registry.WRITE_ENV):
            return
        if not self.complete():
            sys.stderr.write(f"\nreliability: partial run, {registry.DOC} not written\n")
            return
        registry.DOC.parent.mkdir(parents=True, exist_ok=True)
        registry.DOC.write_text(self.render() + "\n")
        sys.stderr.write(f"\nreliability: wrote {registry.DOC} ({len(self.items)} tests)\n")


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("reliability-report"):
        config.pluginmanager.register(ReliabilityReport(config), "reliability-report")


# ------------------------------------------------------------------------------------------- fixtures

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def credential_tap(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every credential presented to the emulator is a secret the CCM must never print."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if value:
        registry.add_secret(value, f"{scheme.lower()} credential presented to the API")
        if scheme.lower() == "basic":
            try:
                _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                password = ""
            registry.add_secret(password, "password presented to the API")
    return await handler(request)


@pytest.fixture
async def emulator(emulator_state: EmulatorState, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EmulatorServer]:
    original = create_app

    def tapped(state: EmulatorState, **kwargs: object) -> web.Application:
        app = original(state, **kwargs)  # type: ignore[arg-type]
        app.middlewares.insert(0, credential_tap)
        return app

    monkeypatch.setattr(emulator_server, "create_app", tapped)
    server = EmulatorServer(emulator_state)
    await server.start()
    monkeypatch.undo()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def world(emulator_state: EmulatorState) -> EmulatorState:
    two_users(emulator_state)
    emulator_state.add_client(CLIENT_ID, CLIENT_SECRET, may_exchange=True)
    for secret, kind in ((ALICE_PW, "alice's password"), (BOB_PW, "bob's password"),
                         (CLIENT_SECRET, "emulator OAuth client secret")):
        registry.add_secret(secret, kind)
    return emulator_state
