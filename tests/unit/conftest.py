"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``CLOUDSIGMA_*`` variable and no ``KUBECONFIG`` from the environment the tests run in: settings come only
    from what a test sets (through the returned monkeypatch) or passes."""
    for key in list(os.environ):
        if key.startswith("CLOUDSIGMA_") or key == "KUBECONFIG":
            monkeypatch.delenv(key)
    return monkeypatch
