"""--csr-approval: off unless chosen; env and flag; a wrong value is one clear line."""

from __future__ import annotations

import pytest

from ccm.cli import parse
from ccm.config import ConfigError, load_settings

BASE = {"region": "zrh", "username": "ops@example.com", "password": "pw-123456"}


pytestmark = pytest.mark.usefixtures("clean_env")


def test_off_by_default() -> None:
    assert load_settings(BASE).csr_approval == "off"


@pytest.mark.parametrize("value", ["off", "approve", "approve-or-deny"])
def test_env_and_flag(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("CLOUDSIGMA_CSR_APPROVAL", value)
    assert load_settings(BASE).csr_approval == value
    clean_env.setenv("CLOUDSIGMA_CSR_APPROVAL", "off")
    _, overrides = parse(["run", f"--csr-approval={value}"])
    assert load_settings(BASE | overrides).csr_approval == value  # the flag wins


def test_wrong_value_is_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(BASE | {"csr_approval": "yes"})
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("configuration error: CLOUDSIGMA_CSR_APPROVAL / --csr-approval")
    assert "approve-or-deny" in message
