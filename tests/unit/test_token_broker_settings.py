"""--token-broker: off unless chosen; on = kube-dc's target; a list of targets; needs impersonation; clear errors."""

from __future__ import annotations

import pytest

from ccm.cli import parse
from ccm.config import DEFAULT_TOKEN_BROKER_TARGET, ConfigError, load_settings

IMPERSONATING = {"region": "zrh", "impersonation_enabled": True, "oauth_url": "https://kc.example.com/realms/r",
                 "client_id": "ccm", "client_secret": "s3cret-value-1", "user_email": "alice@example.com"}


pytestmark = pytest.mark.usefixtures("clean_env")


def test_off_by_default_and_on_is_the_kube_dc_target(clean_env: pytest.MonkeyPatch) -> None:
    assert load_settings(IMPERSONATING).token_broker == []
    assert load_settings(IMPERSONATING).token_broker_create_namespace is False
    clean_env.setenv("CLOUDSIGMA_TOKEN_BROKER", "on")
    assert load_settings(IMPERSONATING).token_broker == [DEFAULT_TOKEN_BROKER_TARGET]
    clean_env.setenv("CLOUDSIGMA_TOKEN_BROKER", "off")
    assert load_settings(IMPERSONATING).token_broker == []
    _, overrides = parse(["run", "--token-broker=cloudsigma-csi/cloudsigma-token, other/driver-token"])
    assert load_settings(IMPERSONATING | overrides).token_broker == [DEFAULT_TOKEN_BROKER_TARGET,
                                                                     "other/driver-token"]


@pytest.mark.parametrize("value", ["yes", "cloudsigma-token", "Bad_NS/x", "a/b,a/b"])
def test_a_wrong_target_is_one_line(value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(IMPERSONATING | {"token_broker": value})
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("configuration error: CLOUDSIGMA_TOKEN_BROKER / --token-broker")


def test_without_impersonation_it_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"region": "zrh", "username": "a@example.com", "password": "pw-1", "token_broker": "on"})
    assert str(exc.value).startswith("configuration error: CLOUDSIGMA_TOKEN_BROKER / --token-broker needs "
                                     "impersonation")
